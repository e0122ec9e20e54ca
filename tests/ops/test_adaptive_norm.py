"""The adaptive-norm family against a float64 evaluation of its reference, on every backend here."""

import pytest
import torch

import cosmos_kernels as ck
from cosmos_kernels import _dispatch
from cosmos_kernels.adaptive_norm import reference
from tests.numerics import assert_within_reference_error, cpu_backends

BACKENDS = cpu_backends()
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _small_enough(backend: str, rows: int, d: int) -> bool:
    # The Triton interpreter costs about a millisecond per program: keep its shapes small.
    return backend != "triton" or rows * d <= 7 * 3072


def _modulation(gen, shape, dtype):
    """shift, scale, gate as strided views of one (…, 3D) projection, as the DiT produces them."""
    mod = torch.randn(*shape[:-1], 3 * shape[-1], generator=gen).to(dtype)
    return mod.chunk(3, dim=-1)


def _as64(*ts):
    return [t.double() for t in ts]


CASES = [
    # x shape, modulation shape
    ((1, 1, 1, 96), (1, 1, 1, 96)),
    ((1, 1, 7, 1000), (1, 1, 1, 1000)),
    ((2, 3, 5, 2048), (2, 3, 1, 2048)),  # per-frame
    ((2, 3, 5, 96), (2, 1, 1, 96)),  # per-sample
    ((1, 7, 3072), (1, 1, 3072)),  # per-sample against (B, L, D)
    ((3, 7, 1000), (3, 7, 1000)),  # per-token
    ((1, 1764, 2048), (1, 1, 2048)),
    ((1, 9, 196, 2048), (1, 9, 1, 2048)),  # LIBERO per-frame
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape,mod_shape", CASES)
def test_layer_norm_modulate(backend, dtype, x_shape, mod_shape, gen):
    rows = torch.Size(x_shape[:-1]).numel()
    if not _small_enough(backend, rows, x_shape[-1]):
        pytest.skip("large shape: covered by the cpu backend")
    x = (torch.randn(x_shape, generator=gen) * 3 + 1).to(dtype)
    shift, scale, _ = _modulation(gen, mod_shape, dtype)
    got = ck.layer_norm_modulate(x, shift, scale, 1e-6, backend=backend)
    assert got.dtype == dtype and got.shape == x.shape
    want = reference.layer_norm_modulate(*_as64(x, shift, scale), 1e-6)
    assert_within_reference_error(got, reference.layer_norm_modulate(x, shift, scale, 1e-6), want, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape,mod_shape", CASES)
def test_gated_residual_layer_norm_modulate(backend, dtype, x_shape, mod_shape, gen):
    rows = torch.Size(x_shape[:-1]).numel()
    if not _small_enough(backend, rows, x_shape[-1]):
        pytest.skip("large shape: covered by the cpu backend")
    residual = (torch.randn(x_shape, generator=gen) * 2).to(dtype)
    x = torch.randn(x_shape, generator=gen).to(dtype)
    gate, _, _ = _modulation(gen, mod_shape, dtype)
    shift, scale, _ = _modulation(gen, mod_shape, dtype)
    got = ck.gated_residual_layer_norm_modulate(residual, x, gate, shift, scale, backend=backend)
    ref = reference.gated_residual_layer_norm_modulate(residual, x, gate, shift, scale)
    want = reference.gated_residual_layer_norm_modulate(*_as64(residual, x, gate, shift, scale))
    assert_within_reference_error(got, ref, want, dtype)
    if dtype != torch.float32:
        # normed is taken of the rounded new residual, as the reference (and the caller) see it
        want_normed = reference.layer_norm_modulate(*_as64(got[0], shift, scale))
        assert_within_reference_error(got[1], ref[1], want_normed, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 96), (7, 128), (3, 5, 1000), (2, 7, 16, 128), (1764, 2048)])
def test_rms_norm(backend, dtype, shape, gen):
    rows = torch.Size(shape[:-1]).numel()
    if not _small_enough(backend, rows, shape[-1]):
        pytest.skip("large shape: covered by the cpu backend")
    x = (torch.randn(shape, generator=gen) * 4).to(dtype)
    w = torch.randn(shape[-1], generator=gen).to(dtype)
    got = ck.rms_norm(x, w, backend=backend)
    assert_within_reference_error(got, reference.rms_norm(x, w), reference.rms_norm(x.double(), w.double()), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_and_transposed_inputs(backend, gen):
    """Non-contiguous x (a slice and a transpose) and modulation read in place match the reference."""
    base = torch.randn(2, 5, 3, 2, 256, generator=gen)
    x = base[:, :, :, 1]  # (2, 5, 3, 256), row stride 512
    xt = torch.randn(2, 3, 5, 256, generator=gen).transpose(1, 2)  # rows not in memory order
    mod = torch.randn(2, 5, 1, 768, generator=gen)
    shift, scale, gate = mod.chunk(3, dim=-1)
    for xx in (x, xt):
        got = ck.layer_norm_modulate(xx, shift, scale, backend=backend)
        want = reference.layer_norm_modulate(*_as64(xx, shift, scale))
        assert_within_reference_error(got, reference.layer_norm_modulate(xx, shift, scale), want, torch.float32)
        got = ck.gated_residual_layer_norm_modulate(xx, x, gate, shift, scale, backend=backend)
        want = reference.gated_residual_layer_norm_modulate(*_as64(xx, x, gate, shift, scale))
        ref = reference.gated_residual_layer_norm_modulate(xx, x, gate, shift, scale)
        assert_within_reference_error(got, ref, want, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_wide_rows_beyond_one_tile(backend, gen):
    """D above the Triton single-tile limit (looped path) and at the 16384 maximum."""
    for d in (8200, 16384):
        x = torch.randn(2, d, generator=gen)
        shift, scale = torch.randn(2, 1, d, generator=gen).unbind(0)
        got = ck.layer_norm_modulate(x, shift, scale, backend=backend)
        want = reference.layer_norm_modulate(*_as64(x, shift, scale))
        assert_within_reference_error(got, reference.layer_norm_modulate(x, shift, scale), want, torch.float32)
        w = torch.randn(d, generator=gen)
        got = ck.rms_norm(x, w, backend=backend)
        assert_within_reference_error(got, reference.rms_norm(x, w), reference.rms_norm(x.double(), w.double()),
                                      torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_outputs_are_new_tensors(backend, gen):
    x = torch.randn(3, 64, generator=gen)
    zero = torch.zeros(64)
    out = ck.layer_norm_modulate(x, zero, zero, backend=backend)
    assert out.data_ptr() != x.data_ptr()
    res, normed = ck.gated_residual_layer_norm_modulate(x, x, zero, zero, zero, backend=backend)
    assert res.data_ptr() != x.data_ptr() and torch.equal(res, x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_tensors(backend):
    x = torch.empty(0, 7, 64)
    mod = torch.empty(0, 1, 64)
    assert ck.layer_norm_modulate(x, mod, mod, backend=backend).shape == (0, 7, 64)
    r, n = ck.gated_residual_layer_norm_modulate(x, x, mod, mod, mod, backend=backend)
    assert r.shape == n.shape == (0, 7, 64)
    assert ck.rms_norm(x, torch.ones(64), backend=backend).shape == (0, 7, 64)


def test_float64_runs_the_reference(gen):
    x = torch.randn(3, 64, generator=gen, dtype=torch.float64)
    s = torch.randn(64, generator=gen, dtype=torch.float64)
    assert torch.equal(ck.layer_norm_modulate(x, s, s), reference.layer_norm_modulate(x, s, s))


def test_requires_grad_runs_differentiable_reference(gen):
    x = torch.randn(3, 64, generator=gen, requires_grad=True)
    s = torch.randn(64, generator=gen)
    _dispatch._warned.discard("grad:layer_norm_modulate")
    with pytest.warns(RuntimeWarning, match="inference-only"):
        out = ck.layer_norm_modulate(x, s, s)
    out.sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("offset,spread", [(300.0, 1.0), (1000.0, 0.01)])
def test_rows_with_a_large_mean(backend, offset, spread, gen):
    """Row statistics must not cancel catastrophically when the mean dwarfs the spread."""
    x = offset + spread * torch.randn(2, 3, 5, 1000, generator=gen)
    shift, scale, gate = torch.randn(2, 3, 1, 3000, generator=gen).chunk(3, dim=-1)
    got = ck.layer_norm_modulate(x, shift, scale, backend=backend)
    want = reference.layer_norm_modulate(*_as64(x, shift, scale))
    assert_within_reference_error(got, reference.layer_norm_modulate(x, shift, scale), want, torch.float32)
    zero = torch.zeros_like(x)
    got = ck.gated_residual_layer_norm_modulate(x, zero, gate, shift, scale, backend=backend)
    ref = reference.gated_residual_layer_norm_modulate(x, zero, gate, shift, scale)
    want = reference.gated_residual_layer_norm_modulate(*_as64(x, zero, gate, shift, scale))
    assert_within_reference_error(got, ref, want, torch.float32)
