"""rope_3d_tables against an independent rebuild of the official VideoRopePosition3DEmb construction."""

import math

import pytest
import torch
from einops import rearrange, repeat

import cosmos_kernels as ck


def official_angles(T, H, W, head_dim, h_ratio, w_ratio, t_ratio, buffer_dtype=torch.float32):
    """The official module, rebuilt from its description: buffers `seq`, `dim_spatial_range` and
    `dim_temporal_range` (held in `buffer_dtype`), NTK factors, `theta ** range.float()`, einops layout."""
    max_len = 128
    dim_h = head_dim // 6 * 2
    dim_w = dim_h
    dim_t = head_dim - 2 * dim_h
    seq = torch.arange(max_len, dtype=torch.float).to(buffer_dtype)
    spatial = (torch.arange(0, dim_h, 2)[: dim_h // 2].float() / dim_h).to(buffer_dtype)
    temporal = (torch.arange(0, dim_t, 2)[: dim_t // 2].float() / dim_t).to(buffer_dtype)
    h_theta = 10000.0 * h_ratio ** (dim_h / (dim_h - 2))
    w_theta = 10000.0 * w_ratio ** (dim_w / (dim_w - 2))
    t_theta = 10000.0 * t_ratio ** (dim_t / (dim_t - 2))
    h_freqs = 1.0 / (h_theta ** spatial.float())
    w_freqs = 1.0 / (w_theta ** spatial.float())
    t_freqs = 1.0 / (t_theta ** temporal.float())
    emb_h = torch.outer(seq[:H], h_freqs)
    emb_w = torch.outer(seq[:W], w_freqs)
    emb_t = torch.outer(seq[:T], t_freqs)
    emb = torch.cat([repeat(emb_t, "t d -> t h w d", h=H, w=W), repeat(emb_h, "h d -> t h w d", t=T, w=W),
                     repeat(emb_w, "w d -> t h w d", t=T, h=H)] * 2, dim=-1)
    return rearrange(emb, "t h w d -> (t h w) d").float()


@pytest.mark.parametrize("ranges_bf16", [False, True])
def test_matches_official_construction_libero(ranges_bf16):
    """LIBERO grid T=9, H=W=14, head_dim 128, ratios h / w / t = 3 / 3 / 1 (Cosmos-Predict2 2B)."""
    cos, sin = ck.rope_3d_tables(9, 14, 14, 128, h_extrapolation_ratio=3.0, w_extrapolation_ratio=3.0,
                                 t_extrapolation_ratio=1.0, ranges_bf16=ranges_bf16)
    angles = official_angles(9, 14, 14, 128, 3.0, 3.0, 1.0, torch.bfloat16 if ranges_bf16 else torch.float32)
    assert cos.shape == sin.shape == (9 * 14 * 14, 128) and cos.dtype == sin.dtype == torch.float32
    torch.testing.assert_close(cos, angles.cos(), rtol=0, atol=0)
    torch.testing.assert_close(sin, angles.sin(), rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(11, 14, 14, 128), (3, 5, 7, 64), (2, 3, 4, 96)])
def test_matches_official_construction_other_grids(shape):
    cos, sin = ck.rope_3d_tables(*shape, h_extrapolation_ratio=2.0, w_extrapolation_ratio=1.5,
                                 t_extrapolation_ratio=1.25)
    angles = official_angles(*shape, 2.0, 1.5, 1.25)
    torch.testing.assert_close(cos, angles.cos(), rtol=0, atol=0)
    torch.testing.assert_close(sin, angles.sin(), rtol=0, atol=0)


def test_band_layout_and_ntk_theta():
    """[t(22) h(21) w(21) | t h w]: each band depends only on its axis; theta_h = 10000 * 3^(42/40) ~ 31694."""
    T, H, W = 9, 14, 14
    cos, sin = ck.rope_3d_tables(T, H, W, 128, h_extrapolation_ratio=3.0, w_extrapolation_ratio=3.0)
    angle = torch.atan2(sin, cos).view(T, H, W, 128).double()
    torch.testing.assert_close(cos[:, :64], cos[:, 64:], rtol=0, atol=0)
    # column 0: frequency 1 of the temporal band (position t); columns 22 and 43: the h and w bands
    t, h, w = torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij")
    wrap = lambda a: torch.remainder(a + math.pi, 2 * math.pi) - math.pi  # noqa: E731
    for col, pos in ((0, t), (22, h), (43, w)):
        torch.testing.assert_close(angle[..., col], wrap(pos.double()), atol=1e-5, rtol=0)
    theta_h = 10000.0 * 3.0 ** (42 / 40)
    assert abs(theta_h - 31694) < 1
    # second frequency of the h band: theta_h ** (-2 / 42), seen at h = 1
    freq = angle[0, 1, 0, 23].item()
    assert freq == pytest.approx(theta_h ** (-2 / 42), rel=1e-6)
    assert angle[0, 0, 1, 23].item() == 0.0 and angle[1, 0, 0, 23].item() == 0.0
    # the temporal band keeps base 10000 with t ratio 1: its second frequency is 10000 ** (-2 / 44)
    assert angle[1, 0, 0, 1].item() == pytest.approx(10000.0 ** (-2 / 44), rel=1e-6)


def test_bf16_ranges_change_angles_slightly():
    """Rounding the exponents to bf16 moves some frequencies by up to ~2 %; at the LIBERO grid's largest
    position (13) the angles move by less than 0.02 rad, and the zero frequency exponent not at all."""
    kw = dict(h_extrapolation_ratio=3.0, w_extrapolation_ratio=3.0)
    exact = torch.atan2(*reversed(ck.rope_3d_tables(9, 14, 14, 128, **kw)))
    rounded = torch.atan2(*reversed(ck.rope_3d_tables(9, 14, 14, 128, ranges_bf16=True, **kw)))
    diff = (exact - rounded).abs()
    assert 1e-3 < diff.max().item() < 2e-2
    assert diff[:, [0, 22, 43]].max().item() == 0.0


def test_device_argument_and_default_ratios():
    cos, sin = ck.rope_3d_tables(1, 1, 5, 12, device="cpu")
    assert cos.device.type == "cpu" and cos.shape == (5, 12)
    # head_dim 12: bands 4 / 4 / 4, base 10000 for all with ratios 1
    angles = official_angles(1, 1, 5, 12, 1.0, 1.0, 1.0)
    torch.testing.assert_close(cos, angles.cos(), rtol=0, atol=0)


@pytest.mark.parametrize("args,exc", [
    ((0, 14, 14, 128), ValueError),
    ((9, 14, 14, 127), ValueError),
    ((9, 14, 14, 10), ValueError),
    ((9, 14.0, 14, 128), TypeError),
])
def test_bad_arguments(args, exc):
    with pytest.raises(exc, match="rope_3d_tables"):
        ck.rope_3d_tables(*args)
