"""The DiT configuration, with the field names of the official network config (`MinimalV1LVGDiT`)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DiTConfig:
    """Hyper-parameters of the Cosmos-Predict2 DiT (defaults: the 2B network of Cosmos Policy).

    `in_channels` counts the latent channels only (16): the network adds the condition-mask channel and, with
    `concat_padding_mask`, the padding-mask channel itself. `rope_ranges_bf16` rounds the RoPE frequency
    exponents to bf16 before use, as the official inference runtime does (its loader casts the network,
    buffers included, to bf16 before loading the checkpoint); diffusers computes them in fp32 (`False`).

    Cosmos-Predict2.5 flags (defaults: off, the Predict2 network): `timestep_scale` multiplies the timesteps, in
    fp32, before the embedding (0.001: the network sees integer timesteps); `crossattn_proj_in_channels` set adds
    `crossattn_proj` = Linear(in -> crossattn_emb_channels, bias) + GELU(erf) on the text embedding before
    cross-attention (Reason1 embeddings: 100352); `use_wan_fp32_strategy` computes the t-embedder, the adaLN
    modulations (rounded to the network dtype after) and the final layer in fp32 (the timesteps stay fp32).
    """

    model_channels: int = 2048
    num_blocks: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    crossattn_emb_channels: int = 1024
    adaln_lora_dim: int = 256
    patch_spatial: int = 2
    patch_temporal: int = 1
    in_channels: int = 16
    out_channels: int = 16
    max_img_h: int = 240
    max_img_w: int = 240
    max_frames: int = 128
    rope_h_extrapolation_ratio: float = 3.0
    rope_w_extrapolation_ratio: float = 3.0
    rope_t_extrapolation_ratio: float = 1.0
    concat_padding_mask: bool = True
    rope_ranges_bf16: bool = True
    eps: float = 1e-6
    timestep_scale: float = 1.0
    crossattn_proj_in_channels: int | None = None
    use_wan_fp32_strategy: bool = False

    def __post_init__(self) -> None:
        positive = ("model_channels", "num_blocks", "num_heads", "crossattn_emb_channels", "adaln_lora_dim",
                    "patch_spatial", "patch_temporal", "in_channels", "out_channels", "max_img_h", "max_img_w",
                    "max_frames")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"DiTConfig.{name} must be a positive int, got {value!r}")
        if self.model_channels % self.num_heads:
            raise ValueError(f"DiTConfig: model_channels ({self.model_channels}) must be divisible by num_heads "
                             f"({self.num_heads})")
        head_dim = self.model_channels // self.num_heads
        if head_dim % 2 or head_dim < 12 or (head_dim - 2 * (head_dim // 6 * 2)) % 2:
            raise ValueError(f"DiTConfig: head_dim {head_dim} cannot be split into even t/h/w RoPE parts")
        if self.mlp_ratio <= 0 or int(self.model_channels * self.mlp_ratio) <= 0:
            raise ValueError(f"DiTConfig.mlp_ratio must be positive, got {self.mlp_ratio!r}")
        if not self.eps > 0:
            raise ValueError(f"DiTConfig.eps must be positive, got {self.eps!r}")
        scale = self.timestep_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"DiTConfig.timestep_scale must be a finite number > 0, got {scale!r}")
        proj = self.crossattn_proj_in_channels
        if proj is not None and (not isinstance(proj, int) or isinstance(proj, bool) or proj <= 0):
            raise ValueError(f"DiTConfig.crossattn_proj_in_channels must be None or a positive int, got {proj!r}")
        if not isinstance(self.use_wan_fp32_strategy, bool):
            raise ValueError(f"DiTConfig.use_wan_fp32_strategy must be a bool, got {self.use_wan_fp32_strategy!r}")

    # -- derived sizes -------------------------------------------------------------------------------------

    @property
    def head_dim(self) -> int:
        return self.model_channels // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.model_channels * self.mlp_ratio)

    @property
    def text_channels(self) -> int:
        """Channels of the text embedding the network takes (before its projection, if it has one)."""
        return self.crossattn_proj_in_channels or self.crossattn_emb_channels

    @property
    def patch_in_channels(self) -> int:
        """Channels the patch embedding sees: latent + condition mask (+ padding mask)."""
        return self.in_channels + 1 + int(self.concat_padding_mask)

    @property
    def patch_volume(self) -> int:
        return self.patch_spatial * self.patch_spatial * self.patch_temporal

    @property
    def rope_dims(self) -> tuple[int, int, int]:
        """Per-head RoPE dims (t, h, w): h and w get `head_dim // 6 * 2` each, t the rest (44/42/42 at 128)."""
        dim_h = self.head_dim // 6 * 2
        return self.head_dim - 2 * dim_h, dim_h, dim_h

    # -- presets -------------------------------------------------------------------------------------------

    @classmethod
    def cosmos_predict2_2b(cls, **overrides: Any) -> DiTConfig:
        """The 2B network behind every Cosmos Policy checkpoint (Cosmos-Predict2-2B-Video2World)."""
        return cls(**overrides)

    @classmethod
    def cosmos_predict2_5_2b(cls, **overrides: Any) -> DiTConfig:
        """The 2B network of Cosmos-Predict2.5 (and its policy): Reason1 text through `crossattn_proj`, timesteps
        x0.001, fp32 islands."""
        base: dict[str, Any] = dict(timestep_scale=0.001, crossattn_proj_in_channels=100352, use_wan_fp32_strategy=True)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def tiny_predict2_5(cls, **overrides: Any) -> DiTConfig:
        """`tiny` with the Predict2.5 flags (a 96-channel text embedding projected to 64)."""
        base: dict[str, Any] = dict(timestep_scale=0.001, crossattn_proj_in_channels=96, use_wan_fp32_strategy=True)
        base.update(overrides)
        return cls.tiny(**base)

    @classmethod
    def tiny(cls, **overrides: Any) -> DiTConfig:
        """A random-weight size for tests and CPU demos: 128 wide, 2 blocks of 2 heads x 64."""
        base = dict(model_channels=128, num_blocks=2, num_heads=2, crossattn_emb_channels=64, adaln_lora_dim=32)
        base.update(overrides)
        return cls(**base)

    # -- serialisation -------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiTConfig:
        if not isinstance(data, dict):
            raise TypeError(f"DiTConfig.from_dict: expected a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"DiTConfig.from_dict: unknown fields {unknown}")
        return cls(**data)

    def save_json(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)

    @classmethod
    def load_json(cls, path: str | os.PathLike) -> DiTConfig:
        with open(path) as f:
            return cls.from_dict(json.load(f))
