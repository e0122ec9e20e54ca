"""The Wan VAE's causal 3-D convolution (time padded on the past side only, a cache of the previous chunk's last
frames in place of zeros), called so that PyTorch runs it on oneDNN on the CPU; see `ops.py` for why."""

from cosmos_kernels.causal_conv.ops import causal_conv3d, channels_last_weight, conv3d, runs_on_onednn

__all__ = ["causal_conv3d", "channels_last_weight", "conv3d", "runs_on_onednn"]
