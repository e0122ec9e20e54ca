"""The VAE norm family against a float64 evaluation of its reference and against diffusers' `WanRMS_norm` + SiLU."""

import pytest
import torch

from cosmos_kernels.vae_norm import (
    causal_channel_rms_norm_silu,
    channel_rms_norm_silu,
    reference,
    residual_causal_channel_rms_norm_silu,
    residual_channel_rms_norm_silu,
)
from tests.numerics import assert_within_reference_error, cpu_backends

BACKENDS = cpu_backends()
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(1, 96, 1, 8, 8), (2, 5, 1, 3, 7), (1, 100, 3, 5, 9), (2, 12, 4, 1, 1), (1, 1100, 2, 3, 3)]


def _inputs(gen, shape, dtype, layout):
    x = (torch.randn(shape, generator=gen) * 2 + 0.3).to(dtype)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last_3d)
    elif layout == "strided":  # every other W column of a wider tensor
        x = torch.randn(*shape[:-1], 2 * shape[-1], generator=gen).to(dtype)[..., ::2]
    c = shape[1]
    return x, (torch.rand(c, generator=gen) + 0.5).to(dtype), torch.randn(c, generator=gen).to(dtype)


def _factor(shape):
    # Past 1024 channels the kernels sum the squares tile by tile, the reference in one reduction: both norms carry
    # about sqrt(C) * eps of rounding, in different places, so one case's reference can be luckier than twice ours.
    return 2.0 if shape[1] <= 1024 else 3.0


def _skip_large(backend, shape):
    if backend == "triton" and torch.Size(shape).numel() > 20000:
        pytest.skip("large shape: covered by the cpu backend")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_channel_rms_norm_silu(backend, dtype, shape, layout, with_bias, gen):
    _skip_large(backend, shape)
    x, g, b = _inputs(gen, shape, dtype, layout)
    b = b if with_bias else None
    got = channel_rms_norm_silu(x, g, b, backend=backend)
    assert got.shape == x.shape and got.dtype == dtype
    if layout == "channels_last" and backend != "reference":
        assert got.is_contiguous(memory_format=torch.channels_last_3d)
    want = reference.channel_rms_norm_silu(x.double(), g.double(), None if b is None else b.double())
    assert_within_reference_error(got, reference.channel_rms_norm_silu(x, g, b), want, dtype, factor=_factor(shape))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_residual_channel_rms_norm_silu(backend, dtype, shape, layout, gen):
    _skip_large(backend, shape)
    x, g, b = _inputs(gen, shape, dtype, layout)
    r, _, _ = _inputs(gen, shape, dtype, "strided")
    s, got = residual_channel_rms_norm_silu(x, r, g, b, backend=backend)
    exact = (x.double() + r.double())
    if backend == "triton" and dtype == torch.bfloat16:  # the interpreter rounds bf16 its own way: within one ulp
        assert ((s.double() - exact).abs() <= torch.finfo(dtype).eps * exact.abs()).all()
    else:
        assert torch.equal(s, (x + r).to(dtype))
    want = reference.channel_rms_norm_silu(s.double(), g.double(), b.double())
    ref = reference.residual_channel_rms_norm_silu(x, r, g, b)
    assert_within_reference_error(got, ref[1], want, dtype, factor=_factor(shape))


def test_matches_diffusers_module(gen):
    WanRMS_norm = pytest.importorskip("diffusers.models.autoencoders.autoencoder_kl_wan").WanRMS_norm

    norm = WanRMS_norm(24, images=False)
    norm.gamma.data.uniform_(0.5, 1.5, generator=gen)
    x = torch.randn(2, 24, 3, 5, 7, generator=gen)
    with torch.no_grad():
        want = torch.nn.functional.silu(norm(x.double().float()).double())
        got = channel_rms_norm_silu(x, norm.gamma.reshape(-1))
    assert (got.double() - want).abs().max().item() < 1e-5


def test_zero_input_is_zero():
    x = torch.zeros(1, 8, 1, 2, 3)
    assert torch.equal(channel_rms_norm_silu(x, torch.ones(8)), x)


def test_grad_runs_the_reference(gen):
    x = torch.randn(1, 4, 1, 2, 2, generator=gen, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="grad"):
        channel_rms_norm_silu(x, torch.ones(4)).sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("suffix", ["", "_triton"])
def test_opcheck(suffix, gen):
    if suffix and "triton" not in BACKENDS:
        pytest.skip("Triton interpreter not available")
    ops = torch.ops.cosmos_kernels
    x = torch.randn(2, 6, 2, 3, 5, generator=gen)
    g, b = torch.rand(6, generator=gen) + 0.5, torch.randn(6, generator=gen)
    torch.library.opcheck(getattr(ops, "channel_rms_norm_silu" + suffix).default, (x, g, b, 1e-12))
    torch.library.opcheck(getattr(ops, "channel_rms_norm_silu" + suffix).default,
                          (x.to(memory_format=torch.channels_last_3d), g, None, 1e-12))
    torch.library.opcheck(getattr(ops, "residual_channel_rms_norm_silu" + suffix).default,
                          (x, x.clone(), g, b, 1e-12))


def test_compiles_without_graph_break(gen):
    x = torch.randn(1, 8, 2, 3, 5, generator=gen)
    g = torch.rand(8, generator=gen) + 0.5
    fn = torch.compile(lambda t: channel_rms_norm_silu(t, g, backend="cpu") * 2, fullgraph=True, backend="eager")
    assert torch.allclose(fn(x), channel_rms_norm_silu(x, g, backend="cpu") * 2)


@pytest.mark.parametrize("call,match,exc", [
    (lambda: channel_rms_norm_silu(torch.zeros(2, 3, 4, 5), torch.ones(3)), "x must be", ValueError),
    (lambda: channel_rms_norm_silu(torch.zeros(1, 3, 1, 2, 2), torch.ones(4)), "gamma must have shape", ValueError),
    (lambda: channel_rms_norm_silu(torch.zeros(1, 3, 1, 2, 2), torch.ones(3), torch.ones(2)), "bias", ValueError),
    (lambda: channel_rms_norm_silu(torch.zeros(1, 3, 1, 2, 2, dtype=torch.int32), torch.ones(3)), "x must be",
     TypeError),
    (lambda: residual_channel_rms_norm_silu(torch.zeros(1, 3, 1, 2, 2), torch.zeros(1, 3, 1, 2, 3), torch.ones(3)),
     "residual must have", ValueError),
    (lambda: residual_channel_rms_norm_silu(torch.zeros(1, 3, 1, 2, 2), torch.zeros(1, 3, 1, 2, 2).half(),
                                            torch.ones(3)), "residual has dtype", TypeError),
    (lambda: channel_rms_norm_silu(torch.zeros(1, 3, 1, 2, 2), torch.ones(3), backend="cuda"), "backend", ValueError),
])
def test_bad_inputs_name_the_argument(call, match, exc):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 96, 1, 8, 8), (2, 5, 4, 3, 7), (1, 100, 3, 5, 9)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("have", [None, 1, 2])
def test_causal_channel_rms_norm_silu(backend, dtype, shape, layout, have, gen):
    x, g, b = _inputs(gen, shape, dtype, layout)
    past = None if have is None else torch.randn(*shape[:2], have, *shape[3:], generator=gen).to(dtype)
    if past is not None and layout == "strided":
        past = torch.randn(*shape[:2], have, shape[3], 2 * shape[4], generator=gen).to(dtype)[..., ::2]
    window = causal_channel_rms_norm_silu(x, g, b, past=past, past_frames=2, backend=backend)
    t = shape[2]
    assert window.shape == (shape[0], shape[1], 2 + t, *shape[3:]) and window.dtype == dtype
    if layout == "channels_last" and backend != "reference":
        assert window.is_contiguous(memory_format=torch.channels_last_3d)
    expected_past = torch.zeros_like(window[:, :, :2])
    if past is not None:
        expected_past[:, :, 2 - have:] = past
    assert torch.equal(window[:, :, :2], expected_past)  # copied, not computed
    want = reference.channel_rms_norm_silu(x.double(), g.double(), b.double())
    assert_within_reference_error(window[:, :, 2:], reference.channel_rms_norm_silu(x, g, b), want, dtype)
    assert torch.equal(reference.causal_channel_rms_norm_silu(x, g, b, past=past, past_frames=2)[:, :, :2],
                       expected_past)


def test_causal_variant_checks_and_opcheck(gen):
    x, g, b = _inputs(gen, (2, 6, 3, 4, 5), torch.float32, "contiguous")
    with pytest.raises(ValueError, match="past_frames"):
        causal_channel_rms_norm_silu(x, g, b, past_frames=-1)
    with pytest.raises(ValueError, match="past must be"):
        causal_channel_rms_norm_silu(x, g, b, past=x[:, :3], past_frames=2)
    with pytest.raises(ValueError, match="more than past_frames"):
        causal_channel_rms_norm_silu(x, g, b, past=x, past_frames=2)
    with pytest.raises(TypeError, match="past has dtype"):
        causal_channel_rms_norm_silu(x, g, b, past=x[:, :, :1].double(), past_frames=2)
    for suffix in ("", "_triton"):
        if suffix and "triton" not in BACKENDS:
            continue
        op = getattr(torch.ops.cosmos_kernels, "causal_channel_rms_norm_silu" + suffix).default
        torch.library.opcheck(op, (x, g, b, 1e-12, x[:, :, :1].clone(), 2))
        torch.library.opcheck(op, (x, g, None, 1e-12, None, 2))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 96, 1, 8, 8), (2, 5, 4, 3, 7), (1, 1100, 2, 3, 3)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("have", [None, 1, 2])
def test_residual_causal_channel_rms_norm_silu(backend, dtype, shape, layout, have, gen):
    x, g, b = _inputs(gen, shape, dtype, layout)
    r, _, _ = _inputs(gen, shape, dtype, "strided" if layout != "strided" else "contiguous")
    past = None if have is None else torch.randn(*shape[:2], have, *shape[3:], generator=gen).to(dtype)
    s, window = residual_causal_channel_rms_norm_silu(x, r, g, b, past=past, past_frames=2, backend=backend)
    assert s.shape == x.shape and window.shape == (shape[0], shape[1], 2 + shape[2], *shape[3:])
    if layout == "channels_last" and backend != "reference":
        assert s.is_contiguous(memory_format=torch.channels_last_3d)
        assert window.is_contiguous(memory_format=torch.channels_last_3d)
    exact = x.double() + r.double()
    if backend == "triton" and dtype == torch.bfloat16:  # the interpreter rounds bf16 its own way: within one ulp
        assert ((s.double() - exact).abs() <= torch.finfo(dtype).eps * exact.abs()).all()
    else:
        assert torch.equal(s, (x + r).to(dtype))
    expected_past = torch.zeros_like(window[:, :, :2])
    if past is not None:
        expected_past[:, :, 2 - have:] = past
    assert torch.equal(window[:, :, :2], expected_past)
    want = reference.channel_rms_norm_silu(s.double(), g.double(), b.double())
    ref_s, ref_window = reference.residual_causal_channel_rms_norm_silu(x, r, g, b, past=past, past_frames=2)
    assert torch.equal(ref_window[:, :, :2], expected_past)
    # past 1024 channels: `_factor`'s tile-by-tile sums, here with a few ulp of the luckier reference's error
    assert_within_reference_error(window[:, :, 2:], reference.channel_rms_norm_silu(s, g, b), want, dtype,
                                  factor=2.0 if shape[1] <= 1024 else 4.0)


def test_residual_causal_variant_checks_and_opcheck(gen):
    x, g, b = _inputs(gen, (2, 6, 3, 4, 5), torch.float32, "contiguous")
    with pytest.raises(ValueError, match="residual must have"):
        residual_causal_channel_rms_norm_silu(x, x[:, :, :1], g, b, past_frames=2)
    with pytest.raises(TypeError, match="residual has dtype"):
        residual_causal_channel_rms_norm_silu(x, x.double(), g, b, past_frames=2)
    with pytest.raises(ValueError, match="past must be"):
        residual_causal_channel_rms_norm_silu(x, x, g, b, past=x[:, :3], past_frames=2)
    with pytest.raises(ValueError, match="past_frames"):
        residual_causal_channel_rms_norm_silu(x, x, g, b, past_frames=-1)
    for suffix in ("", "_triton"):
        if suffix and "triton" not in BACKENDS:
            continue
        op = getattr(torch.ops.cosmos_kernels, "residual_causal_channel_rms_norm_silu" + suffix).default
        torch.library.opcheck(op, (x, x.clone(), g, b, 1e-12, x[:, :, :1].clone(), 2))
        torch.library.opcheck(op, (x.to(memory_format=torch.channels_last_3d), x.clone(), g, None, 1e-12, None, 2))
