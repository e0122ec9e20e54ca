"""Attention: fused QK RMSNorm + 3D RoPE, a Triton flash-attention forward, a backend that picks the fastest, and
the attention's FP8 ops: the attention with an FP8 output (e4m3 values, one scale per token and head) for the FP8
output projection, and the FP8 GEMMs whose epilogue applies the attention's norm: the packed QKV projection with q
and k normed and rotated (`fp8_linear_qk_norm_rope`) and the cross-attention query with its heads normed
(`fp8_linear_head_norm`), on one Triton kernel (`fp8_qkv_triton.py`). Their references are in `fp8_reference.py`.

This family uses the FP8 family's quantization (`cosmos_kernels.fp8`); the FP8 family never imports it."""

from cosmos_kernels.attention import probes as _probes  # noqa: F401  (registers the GPU backends' probes)
from cosmos_kernels.attention.fp8_head_norm import fp8_linear_head_norm
from cosmos_kernels.attention.fp8_ops import attention_fp8
from cosmos_kernels.attention.fp8_qkv import fp8_linear_qk_norm_rope
from cosmos_kernels.attention.ops import attention, qk_norm_rope
from cosmos_kernels.attention.rope import rope_3d_tables

__all__ = ["attention", "attention_fp8", "fp8_linear_head_norm", "fp8_linear_qk_norm_rope", "qk_norm_rope",
           "rope_3d_tables"]
