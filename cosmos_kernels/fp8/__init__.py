"""FP8 (e4m3) quantization primitives and the DiT's token GEMMs: row-wise quantization (of x, or of GELU(x) in the
same pass), group-wise quantization (one scale per row and group of columns), static per-channel weight
quantization, the row- and column-scaled FP8 GEMM, and two GEMMs with their neighbours fused: the MLP's first layer
with the GELU and the group-wise quantization in its epilogue, and the output projection that adds the gated
residual in its epilogue (and can quantize a float operand itself). `reference.py` holds the quantization rule that
every FP8 op follows.

The FP8 GEMMs whose epilogue is the attention's (the QKV projection with the per-head q / k norm and RoPE, the
cross-attention query with its head norm) and the attention with an FP8 output live in the attention family
(the `attention` folder), which imports this one; the adaptive-norm family's FP8 variants write the quantized
rows themselves. This family imports neither."""

from cosmos_kernels.fp8.linear_gelu_quantize import fp8_linear_gelu_quantize
from cosmos_kernels.fp8.ops import (
    fp8_linear,
    fp8_unsupported_reason,
    gelu_quantize_rowwise,
    quantize_rowwise,
    quantize_weight,
)
from cosmos_kernels.fp8.reference import quantize_groupwise
from cosmos_kernels.fp8.residual import fp8_linear_gated_residual

__all__ = ["fp8_linear", "fp8_linear_gated_residual", "fp8_linear_gelu_quantize", "fp8_unsupported_reason",
           "gelu_quantize_rowwise", "quantize_groupwise", "quantize_rowwise", "quantize_weight"]
