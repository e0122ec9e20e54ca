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


def quantize_groupwise(x: torch.Tensor, group: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """`(values, scales)`: the `quantize_rowwise` rule applied to each group of `group` consecutive columns of each
    row (the last group of a row holds what is left, `N % group` columns when that is not 0): contiguous e4m3 values
    of x's shape and fp32 scales of shape `(..., G)`, `G = ceil(N / group)`; column `n` belongs to group
    `n // group`."""
    if isinstance(group, bool) or not isinstance(group, int) or group < 1:
        raise ValueError(f"quantize_groupwise: group must be a positive int, got {group!r}")
    n = x.shape[-1]
    groups = -(-n // group)
    padded = F.pad(x, (0, groups * group - n)) if groups * group != n else x  # zeros: no effect on a group's amax
    values, scales = quantize_rowwise(padded.reshape(*x.shape[:-1], groups, group))
    return values.reshape(*x.shape[:-1], groups * group)[..., :n].contiguous(), scales.squeeze(-1)


def fp8_linear_gelu_quantize(x: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor,
                             weight_scale: torch.Tensor, group: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantize_groupwise(F.gelu((x * x_scale) @ (weight * weight_scale).T), group)`: the MLP's first GEMM on the
    dequantized operands, the exact (erf) GELU of its unrounded product, and the group-wise e4m3 quantization of
    the result (the hidden activation as the second FP8 GEMM takes it).

    `x (..., K)` e4m3 with `x_scale (..., 1)`; `weight (N, K)` e4m3 with `weight_scale` holding N values. Computed in
    fp32 (float64 when either scale is float64: the scales come back float64 too)."""
    compute = torch.float64 if torch.float64 in (x_scale.dtype, weight_scale.dtype) else torch.float32
    a = dequantize(x, x_scale, compute)
    b = dequantize(weight, weight_scale.reshape(-1, 1), compute)
    return quantize_groupwise(F.gelu(a @ b.T), group)


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


def dequantize_groupwise(values: torch.Tensor, scales: torch.Tensor, group: int = 128,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`values (..., K)` times `scales (..., ceil(K / group))` in `dtype`: column k takes its row's scale of group
    `k // group` (the last group may be partial). float64 is exact, as in `dequantize`."""
    k = values.shape[-1]
    per_column = scales.to(dtype).repeat_interleave(group, dim=-1)[..., :k]
    return (values.to(dtype) * per_column).to(dtype)


def fp8_linear_gated_residual(x: torch.Tensor, x_scale: torch.Tensor | None, weight: torch.Tensor,
                              weight_scale: torch.Tensor, residual: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """`residual + gate * (A @ (weight * weight_scale).T)`, computed in fp32 (float64 when residual is float64) and
    rounded once to residual's dtype; a new tensor of residual's shape `(..., N)`.

    A holds x's rows, which are residual's rows in order (`x (..., K)` with as many rows as residual): e4m3 `x` with
    `x_scale (..., 1)` (one scale per row) or `(..., ceil(K / 128))` (one per row and group of 128 columns), or a
    float `x` with `x_scale` None, quantized first by `quantize_rowwise`. `gate` broadcasts against residual."""
    if x_scale is None:
        x, x_scale = quantize_rowwise(x)
    compute = torch.float64 if residual.dtype == torch.float64 else torch.float32
    k = x.shape[-1]
    if x_scale.shape[-1] == 1:
        a = dequantize(x, x_scale, compute)
    else:
        a = dequantize_groupwise(x, x_scale, 128, compute)
    b = dequantize(weight, weight_scale.reshape(-1, 1), compute)
    product = (a.reshape(-1, k) @ b.T).view(residual.shape)
    return (residual.to(compute) + gate.to(compute) * product).to(residual.dtype)
