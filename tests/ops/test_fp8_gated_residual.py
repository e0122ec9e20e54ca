"""`fp8_linear_gated_residual` against a float64 evaluation of its reference, on every backend here (Triton through
its interpreter): the three forms of A (row-scaled e4m3, group-scaled e4m3, a float tensor quantized inside the GEMM)
on odd shapes, strided operands, broadcast gates; its registration, cost, tiles and errors."""

import math

import pytest
import torch

from cosmos_kernels import _dispatch, fp8
from cosmos_kernels.fp8 import reference
from cosmos_kernels.tools.dispatch_counter import DispatchCounter
from tests.numerics import cpu_backends

BACKENDS = [b for b in cpu_backends() if b in ("reference", "triton")]
FORMS = ["row", "group", "float"]


def _operands(gen, lead, k, n, form, x_dtype=torch.float32):
    """x (its form), x_scale, weight, weight_scale; A's rows of very different magnitudes."""
    x = (torch.randn(*lead, k, generator=gen) * torch.exp(2 * torch.randn(*lead, 1, generator=gen))).to(x_dtype)
    weight, weight_scale = reference.quantize_weight(torch.randn(n, k, generator=gen) * k ** -0.5)
    if form == "float":
        return x, None, weight, weight_scale
    values, scales = reference.quantize_rowwise(x)
    if form == "group":  # any positive scales: the layout is what is checked
        scales = scales * torch.exp(torch.randn(*lead, math.ceil(k / 128), generator=gen))
    return values, scales, weight, weight_scale


def _check(got, x, x_scale, weight, weight_scale, residual, gate):
    """Element-wise against float64, within fp32 accumulation over K of the dequantized operands (Higham's bound,
    a few more roundings for the scales) times |gate|, the fp32 gated add, and one rounding to residual's dtype."""
    dtype = residual.dtype
    assert got.dtype == dtype and got.shape == residual.shape
    assert not torch.isnan(got).any(), "output has NaN (an element was not written)"
    if x_scale is None:  # the reference's values and scales, which the kernel must reproduce
        x, x_scale = reference.quantize_rowwise(x)
    want = reference.fp8_linear_gated_residual(x, x_scale, weight, weight_scale, residual.double(), gate.double())
    k = x.shape[-1]
    deq = reference.dequantize if x_scale.shape[-1] == 1 else reference.dequantize_groupwise
    a = deq(x, x_scale, dtype=torch.float64).reshape(-1, k)
    b = reference.dequantize(weight, weight_scale, torch.float64)
    magnitude = (a.abs() @ b.abs().T).view(residual.shape) * gate.double().abs()
    bound = ((k + 4) * 2.0 ** -24 * magnitude + 2.0 ** -23 * (residual.double().abs() + magnitude)
             + torch.finfo(dtype).eps * want.abs() + 1e-30)
    excess = ((got.double() - want).abs() - bound).max().item()
    assert excess <= 0, f"error above the bound by {excess:.3e}"


# (rows, K, N): K = 80 (below one scale group), 200 and 300 (partial last group), rows never a multiple of a tile
CASES = [((37,), 80, 70), ((2, 3, 5), 200, 48), ((1, 7), 300, 33)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("lead,k,n", CASES)
def test_matches_float64_reference(backend, form, dtype, lead, k, n, gen):
    x, xs, w, ws = _operands(gen, lead, k, n, form, x_dtype=dtype)
    residual = torch.randn(*lead, n, generator=gen).to(dtype)
    gate = torch.randn(n, generator=gen).to(dtype)
    _check(fp8.fp8_linear_gated_residual(x, xs, w, ws, residual, gate, backend=backend), x, xs, w, ws, residual, gate)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", FORMS)
def test_token_grid_with_per_frame_and_per_sample_gates(backend, form, gen):
    """x `(B, T * S, K)` and `(B, T, S, K)` against residual `(B, T, S, N)`; gates `(B, T, 1, N)` (a strided view of
    a modulation vector, as `mod(i, j)` is) and `(B, 1, 1, N)`."""
    b, t, s, k, n = 2, 3, 7, 200, 40
    residual = torch.randn(b, t, s, n, generator=gen, dtype=torch.bfloat16)
    mods = torch.randn(b, t, 1, 9 * n, generator=gen, dtype=torch.bfloat16)
    gates = [mods[..., 2 * n:3 * n], torch.randn(b, 1, 1, n, generator=gen, dtype=torch.bfloat16)]
    x, xs, w, ws = _operands(gen, (b, t, s), k, n, form, x_dtype=torch.bfloat16)
    flat = (x.view(b, t * s, k), None if xs is None else xs.view(b, t * s, -1))
    for gate in gates:
        for xx, ss in ((x, xs), flat):
            got = fp8.fp8_linear_gated_residual(xx, ss, w, ws, residual, gate, backend=backend)
            _check(got, x, xs, w, ws, residual, gate)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", FORMS)
def test_strided_operands_are_read_in_place(backend, form, gen):
    """x a slice of wider rows and with its batch and token dims swapped in memory; residual a slice too."""
    b, seq, k, n = 2, 9, 200, 36
    x, xs, w, ws = _operands(gen, (seq, b), k + 20, n, "float")
    base = x.transpose(0, 1)  # (b, seq, k + 20), batch-major strides swapped
    x = base[..., 10:10 + k]
    if form != "float":
        values, scales = reference.quantize_rowwise(x)
        wide = torch.zeros(seq, b, k + 20, dtype=values.dtype)
        wide[..., 5:5 + k] = values.transpose(0, 1)
        x = wide.transpose(0, 1)[..., 5:5 + k]
        xs = scales if form == "row" else scales * torch.rand(b, seq, 2, generator=gen) + scales
    w = torch.randn(n, k, generator=gen) * k ** -0.5
    w, ws = reference.quantize_weight(w)
    assert not x.is_contiguous()
    residual = torch.randn(b, seq, 2 * n, generator=gen)[..., n:]
    gate = torch.randn(b, 1, n, generator=gen)
    got = fp8.fp8_linear_gated_residual(x, xs, w, ws, residual, gate, backend=backend)
    _check(got, x, xs, w, ws, residual, gate)


@pytest.mark.skipif("triton" not in BACKENDS, reason="needs Triton (its interpreter on the CPU)")
def test_in_gemm_quantization_equals_quantize_rowwise(gen):
    """A float A is quantized with exactly `quantize_rowwise`'s values and scales, also in zero rows and rows of
    subnormal values (the scale floor). Seen through the identity weight, with a zero residual and a unit gate: the
    output is then `values * scales`, rounded once in fp32, with no sum to reorder."""
    k = 300
    x = torch.randn(37, k, generator=gen) * 5
    x[3] = 0
    x[4] *= 1e-39
    eye = torch.eye(k).to(torch.float8_e4m3fn)
    out = fp8.fp8_linear_gated_residual(x, None, eye, torch.ones(k, 1), torch.zeros(37, k), torch.ones(k),
                                        backend="triton")
    assert torch.equal(out, reference.dequantize(*reference.quantize_rowwise(x)))
    assert torch.equal(out[3], torch.zeros(k))


@pytest.mark.skipif("triton" not in BACKENDS, reason="needs Triton (its interpreter on the CPU)")
@pytest.mark.parametrize("form", FORMS)
def test_gpu_tiles_compute_across_edges(form, gen):
    """Each GPU tile, run by the interpreter on sizes one past its tiles and with a K tail in a partial group."""
    from cosmos_kernels.fp8 import residual_triton as kernels

    for cfg in kernels.CONFIGS.values():
        m, k, n = cfg.block_m + 1, 300, cfg.block_n + 1
        x, xs, w, ws = _operands(gen, (m,), k, n, form)
        residual, gate = torch.randn(m, n, generator=gen), torch.randn(n, generator=gen)
        x3 = x.view(1, m, k)
        scales = None if xs is None else xs
        got = kernels.fp8_linear_gated_residual(x3, scales, w, ws.view(n), residual.view(1, 1, m, n),
                                                gate.expand(m, n).view(1, 1, m, n), config=cfg)
        _check(got.view(m, n), x, xs, w, ws, residual, gate)


def test_every_gpu_tile_is_in_the_compile_report(monkeypatch):
    kernels = pytest.importorskip("cosmos_kernels.fp8.residual_triton")
    from cosmos_kernels._registry import TRITON_KERNELS

    reported = {(c.constexprs["MODE"], c.signature["x_ptr"], c.constexprs["BLOCK_M"], c.constexprs["BLOCK_N"],
                 c.constexprs["BLOCK_K"], c.num_warps, c.num_stages)
                for c in TRITON_KERNELS["fp8.fp8_linear_gated_residual"].configs}
    cuda = torch.device("cuda")
    for m, n, k in ((1764, 2048, 2048), (1764, 2048, 8192), (40, 64, 128)):
        for mode, x_dtype, name in ((0, torch.float8_e4m3fn, "*fp8e4nv"), (1, torch.float8_e4m3fn, "*fp8e4nv"),
                                    (2, torch.bfloat16, "*bf16"), (2, torch.float16, "*fp16"),
                                    (2, torch.float32, "*fp32")):
            c = kernels.gemm_config(cuda, m, n, k, x_dtype, grouped=mode == 1)
            assert (mode, name, c.block_m, c.block_n, c.block_k, c.num_warps, c.num_stages) in reported


@pytest.mark.skipif("triton" not in BACKENDS, reason="needs Triton (its interpreter on the CPU)")
@pytest.mark.parametrize("form", FORMS)
def test_opcheck(form, gen):
    x, xs, w, ws = _operands(gen, (2, 5), 200, 24, form)
    residual = torch.randn(1, 2, 5, 24, generator=gen)
    gate = torch.randn(1, 2, 1, 24, generator=gen).expand(1, 2, 5, 24)
    scales = None if xs is None else xs.reshape(10, -1)
    args = (x, scales, w, ws.view(24), residual, gate)
    op = torch.ops.cosmos_kernels.fp8_linear_gated_residual_triton.default
    # The schema check compares inputs with torch.allclose, which the CPU lacks for e4m3 (the weight always is): that
    # check is done here (inputs unchanged bit for bit, the output no alias of one), the others by opcheck.
    def bits(t):
        return t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t

    inputs = [t for t in args if t is not None]
    before = [t.clone() for t in inputs]
    out = op(*args)
    assert all(torch.equal(bits(a), bits(b)) for a, b in zip(before, inputs))
    assert all(out.untyped_storage().data_ptr() != t.untyped_storage().data_ptr() for t in inputs)
    utils = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(op, args, test_utils=utils)


def test_cost_counts_one_launch_and_each_footprint():
    """On meta tensors as on CUDA: 2 M N K FLOPs, A in its own dtype, the per-frame gate once per frame."""
    b, t, s, k, n = 1, 4, 441, 2048, 2048
    m = b * t * s
    meta = torch.device("meta")
    w, ws = torch.empty(n, k, dtype=torch.float8_e4m3fn, device=meta), torch.empty(n, 1, device=meta)
    residual = torch.empty(b, t, s, n, dtype=torch.bfloat16, device=meta)
    gate = torch.empty(b, t, 1, n, dtype=torch.bfloat16, device=meta)
    x = torch.empty(b, t * s, k, dtype=torch.bfloat16, device=meta)
    with torch.no_grad(), _dispatch.meta_as_cuda(), DispatchCounter() as counter:
        fp8.fp8_linear_gated_residual(x, None, w, ws, residual, gate)
    (record,) = [r for r in counter.records if r.cost.launches]
    assert record.name == "cosmos_kernels::fp8_linear_gated_residual_triton"
    assert (record.cost.launches, record.cost.flops) == (1, 2 * m * n * k)
    assert record.cost.bytes_read == 2 * m * k + n * k + 4 * n + 2 * m * n + 2 * t * n
    assert record.cost.bytes_written == 2 * m * n


def test_reference_backend_is_one_scaled_mm(gen):
    """On the CPU the row-scaled and the float forms run one `_scaled_mm` (fp32 output) and the gated add."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.calls += func.overloadpacket.__name__ == "_scaled_mm"
            return func(*args, **(kwargs or {}))

    for form in ("row", "float"):
        x, xs, w, ws = _operands(gen, (7,), 64, 16, form)
        Count.calls = 0
        with Count():
            fp8.fp8_linear_gated_residual(x, xs, w, ws, torch.randn(7, 16), torch.randn(16), backend="reference")
        assert Count.calls == 1


def test_autograd_and_float64_run_the_reference(gen):
    x, _, w, ws = _operands(gen, (5,), 64, 16, "float", x_dtype=torch.float64)
    residual = torch.randn(5, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="inputs require grad"):
        out = fp8.fp8_linear_gated_residual(x, None, w, ws, residual, torch.ones(16, dtype=torch.float64))
    out.sum().backward()
    assert out.dtype == torch.float64 and torch.equal(residual.grad, torch.ones(5, 16, dtype=torch.float64))


# -- bad input: one test per case -------------------------------------------------------------------------------

def _bad_call(gen, **overrides):
    x, xs, w, ws = _operands(gen, (2, 3, 5), 300, 16, "row")
    args = dict(x=x, x_scale=xs, weight=w, weight_scale=ws, residual=torch.randn(2, 3, 5, 16, generator=gen),
                gate=torch.randn(2, 3, 1, 16, generator=gen))
    args.update(overrides)
    return fp8.fp8_linear_gated_residual(**args)


def test_rejects_x_scale_of_neither_layout(gen):
    with pytest.raises(ValueError, match=r"x_scale must have shape \(2, 3, 5, 1\) .* or \(2, 3, 5, 3\)"):
        _bad_call(gen, x_scale=torch.ones(2, 3, 5, 2))


def test_rejects_e4m3_x_without_scales(gen):
    with pytest.raises(ValueError, match="x is float8_e4m3fn, so x_scale .* is required"):
        _bad_call(gen, x_scale=None)


def test_rejects_scales_with_a_float_x(gen):
    with pytest.raises(ValueError, match="x_scale must be None when x is torch.float32"):
        _bad_call(gen, x=torch.randn(2, 3, 5, 300, generator=gen))


def test_rejects_integer_x(gen):
    with pytest.raises(TypeError, match="x must be float8_e4m3fn .* got torch.int32"):
        _bad_call(gen, x=torch.ones(2, 3, 5, 300, dtype=torch.int32), x_scale=None)


def test_rejects_weight_of_other_in_features(gen):
    w, ws = reference.quantize_weight(torch.randn(16, 256, generator=gen))
    with pytest.raises(ValueError, match="its last dimension must be weight's in_features 256"):
        _bad_call(gen, weight=w, weight_scale=ws)


def test_rejects_bad_weight_scale(gen):
    with pytest.raises(ValueError, match="weight_scale must hold one scale per output channel"):
        _bad_call(gen, weight_scale=torch.ones(8, 1))


def test_rejects_residual_of_other_out_features(gen):
    with pytest.raises(ValueError, match="residual has last dimension 17 .* weight's out_features"):
        _bad_call(gen, residual=torch.randn(2, 3, 5, 17, generator=gen))


def test_rejects_gate_that_does_not_broadcast(gen):
    with pytest.raises(ValueError, match="gate of shape \\(2, 2, 1, 16\\) does not broadcast"):
        _bad_call(gen, gate=torch.randn(2, 2, 1, 16, generator=gen))
    with pytest.raises(ValueError, match="gate has last dimension 15"):
        _bad_call(gen, gate=torch.randn(2, 3, 1, 15, generator=gen))


def test_rejects_x_rows_that_are_not_residuals(gen):
    with pytest.raises(ValueError, match=r"its rows must be residual's rows \(2, 3, 5\)"):
        _bad_call(gen, x=torch.randn(2, 5, 3, 300, generator=gen), x_scale=None)
    with pytest.raises(ValueError, match=r"its rows must be residual's rows \(2, 3, 5\)"):
        _bad_call(gen, x=torch.randn(2, 16, 300, generator=gen), x_scale=None)


def test_rejects_tensors_on_two_devices(gen):
    with pytest.raises(ValueError, match="gate is on meta but residual is on cpu"):
        _bad_call(gen, gate=torch.empty(2, 3, 1, 16, device="meta"))
