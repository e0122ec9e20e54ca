"""The Wan VAE's channel RMS norm (diffusers' `WanRMS_norm`, channel-first) fused with the SiLU after it, and the
variant that adds a residual first."""

from cosmos_kernels.vae_norm.ops import channel_rms_norm_silu, residual_channel_rms_norm_silu

__all__ = ["channel_rms_norm_silu", "residual_channel_rms_norm_silu"]
