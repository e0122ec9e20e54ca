"""`resolve_device`: the device a policy or a planning network is loaded on, checked before anything is allocated."""

from __future__ import annotations

import torch


def resolve_device(device=None) -> torch.device:
    """`device` as a `torch.device` (CUDA when available by default); a CUDA device without a GPU is a
    `ValueError` here rather than an error deep inside the first allocation."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device: {device!r} is not a device ({err})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device} asked for, but no CUDA GPU is available "
                             f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device: {device} asked for, but only {torch.cuda.device_count()} CUDA GPUs are visible")
    elif device.type not in ("cpu", "meta"):
        available = getattr(torch, device.type, None)
        if available is not None and hasattr(available, "is_available") and not available.is_available():
            raise ValueError(f"device: {device} asked for, but it is not available")
    return device


def check_fp8(backend: str, device: torch.device | str, dtype: torch.dtype | None) -> None:
    """ValueError saying what FP8 GEMMs need when `backend` on `device` in `dtype` cannot run them."""
    from cosmos_kernels.fp8 import fp8_unsupported_reason

    if backend != "fused":
        raise ValueError(f"fp8=True: the FP8 GEMMs run in the fused network only, not with backend {backend!r}")
    reason = fp8_unsupported_reason(device, dtype)
    if reason is not None:
        raise ValueError(f"fp8=True: {reason}")
