"""PyTorch's scaled_dot_product_attention with a last key that stands for n equal rows (`last_key_repeats`).

The count enters as a score bias: a key with bias b weighs exp(b) times its plain softmax weight. CUDA's
memory-efficient kernel takes a bias only in the query's dtype (cuDNN reads it as that dtype), and log(n) rounded
to bf16 misses n by up to 1.6 % (fp16: 0.2 %). So the last key and value go in as up to `MAX_COPIES` equal
copies, copy i with a bias b_i that q's dtype holds exactly, the b_i chosen so that sum(exp(b_i)) = n to a few
fp32 ulps: each bias but the last is rounded down (the remaining count stays positive), the last to nearest.
fp32 and float64 need one copy (log n itself) for the counts of padded text.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

MAX_COPIES = 4  # bf16 reaches 2^-22 of n for every count up to 5,000 with four
_REL_TOLERANCE = 2.0 ** -22  # of the count: about two fp32 ulps
_MAX_BIASES = 64
_biases: dict[tuple, torch.Tensor] = {}


def _nearest(x: float, dtype: torch.dtype) -> float:
    return torch.tensor(x, dtype=torch.float64).to(dtype).item()


def _below(x: float, dtype: torch.dtype) -> float:
    """The largest value of `dtype` at most x."""
    near = torch.tensor(x, dtype=torch.float64).to(dtype)
    if near.item() > x:
        near = torch.nextafter(near, torch.tensor(-math.inf, dtype=dtype))
    return near.item()


@functools.cache
def bias_terms(repeats: int, dtype: torch.dtype) -> tuple[float, ...]:
    """Biases, each exact in `dtype`, whose exponentials add up to `repeats` (see the module docstring)."""
    terms: list[float] = []
    rest = float(repeats)
    while True:
        last = _nearest(math.log(rest), dtype)
        total = math.fsum([*(math.exp(b) for b in terms), math.exp(last)])
        if abs(total - repeats) <= _REL_TOLERANCE * repeats or len(terms) == MAX_COPIES - 1:
            return (*terms, last)
        below = _below(math.log(rest), dtype)
        rest = repeats - math.fsum([*(math.exp(b) for b in terms), math.exp(below)])
        if rest <= 0:  # exp rounded up past the count: the nearest value alone is as close as it gets
            return (*terms, last)
        terms.append(below)


def score_bias(lk: int, repeats: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The `(1, lk + copies - 1)` bias in `dtype` over the keys with the last one's extra copies appended: zero,
    then the count's `bias_terms`. Kept per (length, count, dtype, device): no per-call fill."""
    key = (lk, repeats, dtype, device)
    bias = _biases.get(key)
    if bias is None:
        terms = bias_terms(repeats, dtype)
        bias = torch.zeros(1, lk - 1 + len(terms), dtype=dtype, device=device)
        for i, term in enumerate(terms):  # scalar fills: no host-to-device copy, which a CUDA capture forbids
            bias[0, lk - 1 + i] = term
        if not (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
            if len(_biases) >= _MAX_BIASES:
                _biases.pop(next(iter(_biases)))
            _biases[key] = bias
    return bias


def clear_cache() -> None:
    """Drop the kept biases (they are rebuilt on next use)."""
    _biases.clear()


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, repeats: int = 1) -> torch.Tensor:
    """Softmax attention on `(B, L, heads, d)` tensors through F.scaled_dot_product_attention; `repeats > 1`: the
    last key and value stand for `repeats` equal rows. Returns `(B, Lq, heads, d)` in q's dtype."""
    bias = None
    if repeats > 1:
        bias = score_bias(k.shape[1], repeats, q.dtype, q.device)
        copies = bias.shape[1] - k.shape[1]
        if copies:
            k, v = (torch.cat([t, t[:, -1:].expand(-1, copies, -1, -1)], dim=1) for t in (k, v))
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=bias,
                                         scale=scale)
    return out.transpose(1, 2)
