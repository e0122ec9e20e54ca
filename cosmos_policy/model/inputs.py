"""The DiT's input checks and the network timesteps (the Predict2.5 scale applied in fp32)."""

from __future__ import annotations

import torch

from cosmos_policy.model.config import DiTConfig
from cosmos_policy.model.text_projection import is_projected


def network_timesteps(config: DiTConfig, timesteps: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What the time embedding sees. Predict2: the timesteps cast to the network dtype (bf16-rounded at bf16).
    With `timestep_scale != 1` or `use_wan_fp32_strategy`: `float32(t) * float32(scale)` (999 -> 0.999000072...),
    kept in fp32 under the fp32 strategy (no bf16 rounding), else cast to the network dtype after the product."""
    if config.timestep_scale == 1.0 and not config.use_wan_fp32_strategy:
        return timesteps.to(dtype)
    scaled = timesteps.float() * config.timestep_scale if config.timestep_scale != 1.0 else timesteps.float()
    return scaled if config.use_wan_fp32_strategy else scaled.to(dtype)


def check_dit_inputs(config: DiTConfig, device: torch.device, dtype: torch.dtype, x: torch.Tensor,
                     timesteps: torch.Tensor, context: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Checks `CosmosDiT.forward`'s inputs (errors name the argument); returns (x, timesteps, context, cond) with
    x and cond in the network dtype, cond expanded to (B, 1, T, H, W), the timesteps per `network_timesteps`."""
    c = config
    for name, tensor in (("x_B_C_T_H_W", x), ("timesteps_B_T", timesteps), ("crossattn_emb", context),
                         ("condition_video_input_mask_B_C_T_H_W", cond)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"CosmosDiT: {name} must be a tensor, got {type(tensor).__name__}")
    for name, tensor in (("x_B_C_T_H_W", x), ("timesteps_B_T", timesteps), ("crossattn_emb", context)):
        if not tensor.is_floating_point():
            raise TypeError(f"CosmosDiT: {name} must be a floating-point tensor, got {tensor.dtype}")
    if x.dim() != 5 or x.shape[1] != c.in_channels:
        raise ValueError(f"CosmosDiT: x_B_C_T_H_W must be (B, {c.in_channels}, T, H, W), got {tuple(x.shape)}")
    b, _, t, h, w = x.shape
    ps, pt = c.patch_spatial, c.patch_temporal
    if t % pt or h % ps or w % ps:
        raise ValueError(f"CosmosDiT: x_B_C_T_H_W's T, H, W must be multiples of ({pt}, {ps}, {ps}), "
                         f"got {(t, h, w)}")
    if t > c.max_frames or h > c.max_img_h or w > c.max_img_w:
        raise ValueError(f"CosmosDiT: x_B_C_T_H_W's T, H, W {(t, h, w)} exceed the RoPE range "
                         f"{(c.max_frames, c.max_img_h, c.max_img_w)}")
    if tuple(timesteps.shape) != (b, t // pt):
        raise ValueError(f"CosmosDiT: timesteps_B_T must be ({b}, {t // pt}), got {tuple(timesteps.shape)}")
    width = c.crossattn_emb_channels if is_projected(context) else c.text_channels
    if context.dim() != 3 or context.shape[0] not in (1, b) or context.shape[2] != width:
        raise ValueError(f"CosmosDiT: crossattn_emb must be ({b} or 1, N, {width}), "
                         f"got {tuple(context.shape)}")
    try:
        torch.broadcast_shapes(cond.shape, (b, 1, t, h, w))
    except RuntimeError:
        raise ValueError(f"CosmosDiT: condition_video_input_mask_B_C_T_H_W must broadcast to {(b, 1, t, h, w)}, "
                         f"got {tuple(cond.shape)}") from None
    for name, tensor in (("x_B_C_T_H_W", x), ("crossattn_emb", context),
                         ("condition_video_input_mask_B_C_T_H_W", cond)):
        if tensor.device != device:
            raise ValueError(f"CosmosDiT: {name} is on {tensor.device}, the network on {device}")
    if not (timesteps.device == device or timesteps.device.type == "cpu"):
        raise ValueError(f"CosmosDiT: timesteps_B_T is on {timesteps.device}, the network on {device}")
    return x.to(dtype), network_timesteps(c, timesteps, dtype), context, cond.to(dtype).expand(b, 1, t, h, w)
