"""Input checks shared by all ops: clear errors that name the argument, expected and received values."""

from __future__ import annotations

import torch

MAX_HIDDEN = 16384
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
FLOAT_DTYPES = (*KERNEL_DTYPES, torch.float64)


def check_float_tensor(op: str, name: str, t: object, *, ndim_min: int = 1) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be float32, bfloat16, float16 or float64, got {t.dtype}")
    if t.dim() < ndim_min:
        raise ValueError(f"{op}: {name} must have at least {ndim_min} dimension(s), got shape {tuple(t.shape)}")
    return t


def check_same_device(op: str, **tensors: torch.Tensor | None) -> torch.device:
    items = [(k, v) for k, v in tensors.items() if v is not None]
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(f"{op}: {name} is on {t.device} but {first_name} is on {first.device}; "
                             "all tensors must be on one device")
    return first.device


def check_hidden_size(op: str, name: str, size: int) -> None:
    if size > MAX_HIDDEN:
        raise ValueError(f"{op}: {name} has hidden size {size}; the supported maximum is {MAX_HIDDEN}")


def check_last_dim(op: str, name: str, t: torch.Tensor, size: int, against: str) -> None:
    if t.shape[-1] != size:
        raise ValueError(f"{op}: {name} has last dimension {t.shape[-1]} (shape {tuple(t.shape)}), "
                         f"expected {size} to match {against}")


def broadcast_shape(op: str, out_name: str, out: torch.Size, **tensors: torch.Tensor) -> torch.Size:
    """Check that every tensor broadcasts to `out` without enlarging it; return `out`.

    Plain tuple comparisons (O(ndim), no `torch.broadcast_shapes`, whose symbolic-shape machinery costs tens
    of microseconds per call): the op's host cost must stay near the eager ops it replaces."""
    n = len(out)
    for name, t in tensors.items():
        shape = t.shape
        if shape == out:
            continue
        k = len(shape)
        if k > n or any(s != 1 and s != o for s, o in zip(shape, out[n - k:])):
            raise ValueError(f"{op}: {name} of shape {tuple(t.shape)} does not broadcast to "
                             f"{out_name}'s shape {tuple(out)}")
    return out


def check_backend_dtype(op: str, backend: str, t: torch.Tensor) -> None:
    if backend != "reference" and t.dtype not in KERNEL_DTYPES:
        raise TypeError(f"{op}: backend {backend!r} takes float32, bfloat16 or float16, got {t.dtype}; "
                        "use backend='reference' for float64")
