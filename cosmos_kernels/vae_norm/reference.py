"""The specification of the Wan VAE norm family, in plain PyTorch (differentiable, any float dtype).

`WanRMS_norm` (channel-first) scales `x` (B, C, T, H, W) by `sqrt(C) / max(||x||_2 over C, eps)` (`F.normalize`'s
eps = 1e-12) and applies `gamma` and `bias` per channel; the VAE's residual blocks and heads follow it with SiLU.
Computed in fp32 (float64 stays float64) and rounded once to `x`'s dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-12


def channel_rms_norm_silu(x: torch.Tensor, gamma: torch.Tensor, bias: torch.Tensor | None = None,
                          eps: float = EPS) -> torch.Tensor:
    """`silu(x / max(||x||_2 over dim 1, eps) * sqrt(C) * gamma + bias)`; `gamma`, `bias` are `(C,)`."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    c = x.shape[1]
    per_channel = (1, c) + (1,) * (x.dim() - 2)
    xf = x.to(compute)
    y = F.normalize(xf, dim=1, eps=eps) * c**0.5 * gamma.to(compute).view(per_channel)
    if bias is not None:
        y = y + bias.to(compute).view(per_channel)
    return F.silu(y).to(x.dtype)


def residual_channel_rms_norm_silu(x: torch.Tensor, residual: torch.Tensor, gamma: torch.Tensor,
                                   bias: torch.Tensor | None = None,
                                   eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """`s = x + residual` (rounded to `x`'s dtype) and `channel_rms_norm_silu(s, gamma, bias, eps)`."""
    s = (x + residual).to(x.dtype)
    return s, channel_rms_norm_silu(s, gamma, bias, eps)


def causal_channel_rms_norm_silu(x: torch.Tensor, gamma: torch.Tensor, bias: torch.Tensor | None = None,
                                 eps: float = EPS, past: torch.Tensor | None = None,
                                 past_frames: int = 0) -> torch.Tensor:
    """The time window a causal conv reads: `past_frames` frames (zeros, then the `past` frames (B, C, t, H, W),
    t <= past_frames, last) followed by `channel_rms_norm_silu(x, gamma, bias, eps)`, along dim 2."""
    normed = channel_rms_norm_silu(x, gamma, bias, eps)
    b, c, _, h, w = x.shape
    have = 0 if past is None else past.shape[2]
    parts = [normed.new_zeros((b, c, past_frames - have, h, w))]
    if past is not None:
        parts.append(past.to(x.dtype))
    return torch.cat([*parts, normed], dim=2)


def residual_causal_channel_rms_norm_silu(x: torch.Tensor, residual: torch.Tensor, gamma: torch.Tensor,
                                          bias: torch.Tensor | None = None, eps: float = EPS,
                                          past: torch.Tensor | None = None,
                                          past_frames: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`s = x + residual` (rounded to `x`'s dtype) and `causal_channel_rms_norm_silu(s, gamma, bias, eps, past,
    past_frames)`."""
    s = (x + residual).to(x.dtype)
    return s, causal_channel_rms_norm_silu(s, gamma, bias, eps, past, past_frames)
