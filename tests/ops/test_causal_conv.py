"""The Wan VAE's causal convolution (oneDNN call, spatial padding inside the conv) against its float64 reference."""

import pytest
import torch

from cosmos_kernels.causal_conv import causal_conv3d, conv3d, reference
from tests.numerics import max_abs_error

# x shape, weight shape, stride, padding, cached frames (None: no cache)
CASES = [
    ((1, 3, 1, 17, 13), (8, 3, 3, 3, 3), (1, 1, 1), (1, 1, 1), None),  # conv_in on a first frame, odd H, W
    ((1, 12, 4, 9, 11), (20, 12, 3, 3, 3), (1, 1, 1), (1, 1, 1), 2),  # a later chunk with a 2-frame cache
    ((2, 12, 1, 9, 7), (12, 12, 3, 3, 3), (1, 1, 1), (1, 1, 1), 1),  # T = 1 with a 1-frame cache, batch 2
    ((1, 10, 5, 6, 7), (10, 10, 3, 1, 1), (2, 1, 1), (0, 0, 0), None),  # the time-downsampling conv
    ((2, 10, 3, 5, 5), (14, 10, 1, 1, 1), (1, 1, 1), (0, 0, 0), None),  # a shortcut
    ((1, 64, 3, 10, 10), (64, 64, 3, 3, 3), (1, 1, 1), (1, 1, 1), None),  # under PyTorch's oneDNN size test
]


def _inputs(gen, xs, ws, cached, channels_last=False):
    x = torch.randn(xs, generator=gen)
    if channels_last:
        x = x.to(memory_format=torch.channels_last_3d)
    w = torch.randn(ws, generator=gen) / (ws[1] * ws[2] * ws[3] * ws[4]) ** 0.5
    b = torch.randn(ws[0], generator=gen)
    cache = torch.randn(xs[0], xs[1], cached, *xs[3:], generator=gen) if cached else None
    return x, w, b, cache


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("xs,ws,stride,padding,cached", CASES)
def test_causal_conv3d_matches_reference(xs, ws, stride, padding, cached, channels_last, gen):
    x, w, b, cache = _inputs(gen, xs, ws, cached, channels_last)
    with torch.no_grad():
        got = causal_conv3d(x, w, b, stride, padding, cache)
        ref = reference.causal_conv3d(x, w, b, stride, padding, cache)
        want = reference.causal_conv3d(x.double(), w.double(), b.double(), stride, padding,
                                       None if cache is None else cache.double())
    assert got.shape == want.shape and got.dtype == torch.float32
    # oneDNN and the slow path sum the 27 * C products in different orders: both within fp32 rounding of the truth
    err, ref_err = max_abs_error(got, want), max_abs_error(ref, want)
    assert err <= 4 * ref_err + 1e-6 * want.abs().max().item(), (err, ref_err)


def test_strided_input_view(gen):
    base = torch.randn(1, 24, 4, 9, 11, generator=gen)
    x = base[:, ::2]  # every other channel: not contiguous
    w = torch.randn(8, 12, 3, 3, 3, generator=gen) * 0.1
    with torch.no_grad():
        got = causal_conv3d(x, w, None, (1, 1, 1), (1, 1, 1))
        want = reference.causal_conv3d(x.double(), w.double(), None, (1, 1, 1), (1, 1, 1))
    assert max_abs_error(got, want) < 1e-5


def test_other_dtypes_take_pytorchs_path(gen):
    x = torch.randn(1, 4, 3, 5, 5, generator=gen, dtype=torch.float64)
    w = torch.randn(6, 4, 3, 3, 3, generator=gen, dtype=torch.float64)
    got = conv3d(x, w, None, (1, 1, 1), (0, 1, 1))
    assert torch.equal(got, torch.nn.functional.conv3d(x, w, None, 1, (0, 1, 1)))


def test_gradients_flow_through_pytorchs_path(gen):
    x = torch.randn(1, 4, 2, 5, 5, generator=gen, requires_grad=True)
    w = torch.randn(6, 4, 3, 3, 3, generator=gen)
    causal_conv3d(x, w, None, (1, 1, 1), (1, 1, 1)).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="x must be"):
        causal_conv3d(torch.zeros(3, 4, 5, 5), torch.zeros(4, 3, 3, 3, 3), None, (1, 1, 1), (1, 1, 1))
    with pytest.raises(ValueError, match="weight must be"):
        causal_conv3d(torch.zeros(1, 3, 4, 5, 5), torch.zeros(4, 5, 3, 3, 3), None, (1, 1, 1), (1, 1, 1))


@pytest.mark.parametrize("xs,ws,stride,padding,cached", [c for c in CASES if c[1][3] > 1])
def test_channels_last_weight(xs, ws, stride, padding, cached, gen):
    """A channels-last-3d weight runs oneDNN channels-last: the output is channels-last, the values the same sums."""
    from cosmos_kernels.causal_conv import channels_last_weight, runs_on_onednn

    x, w, b, cache = _inputs(gen, xs, ws, cached)
    wc = channels_last_weight(w)
    assert wc.is_contiguous(memory_format=torch.channels_last_3d) and torch.equal(wc, w)
    with torch.no_grad():
        got = causal_conv3d(x, wc, b, stride, padding, cache)
        ref = reference.causal_conv3d(x, w, b, stride, padding, cache)
        want = reference.causal_conv3d(x.double(), w.double(), b.double(), stride, padding,
                                       None if cache is None else cache.double())
    if runs_on_onednn(x, wc):
        assert got.is_contiguous(memory_format=torch.channels_last_3d)
    err, ref_err = max_abs_error(got, want), max_abs_error(ref, want)
    assert err <= 4 * ref_err + 1e-6 * want.abs().max().item(), (err, ref_err)
