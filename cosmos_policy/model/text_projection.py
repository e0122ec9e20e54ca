"""`crossattn_proj`: the Cosmos-Predict2.5 projection of the text embedding (Reason1, 100352 channels) to the
cross-attention width, Linear with bias then GELU (exact erf), computed in the network dtype."""

from __future__ import annotations

import torch
from torch import nn

from cosmos_policy.model.config import DiTConfig


def make_crossattn_proj(config: DiTConfig) -> nn.Sequential | None:
    """`Sequential(Linear(in -> crossattn_emb_channels, bias=True), GELU())` (keys `crossattn_proj.0.weight`,
    `crossattn_proj.0.bias`), or None when the config has no projection (Predict2)."""
    if config.crossattn_proj_in_channels is None:
        return None
    return nn.Sequential(nn.Linear(config.crossattn_proj_in_channels, config.crossattn_emb_channels, bias=True),
                         nn.GELU())


def project_text(proj: nn.Sequential | None, context: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The cross-attention context: `context` in `dtype`, through `proj` when there is one."""
    context = context.to(dtype)
    return context if proj is None else proj(context)
