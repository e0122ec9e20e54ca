"""`gelu(x @ weight.T)` with the exact-erf GELU in the GEMM's epilogue: the MLP's first layer in one launch."""

from cosmos_kernels.linear_gelu.ops import linear_gelu

__all__ = ["linear_gelu"]
