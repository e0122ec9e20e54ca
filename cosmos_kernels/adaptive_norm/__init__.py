"""Adaptive LayerNorm family: LayerNorm + adaLN modulation, the gated residual fused with it, RMSNorm."""

from cosmos_kernels.adaptive_norm.ops import gated_residual_layer_norm_modulate, layer_norm_modulate, rms_norm

__all__ = ["gated_residual_layer_norm_modulate", "layer_norm_modulate", "rms_norm"]
