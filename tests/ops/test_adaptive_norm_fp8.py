"""The FP8 variants of the adaptive-norm ops: the quantized rows against a float64 quantization of the unquantized
op's output (same backend), the dequantized output against a float64 evaluation of the reference, the residual
stream unchanged; on every backend here (Triton through its interpreter); registration, fakes and errors."""

import pytest
import torch

import cosmos_kernels as ck
from cosmos_kernels.adaptive_norm import gated_residual_layer_norm_modulate_fp8, layer_norm_modulate_fp8, reference
from cosmos_kernels.fp8.reference import dequantize
from tests.numerics import assert_e4m3_rows, assert_within_reference_error, cpu_backends

BACKENDS = [b for b in cpu_backends() if b in ("reference", "triton")]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
CASES = [
    ((1, 1, 1, 96), (1, 1, 1, 96)),
    ((1, 1, 7, 1000), (1, 1, 1, 1000)),
    ((2, 3, 5, 96), (2, 3, 1, 96)),  # per-frame
    ((1, 7, 2048), (1, 1, 2048)),  # per-sample against (B, L, D)
    ((3, 7, 200), (3, 7, 200)),  # per-token
    ((1, 9, 196, 2048), (1, 9, 1, 2048)),  # LIBERO per-frame
]


def _small_enough(backend, shape):
    return backend != "triton" or torch.Size(shape).numel() <= 7 * 3072


def _as64(*ts):
    return [t.double() for t in ts]


def _check_quantized(values, scales, unquantized, want64, ref_same_dtype, dtype):
    """Quantization of the op's own output, and the dequantized result no further from float64 than the unfused
    reference's (reference op in `dtype`, then quantize_rowwise) is, within a factor 2."""
    assert_e4m3_rows(values, scales, unquantized.double())
    assert_within_reference_error(dequantize(values, scales, torch.float64),
                                  dequantize(*ref_same_dtype, torch.float64), want64, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape,mod_shape", CASES)
def test_layer_norm_modulate_fp8(backend, dtype, x_shape, mod_shape, gen):
    if not _small_enough(backend, x_shape):
        pytest.skip("large shape: covered by the reference")
    x = (torch.randn(x_shape, generator=gen) * 3 + 1).to(dtype)
    shift, scale = torch.randn(*mod_shape[:-1], 2 * mod_shape[-1], generator=gen).to(dtype).chunk(2, dim=-1)
    values, scales = layer_norm_modulate_fp8(x, shift, scale, 1e-6, backend=backend)
    unquantized = ck.layer_norm_modulate(x, shift, scale, 1e-6, backend=backend)
    want = reference.layer_norm_modulate(*_as64(x, shift, scale), 1e-6)
    _check_quantized(values, scales, unquantized, want, reference.layer_norm_modulate_fp8(x, shift, scale), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape,mod_shape", CASES)
def test_gated_residual_layer_norm_modulate_fp8(backend, dtype, x_shape, mod_shape, gen):
    if not _small_enough(backend, x_shape):
        pytest.skip("large shape: covered by the reference")
    residual = (torch.randn(x_shape, generator=gen) * 2).to(dtype)
    x = torch.randn(x_shape, generator=gen).to(dtype)
    gate, shift, scale = torch.randn(*mod_shape[:-1], 3 * mod_shape[-1], generator=gen).to(dtype).chunk(3, dim=-1)
    new_residual, values, scales = gated_residual_layer_norm_modulate_fp8(residual, x, gate, shift, scale,
                                                                          backend=backend)
    want_residual, unquantized = ck.gated_residual_layer_norm_modulate(residual, x, gate, shift, scale,
                                                                       backend=backend)
    assert torch.equal(new_residual, want_residual)
    ref = reference.gated_residual_layer_norm_modulate(residual, x, gate, shift, scale)
    want = reference.gated_residual_layer_norm_modulate(*_as64(residual, x, gate, shift, scale))
    assert_within_reference_error(new_residual, ref[0], want[0], dtype)
    # normed is taken of the rounded new residual, as the reference (and the caller) see it
    want_normed = reference.layer_norm_modulate(*_as64(new_residual, shift, scale))
    ref_fp8 = reference.gated_residual_layer_norm_modulate_fp8(residual, x, gate, shift, scale)
    _check_quantized(values, scales, unquantized, want_normed, ref_fp8[1:], dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_inputs_and_wide_rows(backend, gen):
    """Non-contiguous x (a slice, a transpose), chunked modulation read in place, and rows wider than one tile
    (the looped path's extra pass) with the largest magnitude in the last tile."""
    base = torch.randn(2, 5, 3, 2, 256, generator=gen)
    xt = torch.randn(2, 3, 5, 256, generator=gen).transpose(1, 2)
    shift, scale, gate = torch.randn(2, 5, 1, 768, generator=gen).chunk(3, dim=-1)
    wide = torch.randn(2, 8200, generator=gen)
    wide[1, 8199] = 40.0
    wide_shift, wide_scale = torch.randn(2, 1, 8200, generator=gen).unbind(0)
    cases = [(base[:, :, :, 1], shift, scale), (xt, shift, scale), (wide, wide_shift, wide_scale)]
    for x, sh, sc in cases:
        values, scales = layer_norm_modulate_fp8(x, sh, sc, backend=backend)
        _check_quantized(values, scales, ck.layer_norm_modulate(x, sh, sc, backend=backend),
                         reference.layer_norm_modulate(*_as64(x, sh, sc)), reference.layer_norm_modulate_fp8(x, sh, sc),
                         torch.float32)
        g = gate if x.shape[-1] == 256 else wide_shift * 0.1
        res, values, scales = gated_residual_layer_norm_modulate_fp8(x, x * 0.5, g, sh, sc, backend=backend)
        want_res, unquantized = ck.gated_residual_layer_norm_modulate(x, x * 0.5, g, sh, sc, backend=backend)
        assert torch.equal(res, want_res)
        assert_e4m3_rows(values, scales, unquantized.double())


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_tensors(backend):
    x = torch.empty(0, 7, 64)
    mod = torch.empty(0, 1, 64)
    values, scales = layer_norm_modulate_fp8(x, mod, mod, backend=backend)
    assert values.shape == (0, 7, 64) and scales.shape == (0, 7, 1)
    r, values, scales = gated_residual_layer_norm_modulate_fp8(x, x, mod, mod, mod, backend=backend)
    assert r.shape == values.shape == (0, 7, 64) and scales.shape == (0, 7, 1)


def test_opcheck(gen):
    if "triton" not in BACKENDS:
        pytest.skip("Triton interpreter not available")
    from cosmos_kernels._layout import as_row_grid

    x = torch.randn(2, 3, 5, 64, generator=gen)
    shift, scale, gate = as_row_grid(x.shape, *torch.randn(2, 3, 1, 192, generator=gen).chunk(3, dim=-1))
    ops = torch.ops.cosmos_kernels
    torch.library.opcheck(ops.layer_norm_modulate_fp8_triton.default, (x, shift, scale, 1e-6))
    torch.library.opcheck(ops.gated_residual_layer_norm_modulate_fp8_triton.default,
                          (x, x.clone(), gate, shift, scale, 1e-6))


@torch.inference_mode()
def test_compiles_fullgraph(gen):
    torch._dynamo.reset()
    x = torch.randn(1, 3, 5, 64, generator=gen)
    shift, scale, gate = torch.randn(1, 3, 1, 192, generator=gen).chunk(3, dim=-1)

    def fn(x):
        values, scales = layer_norm_modulate_fp8(x, shift, scale)
        return gated_residual_layer_norm_modulate_fp8(x, dequantize(values, scales), gate, shift, scale)

    for got, want in zip(torch.compile(fn, fullgraph=True, backend="aot_eager")(x), fn(x)):
        assert torch.equal(got.float(), want.float())


# -- bad input ---------------------------------------------------------------------------------------------------

def test_mismatched_hidden_size():
    with pytest.raises(ValueError, match="layer_norm_modulate_fp8: shift.*last dimension 32.*expected 64"):
        layer_norm_modulate_fp8(torch.randn(2, 64), torch.randn(32), torch.randn(64))


def test_gate_that_does_not_broadcast():
    with pytest.raises(ValueError, match="gate of shape \\(2, 5, 64\\) does not broadcast to residual"):
        gated_residual_layer_norm_modulate_fp8(torch.randn(5, 64), torch.randn(5, 64), torch.randn(2, 5, 64),
                                               torch.randn(64), torch.randn(64))


@pytest.mark.skipif("triton" not in BACKENDS, reason="Triton interpreter not available")
def test_mixed_dtypes_on_the_kernel():
    with pytest.raises(TypeError, match="scale has dtype torch.bfloat16 but x has torch.float32"):
        layer_norm_modulate_fp8(torch.randn(2, 64), torch.randn(64), torch.randn(64).bfloat16(), backend="triton")


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of \\('reference', 'triton'\\)"):
        layer_norm_modulate_fp8(torch.randn(2, 64), torch.randn(64), torch.randn(64), backend="cpu")
