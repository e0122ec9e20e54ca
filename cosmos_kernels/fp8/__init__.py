"""FP8 (e4m3) for the DiT's token GEMMs: row-wise quantization (of x, or of GELU(x) in the same pass), group-wise
quantization (one scale per row and group of columns), static per-channel weight quantization, the row- and
column-scaled FP8 GEMM, and four GEMMs with their neighbours fused: the packed QKV projection whose epilogue norms
and rotates q and k (and, on the same kernel, a projection whose every head is normed: the cross-attention's
query), the MLP's first layer with the GELU and the group-wise quantization in its epilogue, and the output
projection that adds the gated residual in its epilogue (and can quantize a float operand itself). The adaptive-norm
family's FP8 variants write the quantized rows themselves."""

from cosmos_kernels.fp8.head_norm import fp8_linear_head_norm
from cosmos_kernels.fp8.linear_gelu_quantize import fp8_linear_gelu_quantize
from cosmos_kernels.fp8.ops import (
    fp8_linear,
    fp8_unsupported_reason,
    gelu_quantize_rowwise,
    quantize_rowwise,
    quantize_weight,
)
from cosmos_kernels.fp8.qkv import fp8_linear_qk_norm_rope
from cosmos_kernels.fp8.reference import quantize_groupwise
from cosmos_kernels.fp8.residual import fp8_linear_gated_residual

__all__ = ["fp8_linear", "fp8_linear_gated_residual", "fp8_linear_gelu_quantize", "fp8_linear_head_norm",
           "fp8_linear_qk_norm_rope", "fp8_unsupported_reason", "gelu_quantize_rowwise", "quantize_groupwise",
           "quantize_rowwise", "quantize_weight"]
