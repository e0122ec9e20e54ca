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


def broadcast_operands_ok(out: object, *others: object) -> bool:
    """Whether `out` and `others` pass, in one pass, everything `check_broadcast_operands` checks (the common case:
    a call pays for one loop, not a dozen checks); False sends the caller to the checks, which name the error."""
    if not isinstance(out, torch.Tensor) or out.dtype not in FLOAT_DTYPES:
        return False
    shape = out.shape
    n = len(shape)
    if n == 0 or shape[-1] > MAX_HIDDEN:
        return False
    device, d = out.device, shape[-1]
    for t in others:
        if not isinstance(t, torch.Tensor) or t.dtype not in FLOAT_DTYPES or t.device != device:
            return False
        s = t.shape
        if s == shape:
            continue
        k = len(s)
        if k == 0 or k > n or s[-1] != d:
            return False
        for a, o in zip(s, shape[n - k:]):  # a plain loop: `any()` over a generator costs more here
            if a != 1 and a != o:
                return False
    return True


def check_broadcast_operands(op: str, out_name: str, out: object, **others: object) -> torch.device:
    """Every check of an op whose operands broadcast against `out` with `out`'s last dim, in order; returns the
    device. Raises the first failure, naming the argument."""
    check_float_tensor(op, out_name, out)
    for name, t in others.items():
        check_float_tensor(op, name, t)
    device = check_same_device(op, **{out_name: out}, **others)
    d = out.shape[-1]
    check_hidden_size(op, out_name, d)
    for name, t in others.items():
        check_last_dim(op, name, t, d, out_name)
    broadcast_shape(op, out_name, out.shape, **others)
    return device


def kernel_dtypes_ok(anchor: torch.Tensor, *others: torch.Tensor) -> bool:
    """Whether every operand has `anchor`'s dtype and it is one the kernels take (else the checks name the error)."""
    dtype = anchor.dtype
    return dtype in KERNEL_DTYPES and all(t.dtype == dtype for t in others)


def check_backend_dtype(op: str, backend: str, t: torch.Tensor) -> None:
    if backend != "reference" and t.dtype not in KERNEL_DTYPES:
        raise TypeError(f"{op}: backend {backend!r} takes float32, bfloat16 or float16, got {t.dtype}; "
                        "use backend='reference' for float64")


def check_same_dtype(op: str, anchor: str, t: torch.Tensor, **others: torch.Tensor) -> None:
    """The fused backends take operands of one dtype: each of `others` must have `t`'s (named `anchor`)."""
    for name, o in others.items():
        if o.dtype != t.dtype:
            raise TypeError(f"{op}: {name} has dtype {o.dtype} but {anchor} has {t.dtype}; the fused backends "
                            "take operands of one dtype")
