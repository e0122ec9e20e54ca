"""The specification of the attention family, in plain PyTorch (differentiable, any float dtype).

Tensors are `(B, L, heads, head_dim)`. RoPE tables are `(L, head_dim)` in the non-interleaved
rotate-half convention: `x * cos + rotate_half(x) * sin` with `rotate_half(x) = cat(-x2, x1)`.
"""

from __future__ import annotations

import math

import torch

from cosmos_kernels.attention.rope import rope_3d_tables

__all__ = ["attention", "qk_norm_rope", "rope_3d_tables", "rotate_half"]


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def _norm_rope_one(x, weight, cos, sin, eps):
    if weight is None and cos is None:
        return x.clone()  # nothing to apply; still a new tensor, never an alias of the input
    compute = _compute_dtype(x)
    xf = x.to(compute)
    if weight is not None:
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.to(compute)
    if cos is not None:
        c = cos.to(compute)[None, :, None, :]
        s = sin.to(compute)[None, :, None, :]
        xf = xf * c + rotate_half(xf) * s
    return xf.to(x.dtype)


def qk_norm_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor | None,
    k_weight: torch.Tensor | None,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head RMSNorm with weight (skipped when the weight is None), then RoPE (skipped without tables).

    Computed in fp32 (float64 stays float64) from the input to the rotated output, rounded once to the
    input dtype.
    """
    return _norm_rope_one(q, q_weight, cos, sin, eps), _norm_rope_one(k, k_weight, cos, sin, eps)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    q_norm_weight: torch.Tensor | None = None,
    k_norm_weight: torch.Tensor | None = None,
    rope_cos: torch.Tensor | None = None,
    rope_sin: torch.Tensor | None = None,
    norm_eps: float = 1e-6,
    last_key_repeats: int = 1,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Non-causal softmax attention of `(B, Lq, heads, d)` queries over `(B, Lk, heads, d)` keys / values.

    q and k first go through `qk_norm_rope` (rounded to the input dtype) when norm weights (each side's
    own, or None) or RoPE tables are given; scores, softmax and the weighted sum are computed in fp32
    (float64 for float64). `last_key_repeats=n`: the last key and value rows stand for n equal rows, as if
    they were repeated n times. The output is rounded once to `out_dtype`, q's dtype by default (fp32 keeps the
    unrounded fp32 result of bf16 / fp16 inputs).
    """
    if q_norm_weight is not None or k_norm_weight is not None or rope_cos is not None:
        q, k = qk_norm_rope(q, k, q_norm_weight, k_norm_weight, rope_cos, rope_sin, norm_eps)
    if last_key_repeats != 1:
        extra = last_key_repeats - 1
        k = torch.cat([k, k[:, -1:].expand(-1, extra, -1, -1)], dim=1)
        v = torch.cat([v, v[:, -1:].expand(-1, extra, -1, -1)], dim=1)
    compute = _compute_dtype(q)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    qf, kf, vf = (t.to(compute).transpose(1, 2) for t in (q, k, v))  # (B, heads, L, d)
    probs = torch.softmax(qf @ kf.transpose(-1, -2) * scale, dim=-1)
    return (probs @ vf).transpose(1, 2).to(q.dtype if out_dtype is None else out_dtype)
