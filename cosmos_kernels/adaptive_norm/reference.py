"""The specification of the adaptive-norm family, in plain PyTorch (differentiable, any float dtype)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def layer_norm_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm without affine over the last dim, then adaLN modulation: `LN(x) * (1 + scale) + shift`."""
    return (F.layer_norm(x, (x.shape[-1],), eps=eps) * (1 + scale) + shift).to(x.dtype)


def gated_residual_layer_norm_modulate(
    residual: torch.Tensor,
    x: torch.Tensor,
    gate: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`new_residual = residual + gate * x`, and `layer_norm_modulate(new_residual, shift, scale, eps)`."""
    new_residual = (residual + gate * x).to(residual.dtype)
    return new_residual, layer_norm_modulate(new_residual, shift, scale, eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """`x * rsqrt(mean(x**2, -1) + eps) * weight`, computed in fp32 (float64 stays float64)."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(compute)
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.to(compute)).to(x.dtype)
