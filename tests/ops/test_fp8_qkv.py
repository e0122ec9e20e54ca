"""`fp8_linear_qk_norm_rope` (the packed QKV FP8 GEMM with the per-head q / k RMSNorm and RoPE in its epilogue)
against a float64 evaluation of its reference, on every backend here (Triton through its interpreter): odd shapes,
strided rows, optional norms and tables, the GPU tiles; registration, fake, cost, fallbacks and errors."""

import pytest
import torch

from cosmos_kernels import fp8, qk_norm_rope, rope_3d_tables
from cosmos_kernels.attention import fp8_linear_qk_norm_rope, fp8_reference
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

OP = torch.ops.cosmos_kernels.fp8_linear_qk_norm_rope_triton.default


def _inputs(gen, b, seq, k, heads, d, norms="both", rope=True):
    """Quantized rows of very different magnitudes, a quantized weight, norm weights and 3D RoPE tables."""
    x = torch.randn(b, seq, k, generator=gen) * torch.exp(2 * torch.randn(b, seq, 1, generator=gen))
    xq, xs = reference.quantize_rowwise(x)
    wq, ws = reference.quantize_weight(torch.randn(3 * heads * d, k, generator=gen) / k ** 0.5)
    qw = 1 + 0.2 * torch.randn(d, generator=gen) if norms in ("both", "q") else None
    kw = 1 + 0.2 * torch.randn(d, generator=gen) if norms in ("both", "k") else None
    cos = sin = None
    if rope:
        cos, sin = rope_3d_tables(1, seq, 1, d, device=torch.device("cpu"))
    return xq, xs, wq, ws, qw, kw, cos, sin


def _want64(args, heads):
    """(q, k, v) of the reference in float64, and for each a bound on an fp32 evaluation's error per element.

    The fp32 GEMM errs by at most (K + 4) * 2^-24 * (|a| @ |b|) in each element (products, sums, the two scales).
    Normed and rotated heads: that error times the head's 1 / rms and largest norm weight, at most four times over
    (the norm's own sum of squares, RoPE's two terms), plus 2^-19 of the head's largest value (rsqrt and the
    epilogue's few fp32 operations)."""
    x, xs, w, ws, qw, kw, cos, sin = args
    a = reference.dequantize(x, xs, torch.float64)
    bw = reference.dequantize(w, ws, torch.float64)
    pre = (a @ bw.T).unflatten(-1, (3, heads, -1))
    err = ((x.shape[-1] + 4) * 2.0 ** -24 * (a.abs() @ bw.abs().T)).unflatten(-1, (3, heads, -1))
    want = fp8_reference.fp8_linear_qk_norm_rope(*args, heads, out_dtype=torch.float64)
    bounds = []
    for i, (y, norm) in enumerate(zip(want, (qw, kw, None))):
        if i == 2 or (norm is None and cos is None):
            bounds.append(err[:, :, i])
            continue
        scale = torch.ones_like(pre[:, :, i, :, :1])
        if norm is not None:
            scale = torch.rsqrt(pre[:, :, i].pow(2).mean(-1, keepdim=True)) * norm.abs().max()
        head_err = 4 * scale * err[:, :, i].amax(-1, keepdim=True) + 2.0 ** -19 * y.abs().amax(-1, keepdim=True)
        bounds.append(head_err.expand_as(y))
    return want, bounds


CASES = [  # (B, L, K, H, D, norms, rope): L not a multiple of any row tile, K not of any K tile
    (2, 37, 80, 2, 64, "both", True),
    (1, 45, 200, 3, 128, "both", True),
    (3, 11, 200, 2, 64, "k", True),
    (2, 19, 80, 3, 64, "none", False),
    (1, 33, 96, 2, 128, "q", False),
    (2, 9, 80, 2, 96, "both", True),  # a half of 48 columns: not a power of two
    (1, 7, 48, 2, 64, "none", True),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_against_float64(backend, out_dtype, case, gen):
    *shape, norms, rope = case
    heads = shape[3]
    args = _inputs(gen, *shape, norms=norms, rope=rope)
    got = fp8_linear_qk_norm_rope(*args, num_heads=heads, out_dtype=out_dtype, backend=backend)
    assert_close(got, *_want64(args, heads), out_dtype)
    if backend == "triton":  # views of one (B, L, 3, H, D) buffer, as attention reads them
        q, k, v = got
        assert q.stride() == k.stride() == v.stride() and q.stride(-1) == 1
        assert k.data_ptr() - q.data_ptr() == v.data_ptr() - k.data_ptr() == heads * shape[4] * q.element_size()


@pytest.mark.parametrize("backend", BACKENDS)
def test_float16_output(backend, gen):
    args = _inputs(gen, 2, 13, 80, 2, 64)
    got = fp8_linear_qk_norm_rope(*args, num_heads=2, out_dtype=torch.float16, backend=backend)
    assert_close(got, *_want64(args, 2), torch.float16)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_rows_are_read_in_place(backend, gen):
    """x a slice of wider rows, and a batch-transposed view; x_scale a slice of wider rows too."""
    xq, xs, wq, ws, qw, kw, cos, sin = _inputs(gen, 2, 21, 80, 2, 64)
    for x, s in strided_rows(xq, xs):
        got = fp8_linear_qk_norm_rope(x, s, wq, ws, qw, kw, cos, sin, num_heads=2, backend=backend)
        assert_close(got, *_want64((xq, xs, wq, ws, qw, kw, cos, sin), 2), torch.bfloat16)


@needs_triton
def test_gpu_tiles_compute_across_edges(gen):
    """Each GPU tile configuration, run by the interpreter one row past its row tile, with and without a K tail."""
    from cosmos_kernels.attention import fp8_qkv_triton as tk

    for cfg in tk.CONFIGS.values():
        for k in (cfg.block_k, cfg.block_k + 48):
            args = _inputs(gen, 1, cfg.block_m + 1, k, 1, 64)
            out = tk.fp8_linear_qk_norm_rope(*args, 1, 1e-6, torch.bfloat16, config=cfg)
            assert_close(out.unbind(2), *_want64(args, 1), torch.bfloat16)


@pytest.mark.parametrize("capability", [(8, 9), (9, 0), (10, 0), (11, 0), (12, 0)])
def test_gpu_tiles_are_in_the_compile_report(capability, monkeypatch):
    """Every tile a launch can pick, at the 2B's shapes and at a few rows, is registered for the compile report."""
    tk = pytest.importorskip("cosmos_kernels.attention.fp8_qkv_triton")
    reported = reported_tiles("attention.fp8_linear_qk_norm_rope", capability, monkeypatch)
    for m in (1764, 2 * 1764, 40):
        cfg = tk.qkv_config(torch.device("cuda"), m, 16)
        assert (cfg.block_m, tk.block_k_for(2048, cfg), cfg.num_warps, cfg.num_stages) in reported


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_rows(backend, gen):
    xq, xs, wq, ws, qw, kw, _, _ = _inputs(gen, 2, 3, 80, 2, 64, rope=False)
    q, k, v = fp8_linear_qk_norm_rope(xq[:, :0], xs[:, :0], wq, ws, qw, kw, None, None, num_heads=2,
                                      backend=backend)
    assert q.shape == k.shape == v.shape == (2, 0, 2, 64)


def test_agrees_with_the_unfused_pair_to_bf16_rounding(gen):
    """Against the composition it replaces (`fp8_linear` rounded to bf16, then `qk_norm_rope` in bf16): apart by
    the unfused pair's extra rounding of q and k, a couple of bf16 ulps of each head's largest value."""
    args = _inputs(gen, 2, 37, 200, 2, 64)
    x, xs, w, ws, qw, kw, cos, sin = args
    y = fp8.fp8_linear(x, xs, w, ws).unflatten(-1, (3, 2, 64))
    pair = (*qk_norm_rope(y[:, :, 0], y[:, :, 1], qw, kw, cos, sin), y[:, :, 2])
    for backend in BACKENDS:
        got = fp8_linear_qk_norm_rope(*args, num_heads=2, backend=backend)
        for g, p in zip(got, pair):
            head = p.float().abs().amax(-1, keepdim=True)
            assert ((g.float() - p.float()).abs() <= 3 * 2.0 ** -8 * head).all()


def test_cpu_reference_backend_is_one_scaled_mm(gen):
    args = _inputs(gen, 1, 5, 80, 2, 64)
    assert scaled_mm_calls(lambda: fp8_linear_qk_norm_rope(*args, num_heads=2)) == 1


@needs_triton
def test_opcheck(gen):
    cases = ((_inputs(gen, 2, 9, 80, 2, 64), 2, torch.bfloat16),
             (_inputs(gen, 1, 5, 48, 3, 32, norms="none", rope=False), 3, torch.float32))
    for (x, xs, w, ws, *rest), heads, dtype in cases:
        opcheck_e4m3(OP, (x, xs, w, ws.reshape(-1), *rest, heads, 1e-6, dtype))


def test_one_launch_in_the_dispatch_counter():
    """On the meta device (as on CUDA), at the 2B's shapes: one FP8 GEMM launch, 2*M*N*K FLOPs, reading x, the
    scales, the weight, the norm weights and the tables once and writing q, k and v once."""
    from cosmos_kernels.backends import meta_as_cuda

    b, seq, k, heads, d = 1, 1764, 2048, 16, 128
    n = 3 * heads * d
    meta = dict(device="meta")
    args = (torch.empty(b, seq, k, dtype=torch.float8_e4m3fn, **meta), torch.empty(b, seq, 1, **meta),
            torch.empty(n, k, dtype=torch.float8_e4m3fn, **meta), torch.empty(n, 1, **meta),
            torch.empty(d, **meta), torch.empty(d, **meta), torch.empty(seq, d, **meta), torch.empty(seq, d, **meta))
    with meta_as_cuda(), DispatchCounter() as counter:
        q, k_, v = fp8_linear_qk_norm_rope(*args, num_heads=heads)
    (record,) = [r for r in counter.records if r.cost.launches]
    assert record.name == "cosmos_kernels::fp8_linear_qk_norm_rope_triton" and record.cost.launches == 1
    assert record.cost.flops == 2 * b * seq * n * k
    m = b * seq
    assert record.cost.bytes_read == m * k + 4 * m + n * k + 4 * n + 2 * 4 * d + 2 * 4 * seq * d
    assert record.cost.bytes_written == 2 * m * n
    assert q.shape == (b, seq, heads, d) and q.dtype == torch.bfloat16


# -- fallbacks, autograd and bad input ----------------------------------------------------------------------------

@needs_triton
def test_heads_the_kernel_cannot_run_fall_back_unless_triton_is_asked_for(gen, monkeypatch):
    monkeypatch.setenv("COSMOS_KERNELS_BACKEND", "triton")  # the automatic choice would take the kernel
    for d, rope in ((16, True), (35, False)):
        args = _inputs(gen, 1, 6, 48, 2, d, rope=rope)
        got = fp8_linear_qk_norm_rope(*args, num_heads=2)
        assert_close(got, *_want64(args, 2), torch.bfloat16)
        with pytest.raises(ValueError, match=f"fp8_linear_qk_norm_rope: backend 'triton' .*head_dim {d}"):
            fp8_linear_qk_norm_rope(*args, num_heads=2, backend="triton")


def test_autograd_runs_the_reference(gen):
    xq, xs, wq, ws, qw, kw, cos, sin = _inputs(gen, 1, 5, 48, 2, 32)
    with pytest.warns(RuntimeWarning, match="fp8_linear_qk_norm_rope: inputs require grad"):
        q, _, _ = fp8_linear_qk_norm_rope(xq, xs, wq, ws, qw.requires_grad_(), kw, cos, sin, num_heads=2)
    assert q.requires_grad


def _bad(gen, **change):
    args = dict(zip(("x", "x_scale", "weight", "weight_scale", "q_norm_weight", "k_norm_weight", "cos", "sin"),
                    _inputs(gen, 1, 6, 48, 2, 32)))
    args.update(change)
    num_heads = args.pop("num_heads", 2)
    return fp8_linear_qk_norm_rope(*args.values(), num_heads=num_heads)


def test_rejects_x_of_another_dtype(gen):
    with pytest.raises(TypeError, match="fp8_linear_qk_norm_rope: x must be float8_e4m3fn, got torch.bfloat16"):
        _bad(gen, x=torch.randn(1, 6, 48).bfloat16())


def test_rejects_a_weight_without_3_heads_of_rows(gen):
    w = torch.randn(190, 48).to(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match=r"fp8_linear_qk_norm_rope: weight has 190 rows, which must be 3 \* "
                                         r"num_heads \* head_dim \(\[q; k; v\], num_heads=2\)$"):
        _bad(gen, weight=w, weight_scale=torch.ones(190, 1))


def test_rejects_an_odd_head_dim_with_rope(gen):
    w = torch.randn(3 * 2 * 33, 48).to(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="fp8_linear_qk_norm_rope: RoPE needs an even head dim, got head_dim 33"):
        _bad(gen, weight=w, weight_scale=torch.ones(198, 1), q_norm_weight=None, k_norm_weight=None,
             cos=torch.ones(6, 33), sin=torch.ones(6, 33))


def test_rejects_a_table_of_the_wrong_shape(gen):
    with pytest.raises(ValueError, match=r"fp8_linear_qk_norm_rope: cos must have shape \(6, 32\)"):
        _bad(gen, cos=torch.ones(7, 32))
    with pytest.raises(ValueError, match="fp8_linear_qk_norm_rope: cos and sin must both be given"):
        _bad(gen, sin=None)


def test_rejects_a_norm_weight_of_the_wrong_shape(gen):
    with pytest.raises(ValueError, match=r"fp8_linear_qk_norm_rope: k_norm_weight must have shape \(32,\)"):
        _bad(gen, k_norm_weight=torch.ones(64))


def test_rejects_scales_of_the_wrong_shape_or_dtype(gen):
    with pytest.raises(ValueError, match="fp8_linear_qk_norm_rope: x_scale must have shape"):
        _bad(gen, x_scale=torch.ones(1, 6, 2))
    with pytest.raises(TypeError, match="fp8_linear_qk_norm_rope: weight_scale must be float32"):
        _bad(gen, weight_scale=torch.ones(192, 1, dtype=torch.float64))


def test_rejects_bad_num_heads(gen):
    with pytest.raises(ValueError, match="fp8_linear_qk_norm_rope: num_heads must be an int >= 1"):
        _bad(gen, num_heads=0)
