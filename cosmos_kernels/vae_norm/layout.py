"""Output layout of the VAE norm ops: channels-last-3d for a channels-last input, contiguous otherwise."""

from __future__ import annotations

import torch

from cosmos_kernels import _alloc


def channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d)


def empty_like_layout(x: torch.Tensor) -> torch.Tensor:
    """A new (NaN-filled under test) tensor of `x`'s shape and dtype, in the layout above."""
    if channels_last(x):
        b, c, t, h, w = x.shape
        return _alloc.empty((b, t, h, w, c), dtype=x.dtype, device=x.device).permute(0, 4, 1, 2, 3)
    return _alloc.empty(x.shape, dtype=x.dtype, device=x.device)


def fake_like_layout(x: torch.Tensor) -> torch.Tensor:
    """`empty_like_layout` without the allocation helper (for fake tensors)."""
    if channels_last(x):
        return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last_3d)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)
