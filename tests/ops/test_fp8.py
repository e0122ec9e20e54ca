"""The FP8 family against a float64 evaluation of its reference: row-wise quantization on every backend here (Triton
through its interpreter), weight quantization, and the scaled GEMM; registration, fakes and errors."""

import pytest
import torch

from cosmos_kernels import fp8
from cosmos_kernels.fp8 import reference
from tests.numerics import assert_e4m3_rows, cpu_backends

BACKENDS = [b for b in cpu_backends() if b in ("reference", "triton")]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(1, 96), (7, 1000), (2, 3, 5, 96), (1, 7, 2048), (3, 1, 1, 3072)]


def _small_enough(backend: str, shape) -> bool:
    return backend != "triton" or torch.Size(shape).numel() <= 7 * 3072


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_quantize_rowwise(backend, dtype, shape, gen):
    if not _small_enough(backend, shape):
        pytest.skip("large shape: covered by the reference")
    # rows of very different magnitudes, so that the scales differ
    x = (torch.randn(shape, generator=gen) * torch.exp(4 * torch.randn(*shape[:-1], 1, generator=gen))).to(dtype)
    values, scales = fp8.quantize_rowwise(x, backend=backend)
    assert_e4m3_rows(values, scales, x.double())
    # the same-dtype reference: equal except at rounding ties (none at these random inputs)
    ref_values, ref_scales = reference.quantize_rowwise(x)
    assert torch.equal(scales, ref_scales)
    assert (values.float() != ref_values.float()).sum().item() <= 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_tiny_huge_and_exact_rows(backend, gen):
    """All-zero rows (values 0, scale 2^-126), rows below the scale floor, every e4m3 number as an input (exact),
    rounding ties (to even), and rows at fp32's largest magnitudes."""
    exact = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    exact = exact[~exact.isnan()]
    d = exact.numel()
    ties = torch.tensor([1.0625, 1.1875, 17.0, 19.0, -1.0625, 2.0 ** -10, 3 * 2.0 ** -10, 448.0])
    x = torch.stack([
        exact, torch.zeros(d), torch.randn(d, generator=gen) * 1e-38, torch.randn(d, generator=gen) * 1e37,
        torch.cat([ties, torch.zeros(d - ties.numel())]), torch.randn(d, generator=gen).clamp_min(0),
    ])
    values, scales = fp8.quantize_rowwise(x, backend=backend)
    assert_e4m3_rows(values, scales, x.double())
    assert torch.equal(values[0].float(), exact) and scales[0].item() == 1.0
    assert torch.equal(values[1].float(), torch.zeros(d)) and scales[1].item() == 2.0 ** -126
    want_ties = torch.tensor([1.0, 1.25, 16.0, 20.0, -1.0, 0.0, 2.0 ** -8, 448.0])
    assert torch.equal(values[4, :8].float(), want_ties)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_rows_are_read_in_place(backend, gen):
    base = torch.randn(4, 3, 2, 200, generator=gen)
    for x in (base[:, :, 1], base.transpose(0, 1)[:, :, 0], base[..., 7:107]):
        values, scales = fp8.quantize_rowwise(x, backend=backend)
        assert values.is_contiguous()
        assert_e4m3_rows(values, scales, x.double())


@pytest.mark.parametrize("backend", BACKENDS)
def test_wide_rows_beyond_one_tile(backend, gen):
    x = torch.randn(2, 8200, generator=gen) * torch.tensor([[1e-3], [50.0]])
    x[1, 8199] = -300.0  # the row's largest magnitude in its last tile
    values, scales = fp8.quantize_rowwise(x, backend=backend)
    assert_e4m3_rows(values, scales, x.double())


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_inputs(backend):
    values, scales = fp8.quantize_rowwise(torch.empty(0, 5, 64), backend=backend)
    assert values.shape == (0, 5, 64) and scales.shape == (0, 5, 1)


def test_float64_and_autograd_run_the_reference(gen):
    x = torch.randn(3, 64, generator=gen, dtype=torch.float64)
    values, scales = fp8.quantize_rowwise(x)
    assert scales.dtype == torch.float64
    assert_e4m3_rows(values, scales.float(), x)


def test_opcheck(gen):
    if "triton" not in BACKENDS:
        pytest.skip("Triton interpreter not available")
    x = torch.randn(2, 3, 5, 64, generator=gen)
    torch.library.opcheck(torch.ops.cosmos_kernels.quantize_rowwise_triton.default, (x,))


def test_compiles_fullgraph(gen):
    torch._dynamo.reset()
    x = torch.randn(4, 96, generator=gen)
    w_values, w_scales = fp8.quantize_weight(torch.randn(32, 96, generator=gen))

    def fn(x):
        return fp8.fp8_linear(*fp8.quantize_rowwise(x), w_values, w_scales, out_dtype=torch.float32)

    torch.testing.assert_close(torch.compile(fn, fullgraph=True, backend="aot_eager")(x), fn(x))


def test_quantize_weight_per_output_channel(gen):
    w = torch.randn(70, 33, generator=gen) * torch.linspace(0.01, 10, 70)[:, None]
    values, scales = fp8.quantize_weight(w.bfloat16())
    assert scales.shape == (70, 1)
    assert_e4m3_rows(values, scales, w.bfloat16().double())


# -- the scaled GEMM ---------------------------------------------------------------------------------------------

@pytest.fixture(params=["row-scales", "unit-scales"])
def cpu_gemm(request, monkeypatch):
    """Both CPU paths: `_scaled_mm` with row / column scales (torch >= 2.12), and with unit scales and the scales
    applied after it (what older torch's CPU kernel allows)."""
    from cosmos_kernels.fp8 import ops

    if request.param == "row-scales" and not ops.cpu_rowwise_scaled_mm():
        pytest.skip("this torch's CPU _scaled_mm takes one scale per operand")
    if request.param == "unit-scales":
        monkeypatch.setattr(ops, "cpu_rowwise_scaled_mm", lambda: False)
    return request.param


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("lead,k,n", [((37,), 48, 80), ((1,), 96, 16), ((2, 5), 64, 32), ((196,), 2048, 160)])
def test_fp8_linear_matches_the_dequantized_product(out_dtype, lead, k, n, gen, cpu_gemm):
    x_values, x_scales = reference.quantize_rowwise(torch.randn(*lead, k, generator=gen))
    w_values, w_scales = fp8.quantize_weight(torch.randn(n, k, generator=gen) * k ** -0.5)
    got = fp8.fp8_linear(x_values, x_scales, w_values, w_scales, out_dtype=out_dtype)
    assert got.dtype == out_dtype and got.shape == (*lead, n)
    a = reference.dequantize(x_values, x_scales, torch.float64)
    b = reference.dequantize(w_values, w_scales, torch.float64)
    want = a @ b.T
    # fp32 accumulation (Higham's K * 2^-24 bound on sum |a_k b_k|) and the one rounding to out_dtype
    bound = k * 2.0 ** -24 * (a.abs() @ b.abs().T) + torch.finfo(out_dtype).eps * want.abs() + 1e-30
    excess = ((got.double() - want).abs() - bound).max().item()
    assert excess <= 0, f"error above the bound by {excess:.3e}"


def test_fp8_linear_bias_and_scale_shapes(gen, cpu_gemm):
    x_values, x_scales = reference.quantize_rowwise(torch.randn(3, 7, 32, generator=gen))
    w_values, w_scales = fp8.quantize_weight(torch.randn(16, 32, generator=gen))
    bias = torch.randn(16, generator=gen)
    want = reference.fp8_linear(x_values, x_scales, w_values, w_scales, bias.double(), torch.float64)
    for out_dtype in (torch.bfloat16, torch.float32):
        for ws in (w_scales, w_scales.view(16), w_scales.view(1, 16)):
            got = fp8.fp8_linear(x_values, x_scales, w_values, ws, bias.to(out_dtype), out_dtype=out_dtype)
            err = (got.double() - want).abs().max().item()
            assert err <= 2 * torch.finfo(out_dtype).eps * want.abs().max().item()


# -- bad input: one test per case -------------------------------------------------------------------------------

def test_quantize_rejects_integer_input():
    with pytest.raises(TypeError, match="quantize_rowwise: x must be float32"):
        fp8.quantize_rowwise(torch.ones(2, 8, dtype=torch.int32))


def test_quantize_rejects_too_wide_rows():
    with pytest.raises(ValueError, match="x has hidden size 16385"):
        fp8.quantize_rowwise(torch.randn(1, 16385))


def test_quantize_weight_rejects_a_vector():
    with pytest.raises(ValueError, match=r"weight must be \(out_features, in_features\)"):
        fp8.quantize_weight(torch.randn(8))


def _operands(gen):
    xq, xs = reference.quantize_rowwise(torch.randn(4, 32, generator=gen))
    wq, ws = reference.quantize_weight(torch.randn(16, 32, generator=gen))
    return xq, xs, wq, ws


def test_linear_rejects_unquantized_x(gen):
    xq, xs, wq, ws = _operands(gen)
    with pytest.raises(TypeError, match="fp8_linear: x must be float8_e4m3fn, got torch.float32"):
        fp8.fp8_linear(xq.float(), xs, wq, ws)


def test_linear_rejects_wrong_x_scale_shape(gen):
    xq, xs, wq, ws = _operands(gen)
    with pytest.raises(ValueError, match=r"x_scale must have shape \(4, 1\)"):
        fp8.fp8_linear(xq, xs.view(1, 4), wq, ws)


def test_linear_rejects_wrong_weight_scale(gen):
    xq, xs, wq, ws = _operands(gen)
    with pytest.raises(ValueError, match="weight_scale must hold one scale per output channel"):
        fp8.fp8_linear(xq, xs, wq, ws[:8])
    with pytest.raises(TypeError, match="weight_scale must be float32, got torch.bfloat16"):
        fp8.fp8_linear(xq, xs, wq, ws.bfloat16())


def test_linear_rejects_mismatched_features(gen):
    xq, xs, wq, ws = _operands(gen)
    with pytest.raises(ValueError, match="last dimension must be weight's in_features 16"):
        fp8.fp8_linear(xq, xs, wq[:, :16], ws)


def test_linear_rejects_bad_out_dtype_and_bias(gen):
    xq, xs, wq, ws = _operands(gen)
    with pytest.raises(TypeError, match="out_dtype must be bfloat16, float16 or float32"):
        fp8.fp8_linear(xq, xs, wq, ws, out_dtype=torch.int8)
    with pytest.raises(ValueError, match=r"bias must have shape \(16,\)"):
        fp8.fp8_linear(xq, xs, wq, ws, bias=torch.randn(15))


def test_linear_rejects_tensors_on_two_devices(gen):
    xq, xs, wq, ws = _operands(gen)
    with pytest.raises(ValueError, match="weight_scale is on meta but x is on cpu"):
        fp8.fp8_linear(xq, xs, wq, ws.to("meta"))
