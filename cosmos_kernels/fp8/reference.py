"""The specification of the FP8 family, in plain PyTorch: row-wise e4m3 quantization and the scaled GEMM.

A row `x` is stored as e4m3 values `q` and one fp32 scale `s`, with `x ~= q * s`:
`s = max(amax(|x|) / 448, 2^-126)` (448 is e4m3's largest finite value) and `q = e4m3(clamp(x / s, -448, 448))`,
rounded to nearest, ties to even, computed in fp32 (float64 stays float64). The floor 2^-126, the smallest
normal fp32 number, guards all-zero rows (their values are 0, their scale 2^-126) and keeps every scale a normal
number that no device flushes to zero; it only acts on rows whose largest magnitude is below 448 * 2^-126.
Non-finite inputs give a non-finite scale: the row is NaN after dequantization, as it was before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cosmos_kernels.attention.reference import qk_norm_rope

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
SCALE_FLOOR = 2.0 ** -126


def quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(values, scales)`: contiguous e4m3 values of x's shape, fp32 scales of shape `(..., 1)`, one per row."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(compute)
    amax = xf.abs().amax(dim=-1, keepdim=True) if x.shape[-1] else xf.new_zeros((*x.shape[:-1], 1))
    scales = (amax / E4M3_MAX).clamp_min(SCALE_FLOOR)
    values = (xf / scales).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3).contiguous()  # row-major, as the GEMM takes it
    return values, scales.to(torch.float32) if compute == torch.float32 else scales


def gelu_quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantize_rowwise(F.gelu(x))`: the exact (erf) GELU, stored in x's dtype as `F.gelu` stores it, quantized
    row-wise (the MLP's hidden activation on its way to the second FP8 GEMM)."""
    return quantize_rowwise(F.gelu(x))


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(values, scales)` of an `nn.Linear` weight `(out_features, in_features)`: one static fp32 scale per output
    channel, shape `(out_features, 1)`, by the same rule as `quantize_rowwise` (run once, when weights load)."""
    values, scales = quantize_rowwise(weight.detach())
    return values, scales.to(torch.float32)


def dequantize(values: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`values * scales` in `dtype` (float64 is exact: e4m3 times fp32 fits its mantissa)."""
    return (values.to(dtype) * scales.to(dtype)).to(dtype)


def fp8_linear(x: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
               bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """`(x * x_scale) @ (weight * weight_scale).T + bias` on the dequantized operands, rounded once to `out_dtype`.

    `x (..., K)` e4m3 with `x_scale (..., 1)`; `weight (N, K)` e4m3 with `weight_scale` holding N values (shape
    `(N,)`, `(N, 1)` or `(1, N)`). Computed in fp32 (float64 when `out_dtype` is float64)."""
    compute = torch.float64 if out_dtype == torch.float64 else torch.float32
    a = dequantize(x, x_scale, compute)
    b = dequantize(weight, weight_scale.reshape(-1, 1), compute)
    out = a @ b.T
    if bias is not None:
        out = out + bias.to(compute)
    return out.to(out_dtype)


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
