"""The specification of `linear_gelu`, in plain PyTorch (differentiable, any float dtype)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_gelu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`F.gelu(F.linear(x, weight))` with the exact (erf) GELU, as the official `GPT2FeedForward` runs it."""
    return F.gelu(F.linear(x, weight))
