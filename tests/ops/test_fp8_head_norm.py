"""`fp8_linear_head_norm` (an FP8 GEMM whose every output head is RMS-normed in its epilogue, on the kernel of
`fp8_linear_qk_norm_rope`) against a float64 evaluation of its reference, on every backend here (Triton through its
interpreter): odd shapes, strided rows, the GPU tiles; registration, fake, cost, fallbacks and errors."""

import pytest
import torch

from cosmos_kernels import fp8, qk_norm_rope
from cosmos_kernels.attention import fp8_linear_head_norm, fp8_linear_qk_norm_rope, fp8_reference
from cosmos_kernels.fp8 import reference
from cosmos_kernels.tools.dispatch_counter import DispatchCounter
from tests.ops._fp8_heads_helpers import (
    BACKENDS,
    assert_close,
    needs_triton,
    opcheck_e4m3,
    reported_tiles,
    scaled_mm_calls,
    strided_rows,
)

OP = torch.ops.cosmos_kernels.fp8_linear_head_norm_triton.default


def _inputs(gen, b, seq, k, heads, d):
    """Quantized rows of very different magnitudes, a quantized weight of `heads * d` rows, a norm weight."""
    x = torch.randn(b, seq, k, generator=gen) * torch.exp(2 * torch.randn(b, seq, 1, generator=gen))
    xq, xs = reference.quantize_rowwise(x)
    wq, ws = reference.quantize_weight(torch.randn(heads * d, k, generator=gen) / k ** 0.5)
    return xq, xs, wq, ws, 1 + 0.2 * torch.randn(d, generator=gen)


def _want64(args, heads):
    """The reference in float64, and a bound on an fp32 evaluation's error per element: the fp32 GEMM errs by at
    most (K + 4) * 2^-24 * (|a| @ |b|) in each element; the normed head by that error times the head's 1 / rms and
    largest norm weight, four times over (the norm's own sum of squares included), plus 2^-19 of the head's largest
    value (rsqrt and the epilogue's few fp32 operations)."""
    x, xs, w, ws, nw = args
    a = reference.dequantize(x, xs, torch.float64)
    bw = reference.dequantize(w, ws, torch.float64)
    pre = (a @ bw.T).unflatten(-1, (heads, -1))
    err = ((x.shape[-1] + 4) * 2.0 ** -24 * (a.abs() @ bw.abs().T)).unflatten(-1, (heads, -1))
    want = fp8_reference.fp8_linear_head_norm(*args, heads, out_dtype=torch.float64)
    scale = torch.rsqrt(pre.pow(2).mean(-1, keepdim=True)) * nw.abs().max()
    bound = 4 * scale * err.amax(-1, keepdim=True) + 2.0 ** -19 * want.abs().amax(-1, keepdim=True)
    return (want,), (bound.expand_as(want),)


CASES = [  # (B, L, K, H, D): L not a multiple of any row tile, K not of any K tile
    (2, 37, 80, 1, 64),
    (1, 45, 200, 3, 128),
    (3, 11, 200, 2, 64),
    (2, 9, 80, 2, 96),  # a half of 48 columns: not a power of two
    (1, 33, 96, 3, 96),
    (2, 19, 48, 1, 128),
    (1, 7, 48, 2, 64),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_against_float64(backend, out_dtype, case, gen):
    heads = case[3]
    args = _inputs(gen, *case)
    got = fp8_linear_head_norm(*args, num_heads=heads, out_dtype=out_dtype, backend=backend)
    assert got.is_contiguous()
    assert_close((got,), *_want64(args, heads), out_dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float16_output_and_eps(backend, gen):
    """float16 out; an eps that matters (rows scaled down so that mean(y^2) is of eps's order)."""
    x, xs, w, ws, nw = _inputs(gen, 2, 13, 80, 2, 64)
    args = (x, xs * 1e-3, w, ws, nw)
    got = fp8_linear_head_norm(*args, num_heads=2, eps=1e-6, out_dtype=torch.float16, backend=backend)
    want = fp8_reference.fp8_linear_head_norm(*args, 2, eps=1e-6, out_dtype=torch.float64)
    assert not torch.allclose(want, fp8_reference.fp8_linear_head_norm(*args, 2, eps=0.0, out_dtype=torch.float64))
    assert_close((got,), (want,), _want64(args, 2)[1], torch.float16)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_rows_are_read_in_place(backend, gen):
    """x a slice of wider rows, and a batch-transposed view; x_scale a slice of wider rows too."""
    xq, xs, wq, ws, nw = _inputs(gen, 2, 21, 80, 3, 64)
    for x, s in strided_rows(xq, xs):
        got = fp8_linear_head_norm(x, s, wq, ws.reshape(-1), nw.double(), num_heads=3, backend=backend)
        assert_close((got,), *_want64((xq, xs, wq, ws, nw), 3), torch.bfloat16)


@needs_triton
def test_is_the_q_section_of_the_qkv_kernel(gen):
    """One kernel: the heads equal, bit for bit, the q heads of `fp8_linear_qk_norm_rope` on `[weight; k; v]` with
    the same q norm, no k norm and no RoPE."""
    from cosmos_kernels._registry import TRITON_KERNELS

    kernels = (TRITON_KERNELS[f"attention.{op}"].kernel for op in ("fp8_linear_head_norm", "fp8_linear_qk_norm_rope"))
    assert len(set(kernels)) == 1
    x, xs, w, ws, nw = _inputs(gen, 2, 37, 80, 2, 64)
    _, _, wkv, wskv, _ = _inputs(gen, 1, 1, 80, 4, 64)
    q, _, _ = fp8_linear_qk_norm_rope(x, xs, torch.cat([w, wkv]), torch.cat([ws, wskv]), nw, None, None, None,
                                      num_heads=2, backend="triton")
    assert torch.equal(fp8_linear_head_norm(x, xs, w, ws, nw, num_heads=2, backend="triton"), q)


@needs_triton
def test_gpu_tiles_compute_across_edges(gen):
    """Each GPU tile configuration, run by the interpreter one row past its row tile, with and without a K tail."""
    from cosmos_kernels.attention import fp8_qkv_triton as tk

    for cfg in tk.CONFIGS.values():
        for k in (cfg.block_k, cfg.block_k + 48):
            args = _inputs(gen, 1, cfg.block_m + 1, k, 2, 64)
            out = tk.fp8_linear_head_norm(*args[:4], args[4], 2, 1e-6, torch.bfloat16, config=cfg)
            assert_close((out,), *_want64(args, 2), torch.bfloat16)


@pytest.mark.parametrize("capability", [(8, 9), (9, 0), (10, 0), (11, 0), (12, 0)])
def test_gpu_tiles_are_in_the_compile_report(capability, monkeypatch):
    """Every tile a launch can pick, at the 2B's shapes and at a few rows, is registered for the compile report."""
    tk = pytest.importorskip("cosmos_kernels.attention.fp8_qkv_triton")
    from cosmos_kernels._registry import TRITON_KERNELS

    reported = reported_tiles("attention.fp8_linear_head_norm", capability, monkeypatch)
    entry = TRITON_KERNELS["attention.fp8_linear_head_norm"]
    assert all(c.constexprs["SECTIONS"] == 1 and not c.constexprs["ROPE"] for c in entry.configs)
    for m in (1764, 4 * 1764, 40):
        cfg = tk.qkv_config(torch.device("cuda"), m, 16, sections=1)
        assert (cfg.block_m, tk.block_k_for(2048, cfg), cfg.num_warps, cfg.num_stages) in reported


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_rows(backend, gen):
    xq, xs, wq, ws, nw = _inputs(gen, 2, 3, 80, 2, 64)
    assert fp8_linear_head_norm(xq[:, :0], xs[:, :0], wq, ws, nw, num_heads=2, backend=backend).shape == (
        2, 0, 2, 64)


def test_agrees_with_the_unfused_pair_to_bf16_rounding(gen):
    """Against the composition it replaces (`fp8_linear` rounded to bf16, then the attention's q norm in bf16):
    apart by the unfused pair's extra rounding, a couple of bf16 ulps of each head's largest value."""
    args = _inputs(gen, 2, 37, 200, 3, 64)
    x, xs, w, ws, nw = args
    y = fp8.fp8_linear(x, xs, w, ws).unflatten(-1, (3, 64))
    pair, _ = qk_norm_rope(y, y, nw, None)
    for backend in BACKENDS:
        got = fp8_linear_head_norm(*args, num_heads=3, backend=backend)
        head = pair.float().abs().amax(-1, keepdim=True)
        assert ((got.float() - pair.float()).abs() <= 3 * 2.0 ** -8 * head).all()


def test_cpu_reference_backend_is_one_scaled_mm(gen):
    args = _inputs(gen, 1, 5, 80, 2, 64)
    assert scaled_mm_calls(lambda: fp8_linear_head_norm(*args, num_heads=2)) == 1


@needs_triton
def test_opcheck(gen):
    cases = ((_inputs(gen, 2, 9, 80, 2, 64), 2, torch.bfloat16), (_inputs(gen, 1, 5, 48, 3, 32), 3, torch.float32))
    for (x, xs, w, ws, nw), heads, dtype in cases:
        opcheck_e4m3(OP, (x, xs, w, ws.reshape(-1), nw, heads, 1e-6, dtype))


def test_one_launch_in_the_dispatch_counter():
    """On the meta device (as on CUDA), at the 2B's cross-attention query: one FP8 GEMM launch, 2*M*N*K FLOPs,
    reading x, the scales, the weight and the norm weight once and writing the heads once."""
    from cosmos_kernels.backends import meta_as_cuda

    b, seq, k, heads, d = 1, 1764, 2048, 16, 128
    n = heads * d
    meta = dict(device="meta")
    args = (torch.empty(b, seq, k, dtype=torch.float8_e4m3fn, **meta), torch.empty(b, seq, 1, **meta),
            torch.empty(n, k, dtype=torch.float8_e4m3fn, **meta), torch.empty(n, 1, **meta), torch.empty(d, **meta))
    with meta_as_cuda(), DispatchCounter() as counter:
        q = fp8_linear_head_norm(*args, num_heads=heads)
    (record,) = [r for r in counter.records if r.cost.launches]
    assert record.name == "cosmos_kernels::fp8_linear_head_norm_triton" and record.cost.launches == 1
    m = b * seq
    assert record.cost.flops == 2 * m * n * k
    assert record.cost.bytes_read == m * k + 4 * m + n * k + 4 * n + 4 * d
    assert record.cost.bytes_written == 2 * m * n
    assert q.shape == (b, seq, heads, d) and q.dtype == torch.bfloat16


# -- fallbacks, autograd and bad input ----------------------------------------------------------------------------

@needs_triton
def test_heads_the_kernel_cannot_run_fall_back_unless_triton_is_asked_for(gen, monkeypatch):
    monkeypatch.setenv("COSMOS_KERNELS_BACKEND", "triton")  # the automatic choice would take the kernel
    for d in (16, 35):
        args = _inputs(gen, 1, 6, 48, 2, d)
        assert_close((fp8_linear_head_norm(*args, num_heads=2),), *_want64(args, 2), torch.bfloat16)
        with pytest.raises(ValueError, match=f"fp8_linear_head_norm: backend 'triton' .*head_dim {d}"):
            fp8_linear_head_norm(*args, num_heads=2, backend="triton")


def test_autograd_runs_the_reference(gen):
    xq, xs, wq, ws, nw = _inputs(gen, 1, 5, 48, 2, 32)
    with pytest.warns(RuntimeWarning, match="fp8_linear_head_norm: inputs require grad"):
        q = fp8_linear_head_norm(xq, xs, wq, ws, nw.requires_grad_(), num_heads=2)
    assert q.requires_grad


def _bad(gen, **change):
    args = dict(zip(("x", "x_scale", "weight", "weight_scale", "norm_weight"), _inputs(gen, 1, 6, 48, 2, 32)))
    args.update(change)
    num_heads = args.pop("num_heads", 2)
    out_dtype = args.pop("out_dtype", torch.bfloat16)
    return fp8_linear_head_norm(*args.values(), num_heads=num_heads, out_dtype=out_dtype)


def test_rejects_x_or_weight_of_another_dtype(gen):
    with pytest.raises(TypeError, match="fp8_linear_head_norm: x must be float8_e4m3fn, got torch.bfloat16"):
        _bad(gen, x=torch.randn(1, 6, 48).bfloat16())
    with pytest.raises(TypeError, match="fp8_linear_head_norm: weight must be float8_e4m3fn, got torch.float32"):
        _bad(gen, weight=torch.randn(64, 48))


def test_rejects_a_weight_not_split_in_heads(gen):
    w = torch.randn(63, 48).to(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match=r"fp8_linear_head_norm: weight has 63 rows, which must be "
                       r"num_heads \* head_dim \(num_heads=2\)$"):
        _bad(gen, weight=w, weight_scale=torch.ones(63, 1))
    with pytest.raises(ValueError, match="fp8_linear_head_norm: weight has shape .* x's last dimension 48"):
        _bad(gen, weight=torch.randn(64, 40).to(torch.float8_e4m3fn))


def test_rejects_a_missing_or_misshapen_norm_weight(gen):
    with pytest.raises(ValueError, match=r"fp8_linear_head_norm: norm_weight must have shape \(32,\)"):
        _bad(gen, norm_weight=torch.ones(64))
    with pytest.raises(TypeError, match="fp8_linear_head_norm: norm_weight must be a torch.Tensor, got NoneType"):
        _bad(gen, norm_weight=None)


def test_rejects_scales_of_the_wrong_shape_or_dtype(gen):
    with pytest.raises(ValueError, match="fp8_linear_head_norm: x_scale must have shape"):
        _bad(gen, x_scale=torch.ones(1, 6, 2))
    with pytest.raises(TypeError, match="fp8_linear_head_norm: weight_scale must be float32"):
        _bad(gen, weight_scale=torch.ones(64, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="fp8_linear_head_norm: weight_scale must hold one scale per output channel"):
        _bad(gen, weight_scale=torch.ones(32, 1))


def test_rejects_bad_num_heads_or_out_dtype(gen):
    with pytest.raises(ValueError, match="fp8_linear_head_norm: num_heads must be an int >= 1"):
        _bad(gen, num_heads=0)
    with pytest.raises(TypeError, match="fp8_linear_head_norm: out_dtype must be bfloat16, float16 or float32"):
        _bad(gen, out_dtype=torch.float64)
