"""qk_norm_rope against a float64 evaluation of its reference, on every backend here."""

import pytest
import torch

import cosmos_kernels as ck
from cosmos_kernels import _dispatch
from cosmos_kernels.attention import reference
from tests.numerics import assert_within_reference_error, cpu_backends

BACKENDS = cpu_backends()
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def packed_qk(gen, B, Lq, Lk, H, D, dtype):
    """q and k as strided views of packed projections: (B, L, 3*H*D) for self-, (B, L, 2*H*D) for cross-."""
    if Lq == Lk:
        qkv = (torch.randn(B, Lq, 3 * H * D, generator=gen) * 2 + 0.5).to(dtype).view(B, Lq, 3, H, D)
        return qkv[:, :, 0], qkv[:, :, 1]
    q = (torch.randn(B, Lq, H * D, generator=gen) * 2).to(dtype).view(B, Lq, H, D)
    kv = (torch.randn(B, Lk, 2 * H * D, generator=gen) * 2).to(dtype).view(B, Lk, 2, H, D)
    return q, kv[:, :, 0]


def random_tables(gen, L, D):
    """Arbitrary cos / sin values (halves differ), so every table element is exercised."""
    return torch.randn(L, D, generator=gen), torch.randn(L, D, generator=gen)


def _as64(*ts):
    return [None if t is None else t.double() for t in ts]


CASES = [
    # B, Lq, Lk, H, D, norm, rope
    (1, 1, 1, 1, 16, True, True),
    (1, 7, 7, 3, 64, True, True),
    (2, 13, 13, 2, 128, True, True),
    (2, 9, 9, 3, 96, False, True),
    (1, 5, 11, 2, 128, True, False),  # cross-attention: k longer than q, no RoPE
    (2, 8, 3, 2, 64, True, False),
    (1, 4, 4, 2, 256, True, True),
    (1, 3, 2, 9, 256, True, False),  # more heads than one Triton program takes (8 at head_dim 256)
    (1, 1764, 1764, 16, 128, True, True),  # LIBERO self-attention
    (1, 1764, 512, 16, 128, True, False),  # LIBERO cross-attention
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_qk_norm_rope(backend, dtype, case, gen):
    B, Lq, Lk, H, D, norm, rope = case
    if backend == "triton" and B * (Lq + Lk) > 64:
        pytest.skip("large shape: covered by the cpu backend (the interpreter is slow)")
    q, k = packed_qk(gen, B, Lq, Lk, H, D, dtype)
    qw = torch.randn(D, generator=gen) if norm else None
    kw = torch.randn(D, generator=gen) if norm else None
    cos, sin = random_tables(gen, Lq, D) if rope else (None, None)
    got = ck.qk_norm_rope(q, k, qw, kw, cos, sin, 1e-6, backend=backend)
    assert got[0].shape == q.shape and got[1].shape == k.shape
    assert got[0].dtype == got[1].dtype == dtype
    want = reference.qk_norm_rope(*_as64(q, k, qw, kw, cos, sin), 1e-6)
    assert_within_reference_error(got, reference.qk_norm_rope(q, k, qw, kw, cos, sin, 1e-6), want, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_model_tables_and_weight_dtypes(backend, gen):
    """The official 3D tables, bf16 tensors with bf16 weights (the checkpoint's dtype)."""
    q, k = packed_qk(gen, 1, 2 * 3 * 4, 2 * 3 * 4, 2, 128, torch.bfloat16)
    cos, sin = ck.rope_3d_tables(2, 3, 4, 128, h_extrapolation_ratio=3.0, w_extrapolation_ratio=3.0)
    qw, kw = (torch.randn(128, generator=gen).to(torch.bfloat16) for _ in range(2))
    got = ck.qk_norm_rope(q, k, qw, kw, cos, sin, backend=backend)
    want = reference.qk_norm_rope(*_as64(q, k, qw, kw, cos, sin))
    assert_within_reference_error(got, reference.qk_norm_rope(q, k, qw, kw, cos, sin), want, torch.bfloat16)


@pytest.mark.parametrize("backend", BACKENDS)
def test_transposed_and_sliced_inputs(backend, gen):
    """Heads-major memory (a transpose), a non-contiguous last dim (copied) and strided tables."""
    q = torch.randn(2, 3, 5, 64, generator=gen).transpose(1, 2)  # (2, 5, 3, 64), L and H swapped in memory
    k = torch.randn(2, 5, 3, 64, 2, generator=gen)[..., 0]  # last dim stride 2
    w = torch.randn(64, generator=gen)
    tables = torch.randn(5, 2, 64, generator=gen)
    cos, sin = tables[:, 0], tables[:, 1]  # row stride 128
    got = ck.qk_norm_rope(q, k, w, w, cos, sin, backend=backend)
    want = reference.qk_norm_rope(*_as64(q, k, w, w, cos, sin))
    assert_within_reference_error(got, reference.qk_norm_rope(q, k, w, w, cos, sin), want, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_outputs_are_new_contiguous_tensors(backend, gen):
    q, k = packed_qk(gen, 1, 4, 4, 2, 64, torch.float32)
    q_out, k_out = ck.qk_norm_rope(q, k, None, None, backend=backend)
    assert q_out.data_ptr() != q.data_ptr() and k_out.data_ptr() != k.data_ptr()
    assert q_out.is_contiguous() and k_out.is_contiguous()
    assert torch.equal(q_out, q) and torch.equal(k_out, k)  # no norm, no RoPE: a copy


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_tensors(backend):
    q = torch.empty(0, 3, 2, 64)
    w = torch.ones(64)
    q_out, k_out = ck.qk_norm_rope(q, q, w, w, backend=backend)
    assert q_out.shape == k_out.shape == (0, 3, 2, 64)


def test_float64_runs_the_reference(gen):
    q, k = (torch.randn(1, 3, 2, 16, generator=gen, dtype=torch.float64) for _ in range(2))
    w = torch.randn(16, generator=gen, dtype=torch.float64)
    got = ck.qk_norm_rope(q, k, w, w)
    want = reference.qk_norm_rope(q, k, w, w)
    assert all(torch.equal(g, x) for g, x in zip(got, want))


def test_requires_grad_runs_differentiable_reference(gen):
    q = torch.randn(1, 3, 2, 16, generator=gen, requires_grad=True)
    w = torch.randn(16, generator=gen)
    _dispatch._warned.discard("grad:qk_norm_rope")
    with pytest.warns(RuntimeWarning, match="inference-only"):
        q_out, k_out = ck.qk_norm_rope(q, q.detach(), w, w)
    q_out.sum().backward()
    assert q.grad is not None


# -- torch.library registration: opcheck and torch.compile ------------------------------------------------

def _op_args(gen, rope=True, norm=True):
    q, k = packed_qk(gen, 2, 5, 5, 2, 32, torch.float32)
    w = torch.randn(32, generator=gen) if norm else None
    cos, sin = random_tables(gen, 5, 32) if rope else (None, None)
    return q, k, w, w, cos, sin, 1e-6


@pytest.mark.parametrize("op_name", ["qk_norm_rope", "qk_norm_rope_triton"])
@pytest.mark.parametrize("rope", [True, False])
def test_opcheck(op_name, rope, gen):
    if op_name.endswith("triton") and "triton" not in BACKENDS:
        pytest.skip("Triton is not available")
    op = getattr(torch.ops.cosmos_kernels, op_name).default
    torch.library.opcheck(op, _op_args(gen, rope=rope, norm=rope))


@pytest.mark.parametrize("backend", [b for b in BACKENDS])
def test_torch_compile_fullgraph(backend, gen):
    """No graph break through the public function (the Triton op runs its interpreter inside the graph)."""
    torch._dynamo.reset()
    q, k, w, _, cos, sin, eps = _op_args(gen)

    def fn(q, k, w, cos, sin):
        return ck.qk_norm_rope(q * 1.5, k, w, w, cos, sin, eps, backend=backend)

    compiled = torch.compile(fn, fullgraph=True, dynamic=False)
    got = compiled(q, k, w, cos, sin)
    want = fn(q, k, w, cos, sin)
    for g, x in zip(got, want):
        torch.testing.assert_close(g, x, rtol=1e-5, atol=1e-5)


# -- bad input: clear errors naming the argument ---------------------------------------------------------------

def _good(gen):
    q = torch.randn(1, 6, 2, 64, generator=gen)
    k = torch.randn(1, 6, 2, 64, generator=gen)
    w = torch.randn(64, generator=gen)
    cos, sin = random_tables(gen, 6, 64)
    return dict(q=q, k=k, q_weight=w, k_weight=w, cos=cos, sin=sin)


def _call(**kw):
    return ck.qk_norm_rope(kw.pop("q"), kw.pop("k"), kw.pop("q_weight"), kw.pop("k_weight"), **kw)


def test_bad_head_dim_mismatch(gen):
    args = _good(gen)
    args["k"] = torch.randn(1, 6, 2, 32)
    with pytest.raises(ValueError, match="k has head_dim 32"):
        _call(**args)


def test_bad_heads_mismatch(gen):
    args = _good(gen)
    args["k"] = torch.randn(1, 6, 4, 64)
    with pytest.raises(ValueError, match="k has heads 4"):
        _call(**args)


def test_bad_weight_size(gen):
    args = _good(gen)
    args["k_weight"] = torch.randn(128)
    with pytest.raises(ValueError, match=r"k_weight must have shape \(64,\)"):
        _call(**args)


def test_bad_one_sided_weight_is_still_checked(gen):
    args = _good(gen)
    args["k_weight"], args["q_weight"] = None, torch.ones(3)
    with pytest.raises(ValueError, match="q_weight must have shape"):
        _call(**args)


def test_bad_table_length(gen):
    args = _good(gen)
    args["cos"] = torch.randn(7, 64)
    with pytest.raises(ValueError, match=r"cos must have shape \(L, head_dim\) = \(6, 64\)"):
        _call(**args)


def test_bad_table_width(gen):
    args = _good(gen)
    args["sin"] = torch.randn(6, 32)
    with pytest.raises(ValueError, match=r"sin must have shape \(L, head_dim\) = \(6, 64\)"):
        _call(**args)


def test_bad_tables_with_different_lengths(gen):
    args = _good(gen)
    args["k"] = torch.randn(1, 9, 2, 64)
    with pytest.raises(ValueError, match="self-attention only: q has length 6 but k has 9"):
        _call(**args)


def test_bad_only_one_table(gen):
    args = _good(gen)
    args["sin"] = None
    with pytest.raises(ValueError, match="cos and sin must both be given"):
        _call(**args)


def test_bad_odd_head_dim(gen):
    q = torch.randn(1, 3, 2, 63)
    with pytest.raises(ValueError, match="head_dim must be even"):
        ck.qk_norm_rope(q, q, None, None)


def test_bad_rank(gen):
    q = torch.randn(6, 2, 64)
    with pytest.raises(ValueError, match=r"q must be \(B, L, heads, head_dim\)"):
        ck.qk_norm_rope(q, q, None, None)


def test_bad_dtype_mismatch(gen):
    args = _good(gen)
    args["k"] = args["k"].half()
    with pytest.raises(TypeError, match="k has dtype torch.float16 but q has torch.float32"):
        _call(**args)


def test_bad_not_a_tensor(gen):
    args = _good(gen)
    args["q"] = [1.0]
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        _call(**args)


def test_bad_device_mismatch(gen):
    args = _good(gen)
    args["k"] = args["k"].to("meta")
    with pytest.raises(ValueError, match="k is on meta but q is on cpu"):
        _call(**args)


def test_bad_backend_name(gen):
    with pytest.raises(ValueError, match="backend must be one of"):
        _call(**_good(gen), backend="sdpa")


# -- GPU -------------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [(1, 1764, 1764, 16, 128, True, True), (1, 1764, 512, 16, 128, True, False),
                                  (2, 37, 37, 3, 96, True, True), (1, 5, 9, 2, 16, False, False)],
                         ids=lambda c: "x".join(map(str, c)))
def test_gpu_backends(backend, dtype, case, gen):
    B, Lq, Lk, H, D, norm, rope = case
    dev = torch.device("cuda")
    q, k = (t.to(dev) for t in packed_qk(gen, B, Lq, Lk, H, D, dtype))
    qw = torch.randn(D, generator=gen).to(dev) if norm else None
    cos, sin = (t.to(dev) for t in random_tables(gen, Lq, D)) if rope else (None, None)
    want = reference.qk_norm_rope(*_as64(q, k, qw, qw, cos, sin))
    ref = reference.qk_norm_rope(q, k, qw, qw, cos, sin)
    assert_within_reference_error(ck.qk_norm_rope(q, k, qw, qw, cos, sin, backend=backend), ref, want, dtype)
    # misaligned views (offset by one element) take the scalar path of the CUDA kernel
    flat = torch.randn(B * Lq * H * D + 1, generator=gen).to(dtype).to(dev)
    q1 = flat[1:].view(B, Lq, H, D)
    got = ck.qk_norm_rope(q1, q1, qw, qw, cos, sin, backend=backend)
    want = reference.qk_norm_rope(*_as64(q1, q1, qw, qw, cos, sin))
    assert_within_reference_error(got, reference.qk_norm_rope(q1, q1, qw, qw, cos, sin), want, dtype)
