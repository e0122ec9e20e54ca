"""Attention: fused QK RMSNorm + 3D RoPE, a Triton flash-attention forward, and a backend that picks the fastest."""

from cosmos_kernels.attention import probes as _probes  # noqa: F401  (registers the GPU backends' probes)
from cosmos_kernels.attention.ops import attention, qk_norm_rope
from cosmos_kernels.attention.rope import rope_3d_tables

__all__ = ["attention", "qk_norm_rope", "rope_3d_tables"]
