"""`gelu_quantize_rowwise` (the MLP's GELU and the row-wise e4m3 quantization of its output, in one pass) against a
float64 evaluation of its reference, `quantize_rowwise(F.gelu(x))`, on every backend here (Triton through its
interpreter); registration, fake, dispatch count and errors."""

import pytest
import torch
import torch.nn.functional as F

from cosmos_kernels import fp8
from cosmos_kernels.fp8 import reference
from cosmos_kernels.tools.dispatch_counter import DispatchCounter
from tests.numerics import assert_e4m3_rows, cpu_backends

BACKENDS = [b for b in cpu_backends() if b in ("reference", "triton")]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(1, 96), (7, 1000), (2, 3, 5, 96), (1, 7, 2048), (3, 1, 1, 3072)]
MANTISSA = {torch.float32: 23, torch.bfloat16: 7, torch.float16: 10}


def _gelu64(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(GELU(x) in float64 rounded once to x's dtype, the bound on a kernel's error in each element).

    The kernel evaluates `x * 0.5 * (1 + erf(x / sqrt(2)))` in fp32: erf within a few ulp, and `1 + erf` cancels
    in the negative tail, so its absolute error is below 8 * 2^-24 * (|x| + |GELU(x)|). Where that error can move
    the value across a rounding midpoint of x's dtype, the stored GELU may be one ulp of the dtype away."""
    g = F.gelu(x.double())
    rounded = g.to(x.dtype).double()
    err = 8 * 2.0 ** -24 * (x.double().abs() + g.abs())
    if x.dtype != torch.float32:
        min_exp = -126 if x.dtype == torch.bfloat16 else -14
        ulp = torch.exp2(torch.floor(torch.log2(g.abs().clamp_min(2.0 ** min_exp))) - MANTISSA[x.dtype])
        near_midpoint = (0.5 * ulp - (g - rounded).abs()).abs() <= 2 * err
        err = err + torch.where(near_midpoint, ulp, torch.zeros_like(ulp))
    return rounded, err


def _inputs(shape, dtype, gen) -> torch.Tensor:
    # rows of very different magnitudes; both sides of GELU's bend and its negative tail
    scale = torch.exp(2 * torch.randn(*shape[:-1], 1, generator=gen))
    return (torch.randn(shape, generator=gen) * 3 * scale).to(dtype)


def _assert_one_step(values: torch.Tensor, scales: torch.Tensor, want: tuple[torch.Tensor, torch.Tensor],
                     scale_ulps: int) -> None:
    """Against the same-dtype reference: the dequantized values at most one e4m3 step apart (rounding ties of
    the two fp32 GELU evaluations), the scales within `scale_ulps` fp32 ulp (1 where the GELU is stored in
    bfloat16 or float16 before its amax is taken; in float32 each evaluation's few-ulp error reaches the amax)."""
    got = reference.dequantize(values, scales, torch.float64)
    ref = reference.dequantize(*want, torch.float64)
    scaled = want[0].double().abs()  # the e4m3 values: their spacing, times the scale, is one step
    step = torch.exp2(torch.floor(torch.log2(scaled.clamp_min(2.0 ** -6))) - 3) * want[1].double()
    assert ((got - ref).abs() <= step * 1.0001 + 1e-300).all()
    assert ((scales.double() - want[1].double()).abs() <= scale_ulps * want[1].double() * 2.0 ** -23).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_gelu_quantize_rowwise(backend, dtype, shape, gen):
    if backend == "triton" and torch.Size(shape).numel() > 7 * 3072:
        pytest.skip("large shape: covered by the reference")
    x = _inputs(shape, dtype, gen)
    values, scales = fp8.gelu_quantize_rowwise(x, backend=backend)
    g64, err = _gelu64(x)
    assert_e4m3_rows(values, scales, g64, err)
    _assert_one_step(values, scales, reference.quantize_rowwise(F.gelu(x)), 4 if dtype == torch.float32 else 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_rows_are_read_in_place(backend, gen):
    base = torch.randn(4, 3, 2, 200, generator=gen).bfloat16() * 4
    for x in (base[:, :, 1], base.transpose(0, 1)[:, :, 0], base[..., 7:107]):
        assert not x.is_contiguous()
        values, scales = fp8.gelu_quantize_rowwise(x, backend=backend)
        assert values.is_contiguous() and values.shape == x.shape and scales.shape == (*x.shape[:-1], 1)
        assert_e4m3_rows(values, scales, *_gelu64(x))


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_negative_and_wide_rows(backend, gen):
    """An all-zero row (scale 2^-126), an all-negative row (GELU's tail only), rows wider than one tile with the
    largest GELU in the last tile."""
    x = torch.randn(4, 8200, generator=gen)
    x[0] = 0
    x[1] = -x[1].abs() - 0.5
    x[2, 8199] = 40.0
    x[3] *= 1e-3
    values, scales = fp8.gelu_quantize_rowwise(x, backend=backend)
    assert_e4m3_rows(values, scales, *_gelu64(x))
    assert scales[0].item() == 2.0 ** -126 and not values[0].float().any()
    assert scales[2].item() == pytest.approx(40.0 / 448, rel=2.0 ** -23) and values[2, 8199].item() == 448.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_inputs(backend):
    values, scales = fp8.gelu_quantize_rowwise(torch.empty(0, 5, 64), backend=backend)
    assert values.shape == (0, 5, 64) and scales.shape == (0, 5, 1)


def test_float64_and_autograd_run_the_reference(gen):
    x = torch.randn(3, 64, generator=gen, dtype=torch.float64)
    values, scales = fp8.gelu_quantize_rowwise(x)
    assert scales.dtype == torch.float64
    assert_e4m3_rows(values, scales.float(), F.gelu(x))
    with pytest.warns(RuntimeWarning, match="gelu_quantize_rowwise: inputs require grad"):
        values, _ = fp8.gelu_quantize_rowwise(torch.randn(2, 32, requires_grad=True))
    assert values.dtype == torch.float8_e4m3fn


def test_opcheck(gen):
    if "triton" not in BACKENDS:
        pytest.skip("Triton interpreter not available")
    for x in (torch.randn(2, 3, 5, 64, generator=gen), torch.randn(1, 2, 7, 96, generator=gen).bfloat16()):
        torch.library.opcheck(torch.ops.cosmos_kernels.gelu_quantize_rowwise_triton.default, (x,))


def test_one_launch_in_the_dispatch_counter():
    """On the meta device (as on CUDA): one kernel reading x once and writing the e4m3 values and fp32 scales."""
    from cosmos_kernels.backends import meta_as_cuda

    x = torch.empty(2, 1764, 8192, dtype=torch.bfloat16, device="meta")
    with meta_as_cuda(), DispatchCounter() as counter:
        values, scales = fp8.gelu_quantize_rowwise(x)
    assert [r.name for r in counter.records if r.cost.launches] == ["cosmos_kernels::gelu_quantize_rowwise_triton"]
    (record,) = [r for r in counter.records if r.cost.launches]
    n = 2 * 1764 * 8192
    assert (record.cost.bytes_read, record.cost.bytes_written) == (2 * n, n + 4 * 2 * 1764)
    assert values.dtype == torch.float8_e4m3fn and scales.shape == (2, 1764, 1)


# -- bad input: one test per case -------------------------------------------------------------------------------

def test_rejects_integer_input():
    with pytest.raises(TypeError, match="gelu_quantize_rowwise: x must be float32"):
        fp8.gelu_quantize_rowwise(torch.ones(2, 8, dtype=torch.int32))


def test_rejects_too_wide_rows():
    with pytest.raises(ValueError, match="gelu_quantize_rowwise: x has hidden size 16385"):
        fp8.gelu_quantize_rowwise(torch.randn(1, 16385))


def test_rejects_a_non_tensor():
    with pytest.raises(TypeError, match="gelu_quantize_rowwise: x must be a torch.Tensor"):
        fp8.gelu_quantize_rowwise([1.0, 2.0])


def test_rejects_an_unknown_backend():
    with pytest.raises(ValueError, match="gelu_quantize_rowwise"):
        fp8.gelu_quantize_rowwise(torch.randn(2, 8), backend="cuda")
