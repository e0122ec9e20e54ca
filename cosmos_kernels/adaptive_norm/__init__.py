"""Adaptive LayerNorm family: LayerNorm + adaLN modulation, the gated residual fused with it, RMSNorm; FP8 variants
of the two LayerNorm ops that write their output as e4m3 values and per-row scales."""

from cosmos_kernels.adaptive_norm.fp8_ops import gated_residual_layer_norm_modulate_fp8, layer_norm_modulate_fp8
from cosmos_kernels.adaptive_norm.ops import gated_residual_layer_norm_modulate, layer_norm_modulate, rms_norm

__all__ = ["gated_residual_layer_norm_modulate", "gated_residual_layer_norm_modulate_fp8", "layer_norm_modulate",
           "layer_norm_modulate_fp8", "rms_norm"]
