"""The Wan VAE's channel RMS norm (diffusers' `WanRMS_norm`, channel-first) fused with the SiLU after it, the
variant that adds a residual first, the variant that writes into a causal conv's time window (cached past
frames first), and that one adding a residual first."""

from cosmos_kernels.vae_norm.ops import (
    causal_channel_rms_norm_silu,
    channel_rms_norm_silu,
    residual_causal_channel_rms_norm_silu,
    residual_channel_rms_norm_silu,
)

__all__ = ["causal_channel_rms_norm_silu", "channel_rms_norm_silu", "residual_causal_channel_rms_norm_silu",
           "residual_channel_rms_norm_silu"]
