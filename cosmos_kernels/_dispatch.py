"""Backend choice for every op: explicit argument > environment > automatic.

Automatic choice is a fixed order per device (documented in README), so it never depends on timing,
except for attention, which owns its timed choice. On a GPU each fast backend is checked once per
process against the reference on a small probe input before first use; a mismatch disables it.

Inside `meta_as_cuda()` tensors on the meta device dispatch as CUDA tensors would (the roofline counts a
GPU's kernels without one): the fake implementations of the fast backends run, probes are skipped.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from cosmos_kernels import _ext

BACKEND_ENV = "COSMOS_KERNELS_BACKEND"
DETERMINISTIC_ENV = "COSMOS_KERNELS_DETERMINISTIC"
KERNEL_BACKENDS = ("reference", "cpu", "cuda", "triton")

_warned: set[str] = set()
_probe_fns: dict[tuple[str, str], Callable[[torch.device], bool]] = {}
_probe_results: dict[tuple[str, str, str], bool] = {}
_deferred: dict[tuple, Callable[[], bool]] = {}
_meta_as_cuda = False
# Environment variables read once per process (an op call would otherwise pay for the lookups);
# `refresh_environment()` re-reads them.
_environment: dict[str, str | None] = {}
_FLOAT_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def environment(name: str, default: str = "") -> str:
    """`os.environ.get(name, default)` as it was the first time it was asked for in this process."""
    try:
        value = _environment[name]
    except KeyError:
        value = _environment[name] = os.environ.get(name)
    return default if value is None else value


def refresh_environment() -> None:
    """Re-read the cached environment variables (backend pins, TRITON_INTERPRET) at their next use."""
    _environment.clear()


@contextmanager
def meta_as_cuda(enabled: bool = True) -> Iterator[None]:
    """Within the block, automatic backend choice treats meta tensors like CUDA tensors."""
    global _meta_as_cuda
    previous, _meta_as_cuda = _meta_as_cuda, enabled
    try:
        yield
    finally:
        _meta_as_cuda = previous


def as_cuda(device: torch.device) -> bool:
    """Whether backend choice treats `device` as a CUDA device (CUDA itself, or meta inside `meta_as_cuda`)."""
    return device.type == "cuda" or (_meta_as_cuda and device.type == "meta")


def warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def triton_available(device: torch.device) -> bool:
    """Triton runs CUDA tensors on a GPU, and CPU tensors only through its interpreter."""
    interpreted_cpu = device.type == "cpu" and environment("TRITON_INTERPRET", "0") == "1"
    if not as_cuda(device) and not interpreted_cpu:
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def backend_available(backend: str, device: torch.device) -> bool:
    if backend == "reference":
        return True
    if backend == "cpu":
        return device.type == "cpu" and _ext.has_cpu_extension()
    if backend == "cuda":
        if device.type == "meta":  # the op schemas and fakes come with the C++ extension
            return as_cuda(device) and _ext.has_cpu_extension()
        return device.type == "cuda" and _ext.has_cuda_extension()
    if backend == "triton":
        return triton_available(device)
    return False


def register_probe(op_name: str, backend: str, probe: Callable[[torch.device], bool]) -> None:
    """`probe(device)` runs the backend on a small input and returns whether it matches the reference."""
    _probe_fns[(op_name, backend)] = probe


def probe_passed(op_name: str, backend: str, device: torch.device) -> bool:
    """Run (once per process and device) the probe of a fast GPU backend; CPU backends are not probed."""
    if device.type != "cuda":
        return True
    key = (op_name, backend, str(device))
    if key in _probe_results:
        return _probe_results[key]
    probe = _probe_fns.get((op_name, backend))
    if probe is None:
        return True
    if torch.compiler.is_compiling():
        return True  # cannot run a probe while tracing; it runs at the first eager call instead
    if torch.cuda.is_current_stream_capturing():
        # Cannot run it inside a capture either: the capture goes on with the backend, and whoever captured
        # runs the probe afterwards (`run_deferred`) and captures again if it fails.
        defer(("probe", *key), lambda: probe_passed(op_name, backend, device))
        return True
    try:
        ok = bool(probe(device))
        reason = "its output does not match the reference"
    except Exception as exc:  # a backend that crashes on the probe is just as unusable
        ok, reason = False, f"{type(exc).__name__}: {exc}"
    _probe_results[key] = ok
    if not ok:
        warn_once(key[0] + key[1], f"cosmos_kernels: backend {backend!r} of {op_name} disabled on {device}: "
                  f"{reason}. Falling back.")
    return ok


def has_probe(op_name: str, backend: str) -> bool:
    """Whether `backend` of `op_name` is checked by a probe before its first use on a GPU."""
    return (op_name, backend) in _probe_fns


def probe_result(op_name: str, backend: str, device: torch.device) -> bool | None:
    """The outcome of the probe that ran in this process on `device`, or None when none ran."""
    return _probe_results.get((op_name, backend, str(device)))


def defer(key: tuple, check: Callable[[], bool]) -> None:
    """Record one-time work skipped inside a CUDA-graph capture (a probe, a timed choice made provisionally).

    `check()` runs eagerly after the capture (`run_deferred`) and returns whether what was captured meanwhile
    still stands (False: the capture used an unchecked or provisional backend and must be redone)."""
    _deferred.setdefault(key, check)


def deferred() -> list[tuple]:
    """The keys of the work deferred so far and not yet run."""
    return list(_deferred)


def run_deferred() -> bool:
    """Run the deferred work (call it outside any capture); False when a capture since the last call must be redone."""
    ok = True
    while _deferred:
        _, check = _deferred.popitem()
        try:
            ok = bool(check()) and ok
        except Exception:  # a check that cannot run leaves the capture unverified
            ok = False
    return ok


def on_tensor_device(launch: Callable) -> Callable:
    """Run a Triton launcher with its first tensor argument's CUDA device current: Triton launches on the current
    device and stream, so a tensor on `cuda:1` would otherwise be launched on `cuda:0`."""

    @functools.wraps(launch)
    def guarded(*args, **kwargs):
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
        if device is None or device.type != "cuda":
            return launch(*args, **kwargs)
        with torch.cuda.device(device):
            return launch(*args, **kwargs)

    return guarded


def _env_choice(env_var: str) -> str | None:
    value = environment(env_var).strip().lower()
    return None if value in ("", "auto") else value


def resolve_backend(
    op_name: str,
    device: torch.device,
    requested: str | None,
    *,
    supported: Sequence[str] = KERNEL_BACKENDS,
    cuda_order: Sequence[str] = ("cuda", "triton"),
    env_var: str = BACKEND_ENV,
    dtype: torch.dtype | None = None,
) -> str:
    """The backend an op runs: `requested` if given, else the environment's pin, else auto.

    An explicit but unusable backend is a ValueError; an environment pin that does not fit the tensors
    (say, "cuda" for CPU tensors) warns once and falls back to auto.
    """
    if requested is not None:
        if requested == "auto":
            requested = None
        elif requested not in supported:
            raise ValueError(f"{op_name}: backend must be one of {tuple(supported)} or None, got {requested!r}")
        elif not backend_available(requested, device):
            raise ValueError(
                f"{op_name}: backend {requested!r} is not available for tensors on {device}"
                + (" (Triton on CPU tensors needs TRITON_INTERPRET=1)" if requested == "triton" else "")
            )
        else:
            return requested
    pinned = _env_choice(env_var)
    if pinned is not None:
        if pinned in supported and backend_available(pinned, device):
            return pinned
        warn_once(f"{env_var}={pinned}:{device.type}",
                  f"{env_var}={pinned!r} is not usable for {op_name} on {device}; using automatic choice")
    if dtype is not None and dtype not in _FLOAT_KERNEL_DTYPES:
        return "reference"  # float64 and friends: the reference is the only implementation
    if device.type == "cpu":
        return "cpu" if "cpu" in supported and _ext.has_cpu_extension() else "reference"
    if as_cuda(device):
        if device.type == "cuda" and "cuda" in supported and "cuda" in cuda_order and not _ext.has_cuda_extension():
            warn_once("no-cuda-extension", f"cosmos_kernels: {_ext.cuda_kernels_note()}; the ops run on Triton "
                      "or the reference instead")
        for name in cuda_order:
            if name in supported and backend_available(name, device) and probe_passed(op_name, name, device):
                return name
    return "reference"


def needs_autograd(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def warn_autograd(op_name: str) -> None:
    warn_once("grad:" + op_name, f"{op_name}: inputs require grad; running the differentiable reference "
              "(the fused kernels are inference-only)")
