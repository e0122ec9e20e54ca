"""Attention: fused QK RMSNorm + 3D RoPE, a Triton flash-attention forward, a backend that picks the fastest, and
the attention with an FP8 output (e4m3 values, one scale per token and head) for the FP8 output projection."""

from cosmos_kernels.attention import probes as _probes  # noqa: F401  (registers the GPU backends' probes)
from cosmos_kernels.attention.fp8_ops import attention_fp8
from cosmos_kernels.attention.ops import attention, qk_norm_rope
from cosmos_kernels.attention.rope import rope_3d_tables

__all__ = ["attention", "attention_fp8", "qk_norm_rope", "rope_3d_tables"]
