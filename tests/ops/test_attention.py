"""attention against a float64 evaluation of its reference: reference, sdpa and triton (interpreter here)."""

import pytest
import torch

import cosmos_kernels as ck
from cosmos_kernels import _dispatch, picker
from cosmos_kernels.attention import ops, reference
from tests.numerics import assert_within_reference_error

CPU = torch.device("cpu")
BACKENDS = [b for b in ("reference", "sdpa", "triton") if ops._backend_usable(b, torch.empty(0))]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def packed_qkv(gen, B, Lq, Lk, H, D, dtype):
    """q, k, v as strided views of packed projections ((B, L, 3*H*D) for self-, q + (B, Lk, 2*H*D) for cross-)."""
    if Lq == Lk:
        qkv = (torch.randn(B, Lq, 3 * H * D, generator=gen) * 1.5).to(dtype).view(B, Lq, 3, H, D)
        return qkv.unbind(2)
    q = (torch.randn(B, Lq, H * D, generator=gen) * 1.5).to(dtype).view(B, Lq, H, D)
    kv = (torch.randn(B, Lk, 2 * H * D, generator=gen) * 1.5).to(dtype).view(B, Lk, 2, H, D)
    return (q, *kv.unbind(2))


def _extras(gen, Lq, D, norm, rope, table="random"):
    extra = {}
    if norm:
        extra["q_norm_weight"] = torch.rand(D, generator=gen) + 0.5
        extra["k_norm_weight"] = torch.rand(D, generator=gen) + 0.5
    if rope:
        if table == "random":
            extra["rope_cos"], extra["rope_sin"] = torch.randn(2, Lq, D, generator=gen)
        else:
            extra["rope_cos"], extra["rope_sin"] = ck.rope_3d_tables(1, 1, Lq, D)
    return extra


def _as64(extra):
    return {k: v.double() for k, v in extra.items()}


def _check(backend, dtype, q, k, v, extra, scale=None):
    got = ck.attention(q, k, v, scale=scale, backend=backend, **extra)
    assert got.shape == q.shape and got.dtype == dtype
    want = reference.attention(q.double(), k.double(), v.double(), scale=scale, **_as64(extra))
    ref = reference.attention(q, k, v, scale=scale, **extra)
    assert_within_reference_error(got, ref, want, dtype)


CASES = [
    # B, Lq, Lk, H, D, norm, rope
    (1, 1, 1, 1, 16, False, False),
    (1, 37, 37, 2, 64, True, True),  # L not a multiple of the block
    (2, 45, 45, 1, 128, True, True),
    (1, 40, 40, 1, 96, False, True),  # RoPE without norm, head_dim 96
    (1, 33, 20, 2, 64, True, False),  # cross-attention, Lk < Lq
    (1, 17, 70, 1, 128, False, False),  # cross-attention, Lk > Lq, several K blocks
    (1, 64, 64, 1, 128, True, False),  # exact multiples of the block
    (1, 9, 9, 1, 256, True, True),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_attention(backend, dtype, case, gen):
    if backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter computes bf16 dots wrongly; bf16 runs on GPUs")
    B, Lq, Lk, H, D, norm, rope = case
    q, k, v = packed_qkv(gen, B, Lq, Lk, H, D, dtype)
    _check(backend, dtype, q, k, v, _extras(gen, Lq, D, norm, rope))


@pytest.mark.parametrize("backend", BACKENDS)
def test_model_tables_and_custom_scale(backend, gen):
    q, k, v = packed_qkv(gen, 1, 2 * 3 * 4, 2 * 3 * 4, 2, 64, torch.float16)
    extra = _extras(gen, 24, 64, True, False)
    extra["rope_cos"], extra["rope_sin"] = ck.rope_3d_tables(2, 3, 4, 64, h_extrapolation_ratio=3.0,
                                                              w_extrapolation_ratio=3.0)
    _check(backend, torch.float16, q, k, v, extra, scale=0.3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_transposed_inputs(backend, gen):
    """Heads-major memory for q, a non-contiguous last dim for v (copied)."""
    q = torch.randn(1, 2, 19, 64, generator=gen).transpose(1, 2)
    k = torch.randn(1, 19, 2, 64, generator=gen)
    v = torch.randn(1, 19, 2, 64, 2, generator=gen)[..., 1]
    _check(backend, torch.float32, q, k, v, _extras(gen, 19, 64, True, True))


def test_sdpa_large_libero_shapes(gen):
    """The model's shapes on the CPU: self-attention at L=1764 with norm + RoPE, cross-attention to 512."""
    H, D = 2, 128  # two of the sixteen heads keep the float64 reference affordable
    cos, sin = ck.rope_3d_tables(9, 14, 14, D, h_extrapolation_ratio=3.0, w_extrapolation_ratio=3.0)
    q, k, v = packed_qkv(gen, 1, 1764, 1764, H, D, torch.float32)
    extra = dict(_extras(gen, 1764, D, True, False), rope_cos=cos, rope_sin=sin)
    _check("sdpa", torch.float32, q, k, v, extra)
    q, k, v = packed_qkv(gen, 1, 1764, 512, H, D, torch.bfloat16)
    _check("sdpa", torch.bfloat16, q, k, v, _extras(gen, 1764, D, True, False))


@pytest.mark.parametrize("backend", BACKENDS)
def test_output_is_a_new_tensor(backend, gen):
    q, k, v = packed_qkv(gen, 1, 5, 5, 1, 16, torch.float32)
    out = ck.attention(q, k, v, backend=backend)
    assert out.data_ptr() not in (q.data_ptr(), k.data_ptr(), v.data_ptr())


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    q = torch.empty(0, 4, 2, 32)
    assert ck.attention(q, q, q, backend=backend).shape == (0, 4, 2, 32)


def test_float64(gen):
    q, k, v = (torch.randn(1, 5, 2, 16, generator=gen, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(ck.attention(q, k, v), reference.attention(q, k, v))
    torch.testing.assert_close(ck.attention(q, k, v, backend="sdpa"), reference.attention(q, k, v))
    if "triton" in BACKENDS:
        with pytest.raises(TypeError, match="use backend='reference' for float64"):
            ck.attention(q, k, v, backend="triton")


def test_requires_grad_runs_differentiable_reference(gen):
    q = torch.randn(1, 5, 2, 16, generator=gen, requires_grad=True)
    k, v = torch.randn(2, 1, 5, 2, 16, generator=gen)
    _dispatch._warned.discard("grad:attention")
    with pytest.warns(RuntimeWarning, match="inference-only"):
        out = ck.attention(q, k, v)
    out.sum().backward()
    assert q.grad is not None


# -- backend choice ------------------------------------------------------------------------------------------------

def test_auto_is_sdpa_on_cpu(gen, monkeypatch):
    q, k, v = packed_qkv(gen, 1, 6, 6, 1, 16, torch.float32)
    calls = []
    original = ops.run_backend
    monkeypatch.setattr(ops, "run_backend", lambda name, *a: calls.append(name) or original(name, *a))
    monkeypatch.delenv(ops.ATTENTION_ENV, raising=False)
    ck.attention(q, k, v)
    assert calls[0] == "sdpa"


def test_environment_pin_and_explicit_override(gen, monkeypatch):
    q, k, v = packed_qkv(gen, 1, 6, 6, 1, 16, torch.float32)
    calls = []
    original = ops.run_backend
    monkeypatch.setattr(ops, "run_backend", lambda name, *a: calls.append(name) or original(name, *a))
    monkeypatch.setenv(ops.ATTENTION_ENV, "reference")
    ck.attention(q, k, v)
    ck.attention(q, k, v, backend="sdpa")  # explicit wins over the environment
    monkeypatch.setenv(ops.ATTENTION_ENV, "flash_attn")  # not usable on the CPU: warn, then auto
    _dispatch._warned.clear()
    with pytest.warns(RuntimeWarning, match="not usable"):
        ck.attention(q, k, v)
    monkeypatch.delenv(ops.ATTENTION_ENV)
    monkeypatch.setenv(_dispatch.BACKEND_ENV, "reference")  # the package-wide pin, where it names one
    ck.attention(q, k, v)
    monkeypatch.setenv(_dispatch.BACKEND_ENV, "cpu")  # not an attention backend: ignored
    ck.attention(q, k, v)
    assert calls == ["reference", "sdpa", "sdpa", "reference", "sdpa"]


def test_flash_attn_only_when_usable(gen):
    q, k, v = packed_qkv(gen, 1, 6, 6, 1, 16, torch.float32)
    with pytest.raises(ValueError, match="'flash_attn' is not available"):
        ck.attention(q, k, v, backend="flash_attn")
    assert "flash_attn" not in ops.auto_candidates(q)


# -- torch.library registration: opcheck and torch.compile ----------------------------------------------------

@pytest.mark.parametrize("norm_rope", [True, False])
def test_opcheck_triton(norm_rope, gen):
    if "triton" not in BACKENDS:
        pytest.skip("Triton is not available")
    q, k, v = packed_qkv(gen, 1, 9, 9, 2, 16, torch.float32)
    w = torch.rand(16, generator=gen) if norm_rope else None
    cos, sin = torch.randn(2, 9, 16, generator=gen) if norm_rope else (None, None)
    torch.library.opcheck(torch.ops.cosmos_kernels.attention_triton.default,
                          (q, k, v, w, w, cos, sin, 0.25, 1e-6, 1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend, gen):
    """No graph break; "sdpa" runs the C++ qk_norm_rope op and SDPA inside the graph, "triton" its custom op."""
    torch._dynamo.reset()
    q, k, v = packed_qkv(gen, 1, 11, 11, 2, 32, torch.float32)
    extra = _extras(gen, 11, 32, True, True)

    def fn(q, k, v):
        return ck.attention(q * 0.5, k, v, backend=backend, **extra)

    got = torch.compile(fn, fullgraph=True, dynamic=False)(q, k, v)
    torch.testing.assert_close(got, fn(q, k, v), rtol=1e-5, atol=1e-5)


def test_torch_compile_fullgraph_auto(gen, monkeypatch):
    monkeypatch.delenv(ops.ATTENTION_ENV, raising=False)
    torch._dynamo.reset()
    q, k, v = packed_qkv(gen, 1, 7, 4, 2, 32, torch.float32)
    extra = _extras(gen, 7, 32, True, False)
    got = torch.compile(lambda q, k, v: ck.attention(q, k, v, **extra), fullgraph=True)(q, k, v)
    torch.testing.assert_close(got, reference.attention(q, k, v, **extra), rtol=1e-5, atol=1e-5)


# -- bad input --------------------------------------------------------------------------------------------------------

def _good(gen, Lq=6, Lk=6):
    q = torch.randn(1, Lq, 2, 64, generator=gen)
    k, v = torch.randn(2, 1, Lk, 2, 64, generator=gen)
    return q, k, v


def test_bad_head_dim_mismatch(gen):
    q, k, v = _good(gen)
    with pytest.raises(ValueError, match="k has head_dim 32"):
        ck.attention(q, k[..., :32], v)
    with pytest.raises(ValueError, match="v has head_dim 32"):
        ck.attention(q, k, v[..., :32])


def test_bad_heads_mismatch(gen):
    q, k, v = _good(gen)
    with pytest.raises(ValueError, match="k has heads 1"):
        ck.attention(q, k[:, :, :1], v)
    with pytest.raises(ValueError, match="v has heads 1"):
        ck.attention(q, k, v[:, :, :1])


@pytest.mark.parametrize("head_dim", [8, 72, 100, 320])
def test_bad_unsupported_head_dim(head_dim):
    q = torch.randn(1, 4, 1, head_dim)
    with pytest.raises(ValueError, match=f"unsupported head_dim {head_dim}"):
        ck.attention(q, q, q)


def test_bad_rope_table_length(gen):
    q, k, v = _good(gen)
    cos, sin = torch.randn(2, 7, 64)
    with pytest.raises(ValueError, match=r"cos must have shape \(L, head_dim\) = \(6, 64\) to match q, got \(7, 64\)"):
        ck.attention(q, k, v, rope_cos=cos, rope_sin=sin)


def test_bad_rope_table_width(gen):
    q, k, v = _good(gen)
    cos, sin = torch.randn(2, 6, 128)
    with pytest.raises(ValueError, match=r"cos must have shape \(L, head_dim\) = \(6, 64\) to match q, got \(6, 128\)"):
        ck.attention(q, k, v, rope_cos=cos, rope_sin=sin)


def test_bad_rope_with_cross_attention(gen):
    q, k, v = _good(gen, Lq=6, Lk=9)
    cos, sin = torch.randn(2, 6, 64)
    with pytest.raises(ValueError, match="self-attention only: q has length 6 but k has 9"):
        ck.attention(q, k, v, rope_cos=cos, rope_sin=sin)


def test_bad_norm_weight_size(gen):
    q, k, v = _good(gen)
    with pytest.raises(ValueError, match=r"q_norm_weight must have shape \(64,\)"):
        ck.attention(q, k, v, q_norm_weight=torch.ones(128), k_norm_weight=torch.ones(64))
    with pytest.raises(ValueError, match=r"k_norm_weight must have shape \(64,\)"):
        ck.attention(q, k, v, k_norm_weight=torch.ones(32))  # one side alone is allowed, and checked


def test_bad_kv_length_mismatch(gen):
    q, k, v = _good(gen)
    with pytest.raises(ValueError, match="v has length 5 but k has 6"):
        ck.attention(q, k, v[:, :5])


def test_bad_dtype_mismatch(gen):
    q, k, v = _good(gen)
    with pytest.raises(TypeError, match="v has dtype torch.float16 but q has torch.float32"):
        ck.attention(q, k, v.half())


def test_bad_backend_name(gen):
    q, k, v = _good(gen)
    with pytest.raises(ValueError, match="backend must be one of"):
        ck.attention(q, k, v, backend="cuda")


# -- GPU ---------------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("Lq,Lk,rope", [(1764, 1764, True), (2156, 2156, True), (1764, 512, False)])
def test_gpu_backends_at_model_shapes(dtype, Lq, Lk, rope, gen):
    dev = torch.device("cuda")
    q, k, v = (t.to(dev) for t in packed_qkv(gen, 1, Lq, Lk, 4, 128, dtype))
    extra = {k_: t.to(dev) for k_, t in _extras(gen, Lq, 128, True, False).items()}
    if rope:
        extra["rope_cos"], extra["rope_sin"] = ck.rope_3d_tables(Lq // 196, 14, 14, 128, device=dev)
    want = reference.attention(q.double(), k.double(), v.double(), **_as64(extra))
    ref = reference.attention(q, k, v, **extra)
    for backend in ["triton", "sdpa", None] + (["flash_attn"] if ops._flash_attn_func() else []):
        got = ck.attention(q, k, v, backend=backend, **extra)
        assert_within_reference_error(got, ref, want, dtype)
    assert ops.chosen_backends()


@pytest.mark.gpu
def test_gpu_deterministic_choice_does_not_time(gen, monkeypatch):
    q, k, v = (t.cuda() for t in packed_qkv(gen, 1, 100, 100, 2, 64, torch.float16))
    monkeypatch.setenv(_dispatch.DETERMINISTIC_ENV, "1")
    monkeypatch.delenv(ops.ATTENTION_ENV, raising=False)
    monkeypatch.setattr(picker, "time_backend", lambda *a, **kw: pytest.fail("timed under DETERMINISTIC=1"))
    assert picker.auto_backend(ops.run_backend, ops.auto_candidates, q, k, v, None, None, None, None, 0.125, 1e-6,
                               1) == ops.DETERMINISTIC_CHOICE
