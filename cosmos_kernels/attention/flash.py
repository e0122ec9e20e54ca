"""The flash-attn libraries as an attention backend: FA3 (`flash_attn_interface`, built by the user for Hopper),
FA4 (`flash_attn.cute`, PyPI's `flash-attn-4`, Hopper and Blackwell) and FA2 (`flash_attn`, PyPI's `flash-attn`),
tried in that order.

None of them takes a score bias, so a last key that stands for n rows (`last_key_repeats`, the zero padding of
T5 text) is handled from the log-sum-exp the call returns: with Z = exp(lse) over the keys as given and s the
last key's score, the n - 1 missing copies add (n - 1) e^s to the denominator and (n - 1) e^s v_last to the
numerator, so the exact output is `alpha * out + (1 - alpha) * v_last` with
`alpha = Z / (Z + (n - 1) e^s) = sigmoid(lse - s - log(n - 1))`.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
from collections.abc import Callable

import torch

from cosmos_kernels.picker import FLASH_MODULES  # (module, label) in the order tried

_func: Callable | None = None
_checked = False


def flash_attn_func() -> Callable | None:
    """The first importable `flash_attn_func` of FLASH_MODULES, or None."""
    global _func, _checked
    if not _checked:
        _checked = True
        for module, _ in FLASH_MODULES:
            try:
                _func = importlib.import_module(module).flash_attn_func
                break
            except (ImportError, AttributeError, OSError):
                continue
    return _func


@functools.cache  # inspect.signature costs tens of microseconds: once per library function
def _takes_return_attn_probs(fn: Callable) -> bool:
    try:
        return "return_attn_probs" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: call it as it is
        return False


def _call(fn: Callable, q, k, v, scale: float, want_lse: bool):
    """(out, lse or None) whatever the library's return form: FA2 returns out, or (out, lse, probs) when asked for
    the probabilities; FA3 builds return out or (out, lse); FA4 returns (out, lse)."""
    kwargs = {"softmax_scale": scale, "causal": False}
    if want_lse and _takes_return_attn_probs(fn):
        kwargs["return_attn_probs"] = True
    result = fn(q, k, v, **kwargs)
    if not isinstance(result, (tuple, list)):
        return result, None
    out = result[0]
    lse = result[1] if len(result) > 1 and isinstance(result[1], torch.Tensor) else None
    b, lq, h, _ = q.shape
    if lse is not None and tuple(lse.shape) != (b, h, lq):
        lse = None  # not the (B, heads, Lq) log-sum-exp this correction needs
    return out, lse


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, repeats: int = 1,
              fn: Callable | None = None) -> torch.Tensor | None:
    """Softmax attention on `(B, L, heads, d)` tensors through flash-attn; `repeats > 1`: the last key and value
    stand for `repeats` equal rows (see the module docstring). `fn` defaults to `flash_attn_func()`. None when
    `repeats > 1` and the build returns no log-sum-exp (the caller runs another backend)."""
    fn = flash_attn_func() if fn is None else fn
    if fn is None:
        raise RuntimeError("attention: no flash-attn library is importable")
    out, lse = _call(fn, q, k, v, scale, want_lse=repeats > 1)
    if repeats == 1:
        return out
    if lse is None:
        return None
    last_score = torch.einsum("blhd,bhd->blh", q.float(), k[:, -1].float()) * scale
    alpha = torch.sigmoid(lse.float().transpose(1, 2) - last_score - math.log(repeats - 1)).unsqueeze(-1)
    return torch.lerp(v[:, -1:].float(), out.float(), alpha).to(q.dtype)  # alpha * out + (1 - alpha) * v_last
