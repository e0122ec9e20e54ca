"""The one place where ops allocate their outputs.

Tests switch on NaN-filled allocation (`nan_filled_outputs()`), so any element a kernel fails to write
shows up as NaN. The switch reaches the C++ kernels through `cosmos_kernels::_set_nan_fill`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

import torch

from cosmos_kernels import _ext

_nan_fill = os.environ.get("COSMOS_KERNELS_NAN_FILL", "0") == "1"


def nan_fill_enabled() -> bool:
    return _nan_fill


def set_nan_fill(enabled: bool) -> None:
    """Make every op output start NaN-filled (floating outputs) instead of uninitialised."""
    global _nan_fill
    _nan_fill = bool(enabled)
    if _ext.has_cpu_extension():
        torch.ops.cosmos_kernels._set_nan_fill(_nan_fill)
    if _ext.has_cuda_extension():
        torch.ops.cosmos_kernels._set_nan_fill_cuda(_nan_fill)


@contextlib.contextmanager
def nan_filled_outputs(enabled: bool = True) -> Iterator[None]:
    previous = _nan_fill
    set_nan_fill(enabled)
    try:
        yield
    finally:
        set_nan_fill(previous)


def empty(shape: Sequence[int], *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocate an op output (contiguous)."""
    if _nan_fill and dtype.is_floating_point:
        return torch.full(tuple(shape), float("nan"), dtype=dtype, device=device)
    return torch.empty(tuple(shape), dtype=dtype, device=device)

