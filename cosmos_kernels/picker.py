"""The timed backend choice of attention and linear_gelu: timed once on the device, kept per (GPU, versions, shapes),
also on disk.

Each usable candidate runs twice (compiling what it needs), then at least `SAMPLES` times with CUDA events around
each call while a sleep kernel queued before the events keeps the GPU busy, so the host's Python and launch cost
overlaps with device work and the events see device time only; the median wins. Choices are written to
`choices_path()` (JSON) keyed by the GPU, the library versions and the shapes, read back by later processes and
printed by `cosmos-policy backends`. A backend that cannot run the shapes (a `ValueError`, an unsupported-shape
`RuntimeError`, a Triton compile error) is skipped with a warning; a CUDA error (an illegal address, a sticky
fault) is raised, never taken for "slow". `COSMOS_KERNELS_DETERMINISTIC=1` makes the choice "sdpa" without timing.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import os
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from cosmos_kernels import _dispatch

# The flash-attn libraries (module, label) in the order the attention's flash backend tries them (attention/flash.py
# imports this table); their versions are part of every choice's key, and cosmos-policy backends reports them.
FLASH_MODULES = (("flash_attn_interface", "FA3"), ("flash_attn.cute", "FA4"), ("flash_attn", "FA2"))

DETERMINISTIC_CHOICE = "sdpa"
SAMPLES = 21  # odd: the median is one sample
CACHE_ENV = "COSMOS_KERNELS_CACHE_DIR"
_MAX_CHOICES = 256
_SLEEP_CYCLES = 2_000_000  # ~1 ms at ~2 GHz: longer than the host needs to queue one sample
_choices: dict[str, str] = {}
_disk_loaded = False
_lock = threading.Lock()


def choices_path() -> Path:
    """`$COSMOS_KERNELS_CACHE_DIR/attention_choices.json`, else under `~/.cache/cosmos_kernels/`."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "cosmos_kernels")
    return Path(root) / "attention_choices.json"


@functools.cache  # every automatic call builds its key: no failed imports on the hot path
def versions() -> str:
    parts = [f"torch {torch.__version__}"]
    for module in ("triton", *(name for name, _ in FLASH_MODULES)):
        try:
            parts.append(f"{module} {getattr(importlib.import_module(module), '__version__', '?')}")
        except Exception:  # absent or broken optional packages simply do not count
            continue
    return ", ".join(parts)


@functools.cache
def _gpu_label(index: int) -> str:
    props = torch.cuda.get_device_properties(index)
    return f"{props.name} sm_{props.major}{props.minor}"


def gpu_label(device: torch.device) -> str:
    return _gpu_label(device.index if device.index is not None else torch.cuda.current_device())


def choice_key(device: torch.device, q, k, qw, kw, cos, repeats: int) -> str:
    """One readable string: GPU, versions, shapes, dtype and what is fused (norms, RoPE, a repeated key)."""
    flags = "".join(c for c, on in (("q", qw is not None), ("k", kw is not None), ("r", cos is not None),
                                    ("n", repeats > 1)) if on) or "-"
    return (f"{gpu_label(device)} | {versions()} | q{tuple(q.shape)} k{tuple(k.shape)} {str(q.dtype)[6:]} "
            f"stride{tuple(q.stride())} | {flags}")


def _load_disk() -> None:
    global _disk_loaded
    if _disk_loaded:
        return
    _disk_loaded = True
    try:
        data = json.loads(choices_path().read_text())
    except (OSError, ValueError):
        return
    if isinstance(data, dict):
        _choices.update({k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)})


def _save_disk() -> None:
    path = choices_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(_choices, indent=1, sort_keys=True))
        os.replace(tmp, path)  # atomic: concurrent processes never read half a file
    except OSError as exc:
        _dispatch.warn_once("attention-choices-write", f"attention: cannot write {path} ({exc}); the choices "
                            "are kept for this process only")


def saved_choices() -> dict[str, str]:
    """Every choice on disk and in this process: key -> backend."""
    with _lock:
        _load_disk()
        return dict(_choices)


def chosen_backends() -> dict[str, str]:
    """The automatic choices known to this process (made here or read from disk)."""
    return saved_choices()


def auto_backend(run: Callable, candidates: Callable, q, k, v, qw, kw, cos, sin, scale, eps, repeats) -> str:
    """The timed choice for these tensors (see the module docstring); "sdpa" off CUDA."""
    if q.device.type != "cuda":
        return DETERMINISTIC_CHOICE
    if os.environ.get(_dispatch.DETERMINISTIC_ENV, "0") == "1":
        return DETERMINISTIC_CHOICE
    key = choice_key(q.device, q, k, qw, kw, cos, repeats)
    return timed_choice(key, lambda: candidates(q, repeats), run, (q, k, v, qw, kw, cos, sin, scale, eps, repeats),
                        DETERMINISTIC_CHOICE)


def timed_choice(key: str, candidates: Callable[[], list[str]], run: Callable, args: tuple, provisional: str) -> str:
    """The fastest of `candidates()` by device time on `run(name, *args)`, timed once per `key` and kept in this
    process and on disk; `provisional` while compiling or capturing (a capture that took it is redone once the
    timed choice exists). Shared by every op whose automatic choice is timed."""
    with _lock:
        _load_disk()
        choice = _choices.get(key)
    if choice is not None and choice in candidates():
        return choice
    if torch.compiler.is_compiling() or torch.cuda.is_current_stream_capturing():
        if not torch.compiler.is_compiling():  # a capture bakes this in: have it redone once the timed choice exists
            _dispatch.defer(("timed-choice", key), lambda: False)
        return provisional  # no timing while tracing or capturing; the first eager call times
    names = candidates()
    if len(names) == 1:
        choice = names[0]
    else:
        timings = {name: time_backend(run, name, *args) for name in names}
        choice = min(timings, key=timings.get)
    with _lock:
        if len(_choices) >= _MAX_CHOICES:
            _choices.pop(next(iter(_choices)))
        _choices[key] = choice
        _save_disk()
    return choice


def is_cuda_error(exc: BaseException) -> bool:
    """A fault of the device or the driver (sticky: later work fails too), as opposed to unsupported shapes."""
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("CUDA error" in text or "CUDA driver error" in text
                                              or "illegal memory access" in text)


def time_backend(run: Callable, name: str, *args, samples: int = SAMPLES) -> float:
    """Median device milliseconds of one call (inf for a backend that cannot run these shapes)."""
    try:
        for _ in range(2):
            run(name, *args)
        torch.cuda.synchronize()
    except Exception as exc:
        if is_cuda_error(exc):
            raise
        _dispatch.warn_once(f"attention-time:{name}", f"attention: backend {name!r} cannot run these shapes "
                            f"({type(exc).__name__}: {exc}); not chosen")
        return math.inf
    events = []
    for _ in range(max(20, samples)):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(_SLEEP_CYCLES)  # the GPU waits here while the host queues the sample
        start.record()
        run(name, *args)
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()  # a fault inside a sample surfaces here, and is raised
    times = sorted(s.elapsed_time(e) for s, e in events)
    return times[len(times) // 2]
