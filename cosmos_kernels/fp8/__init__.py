"""FP8 (e4m3) for the DiT's token GEMMs: row-wise quantization (of x, or of GELU(x) in the same pass), static
per-channel weight quantization, the row- and column-scaled FP8 GEMM, and the packed QKV projection whose epilogue
norms and rotates q and k (`fp8_linear_qk_norm_rope`). The adaptive-norm family's FP8 variants write
the quantized rows themselves."""

from cosmos_kernels.fp8.ops import (
    fp8_linear,
    fp8_unsupported_reason,
    gelu_quantize_rowwise,
    quantize_rowwise,
    quantize_weight,
)
from cosmos_kernels.fp8.qkv import fp8_linear_qk_norm_rope

__all__ = ["fp8_linear", "fp8_linear_qk_norm_rope", "fp8_unsupported_reason", "gelu_quantize_rowwise",
           "quantize_rowwise", "quantize_weight"]
