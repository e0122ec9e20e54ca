"""`crossattn_proj`: the Cosmos-Predict2.5 projection of the text embedding (Reason1, 100352 channels) to the
cross-attention width, Linear with bias then GELU (exact erf), computed in the network dtype.

A context projected ahead of the network (`project_context`, once per instruction) is marked as such: the network
then takes it at the cross-attention width and skips its own projection, so the caller may drop the wide embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from cosmos_policy.model.config import DiTConfig

PROJECTED_ATTR = "cosmos_text_projected"


def make_crossattn_proj(config: DiTConfig) -> nn.Sequential | None:
    """`Sequential(Linear(in -> crossattn_emb_channels, bias=True), GELU())` (keys `crossattn_proj.0.weight`,
    `crossattn_proj.0.bias`), or None when the config has no projection (Predict2)."""
    if config.crossattn_proj_in_channels is None:
        return None
    return nn.Sequential(nn.Linear(config.crossattn_proj_in_channels, config.crossattn_emb_channels, bias=True),
                         nn.GELU())


def is_projected(context: torch.Tensor) -> bool:
    """Whether `context` was made by `project_context` (already at the cross-attention width)."""
    return bool(getattr(context, PROJECTED_ATTR, False))


def mark_projected(context: torch.Tensor) -> torch.Tensor:
    """Mark `context` as already projected (at the cross-attention width); returns it."""
    setattr(context, PROJECTED_ATTR, True)
    return context


def project_text(proj: nn.Sequential | None, context: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The cross-attention context: `context` in `dtype`, through `proj` when there is one (and the context is not
    projected yet)."""
    projected = is_projected(context)
    context = context.to(dtype)
    return context if proj is None or projected else proj(context)


def project_context(proj: nn.Sequential | None, context: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`project_text`, marked so the network takes the result as its already-projected context."""
    out = project_text(proj, context, dtype)
    return mark_projected(out) if proj is not None else out
