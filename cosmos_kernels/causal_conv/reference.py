"""The specification of the causal convolution, in plain PyTorch: diffusers' `WanCausalConv3d.forward`."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int, int],
                  padding: tuple[int, int, int], cache: torch.Tensor | None = None) -> torch.Tensor:
    """`conv3d` of `x` (B, C, T, H, W) with `padding = (pt, ph, pw)` applied as `2 * pt` frames before the first
    frame (none after) and `ph`, `pw` on both sides; `cache` (B, C, t, H, W) (the previous chunk's last frames)
    replaces the first `t` of the past zero frames. The padded input is written out, then convolved."""
    pt, ph, pw = padding
    past = 2 * pt
    if cache is not None and past > 0:
        x = torch.cat([cache.to(x.device), x], dim=2)
        past -= cache.shape[2]
    x = F.pad(x, (pw, pw, ph, ph, past, 0))
    return F.conv3d(x, weight, bias, stride)
