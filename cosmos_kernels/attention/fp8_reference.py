"""The specification of the attention family's FP8 ops, in plain PyTorch: the q / k / v projections as FP8 GEMMs
with the attention's per-head RMSNorm (and RoPE) applied to their unrounded product, and the attention whose
output is quantized per (token, head). The quantization rule and the scaled GEMM are the FP8 family's
(`cosmos_kernels.fp8.reference`); the norm, RoPE and attention are this family's (`attention.reference`).
"""

from __future__ import annotations

import torch

from cosmos_kernels.attention.reference import attention, qk_norm_rope
from cosmos_kernels.fp8.reference import dequantize, quantize_rowwise

__all__ = ["attention_fp8", "fp8_linear_head_norm", "fp8_linear_qk_norm_rope", "head_rms_norm"]


def fp8_linear_qk_norm_rope(x: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                            q_norm_weight: torch.Tensor | None, k_norm_weight: torch.Tensor | None,
                            cos: torch.Tensor | None, sin: torch.Tensor | None, num_heads: int, eps: float = 1e-6,
                            out_dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(q, k, v)`, each `(B, L, num_heads, D)`: the packed QKV projection `fp8_linear(x, ..., weight, ...)` of
    `x (B, L, K)` on the dequantized operands, not rounded, split as `[q; k; v]` heads of `D = N / (3 * num_heads)`;
    q and k then go through `attention.reference.qk_norm_rope` (RMSNorm per head with its weight, skipped for a None
    weight; rotate-half RoPE with the `(L, D)` tables, skipped without them), and all three are rounded once to
    `out_dtype`. Computed in fp32 (float64 when `out_dtype` is float64)."""
    compute = torch.float64 if out_dtype == torch.float64 else torch.float32
    y = dequantize(x, x_scale, compute) @ dequantize(weight, weight_scale.reshape(-1, 1), compute).T
    q, k, v = y.unflatten(-1, (3, num_heads, -1)).unbind(-3)
    q, k = qk_norm_rope(q, k, q_norm_weight, k_norm_weight, cos, sin, eps)
    return q.to(out_dtype), k.to(out_dtype), v.to(out_dtype)


def head_rms_norm(y: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """`y * rsqrt(mean(y^2) + eps) * weight` over the last dim (the head), computed and returned in fp32 (float64
    stays float64), not rounded: the per-head RMSNorm of `attention.reference.qk_norm_rope`."""
    compute = torch.float64 if y.dtype == torch.float64 else torch.float32
    yf = y.to(compute)
    return yf * torch.rsqrt(yf.pow(2).mean(-1, keepdim=True) + eps) * weight.to(compute)


def fp8_linear_head_norm(x: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                         norm_weight: torch.Tensor, num_heads: int, eps: float = 1e-6,
                         out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """`(B, L, num_heads, D)`: the projection `fp8_linear(x, ..., weight, ...)` of `x (B, L, K)` on the dequantized
    operands, not rounded, split in heads of `D = N / num_heads`, each normed by `head_rms_norm` with `norm_weight
    (D,)`, rounded once to `out_dtype`. Computed in fp32 (float64 when `out_dtype` is float64)."""
    compute = torch.float64 if out_dtype == torch.float64 else torch.float32
    y = dequantize(x, x_scale, compute) @ dequantize(weight, weight_scale.reshape(-1, 1), compute).T
    return head_rms_norm(y.unflatten(-1, (num_heads, -1)), norm_weight, eps).to(out_dtype)


def attention_fp8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """`(values, scales)`: `quantize_rowwise` applied to each head's row of `attention.reference.attention(q, k, v,
    **kwargs)` (the same keywords: scale, norm weights, RoPE tables, norm_eps, last_key_repeats), e4m3 values of q's
    shape `(B, Lq, heads, head_dim)` and fp32 scales `(B, Lq, heads, 1)`, one per (token, head). The attention output
    is quantized as computed, in fp32 (float64 for float64 inputs), NOT rounded to q's dtype first. For head_dim 128,
    `(values.flatten(2), scales.flatten(2))` is the `(B, Lq, heads * 128)` operand with one scale per row and group
    of 128 columns that `fp8_linear_gated_residual` takes."""
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    return quantize_rowwise(attention(q, k, v, out_dtype=compute, **kwargs))
