"""cosmos_kernels: fused Triton / CUDA / CPU kernels for Cosmos-style video diffusion transformers.

Every op takes `backend=None` (auto), "reference", "cpu", "cuda" or "triton"; see README.md. Importing
the package never initialises CUDA.
"""

from cosmos_kernels import _ext

_ext.load_all()

from cosmos_kernels import _alloc  # noqa: E402
from cosmos_kernels._alloc import nan_filled_outputs, set_nan_fill  # noqa: E402
from cosmos_kernels._ext import build_info, cuda_kernels_note  # noqa: E402
from cosmos_kernels.adaptive_norm import (  # noqa: E402
    gated_residual_layer_norm_modulate,
    gated_residual_layer_norm_modulate_fp8,
    layer_norm_modulate,
    layer_norm_modulate_fp8,
    rms_norm,
)
from cosmos_kernels.attention import (  # noqa: E402
    attention,
    attention_fp8,
    fp8_linear_head_norm,
    fp8_linear_qk_norm_rope,
    qk_norm_rope,
    rope_3d_tables,
)
from cosmos_kernels.causal_conv import causal_conv3d  # noqa: E402
from cosmos_kernels.fp8 import (  # noqa: E402
    fp8_linear,
    gelu_quantize_rowwise,
    quantize_rowwise,
    quantize_weight,
)
from cosmos_kernels.linear_gelu import linear_gelu  # noqa: E402
from cosmos_kernels.sampling.step import sampler_step  # noqa: E402
from cosmos_kernels.vae_norm import channel_rms_norm_silu, residual_channel_rms_norm_silu  # noqa: E402

_alloc.set_nan_fill(_alloc.nan_fill_enabled())

__version__ = "0.1.0"

__all__ = [
    "attention",
    "attention_fp8",
    "build_info",
    "causal_conv3d",
    "channel_rms_norm_silu",
    "cuda_kernels_note",
    "fp8_linear",
    "fp8_linear_head_norm",
    "fp8_linear_qk_norm_rope",
    "gated_residual_layer_norm_modulate",
    "gated_residual_layer_norm_modulate_fp8",
    "gelu_quantize_rowwise",
    "layer_norm_modulate",
    "layer_norm_modulate_fp8",
    "linear_gelu",
    "nan_filled_outputs",
    "qk_norm_rope",
    "quantize_rowwise",
    "quantize_weight",
    "residual_channel_rms_norm_silu",
    "rms_norm",
    "rope_3d_tables",
    "sampler_step",
    "set_nan_fill",
]
