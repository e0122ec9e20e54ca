"""The specification of the adaptive-norm family, in plain PyTorch (differentiable, any float dtype)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cosmos_kernels.fp8 import reference as fp8_reference


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


def layer_norm_modulate_fp8(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                            eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantize_rowwise(layer_norm_modulate(...))`: e4m3 values and `(..., 1)` fp32 scales of the output."""
    return fp8_reference.quantize_rowwise(layer_norm_modulate(x, shift, scale, eps))


def gated_residual_layer_norm_modulate_fp8(
    residual: torch.Tensor,
    x: torch.Tensor,
    gate: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(new_residual, values, scales)`: the gated variant's residual stream and its output quantized row-wise."""
    new_residual, normed = gated_residual_layer_norm_modulate(residual, x, gate, shift, scale, eps)
    return (new_residual, *fp8_reference.quantize_rowwise(normed))
