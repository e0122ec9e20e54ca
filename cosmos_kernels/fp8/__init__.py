"""FP8 (e4m3) for the DiT's token GEMMs: row-wise quantization (of x, or of GELU(x) in the same pass), static
per-channel weight quantization, and the row- and column-scaled FP8 GEMM. The adaptive-norm family's FP8 variants write
the quantized rows themselves. `fp8_linear_gated_residual` is the output projection whose epilogue adds the gated
residual (and whose prologue can quantize a float operand itself)."""

from cosmos_kernels.fp8.ops import (
    fp8_linear,
    fp8_unsupported_reason,
    gelu_quantize_rowwise,
    quantize_rowwise,
    quantize_weight,
)
from cosmos_kernels.fp8.residual import fp8_linear_gated_residual

__all__ = ["fp8_linear", "fp8_linear_gated_residual", "fp8_unsupported_reason", "gelu_quantize_rowwise",
           "quantize_rowwise", "quantize_weight"]
