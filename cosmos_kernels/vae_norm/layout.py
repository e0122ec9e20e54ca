"""Output layout of the VAE norm ops: channels-last-3d for a channels-last input, contiguous otherwise."""

from __future__ import annotations

import torch

from cosmos_kernels import _alloc


def channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d)


def empty_like_layout(x: torch.Tensor, extra_frames: int = 0) -> torch.Tensor:
    """A new (NaN-filled under test) tensor of `x`'s shape (`extra_frames` more along T) and dtype, in the layout
    above."""
    b, c, t, h, w = x.shape
    t += extra_frames
    if channels_last(x):
        return _alloc.empty((b, t, h, w, c), dtype=x.dtype, device=x.device).permute(0, 4, 1, 2, 3)
    return _alloc.empty((b, c, t, h, w), dtype=x.dtype, device=x.device)


def fake_like_layout(x: torch.Tensor, extra_frames: int = 0) -> torch.Tensor:
    """`empty_like_layout` without the allocation helper (for fake tensors)."""
    b, c, t, h, w = x.shape
    shape = (b, c, t + extra_frames, h, w)
    if channels_last(x):
        return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last_3d)
    return torch.empty(shape, dtype=x.dtype, device=x.device)


def fill_past(window: torch.Tensor, past: torch.Tensor | None, past_frames: int) -> torch.Tensor:
    """Write the first `past_frames` frames of `window` (zeros, then `past`); returns the view after them."""
    have = 0 if past is None else past.shape[2]
    if past_frames > have:
        window[:, :, : past_frames - have].zero_()
    if have:
        window[:, :, past_frames - have : past_frames].copy_(past)
    return window[:, :, past_frames:]
