"""Helpers shared by the benchmark suites, `bench.report` and `bench.gpu_suite`; importable without pytest."""

from __future__ import annotations

import functools
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


@functools.cache
def git_commit() -> str:
    """The commit of the working tree ("+dirty" when it has uncommitted changes), or "unknown" outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("+dirty" if dirty else "")) if sha else "unknown"


@functools.cache
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str | torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


@functools.cache
def versions() -> dict[str, str]:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "absent"
    return {"python": platform.python_version(), "torch": torch.__version__, "triton": triton_version}


def environment(device: str | torch.device) -> dict[str, str]:
    """What a result needs to be compared with another: the device's name, the versions and the commit."""
    return {"device_name": device_name(device), **versions(), "commit": git_commit()}


def synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], object], device: str | torch.device = "cpu", *, repeats: int = 20,
                   warmup: int = 3, budget_s: float = 5.0) -> float:
    """Median wall time of `fn()` over `repeats` synchronised calls (fewer when they exceed `budget_s`)."""
    for _ in range(warmup):  # compilation, caches, probes, allocator
        fn()
    synchronize(device)
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < repeats and (len(samples) < 3 or time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        synchronize(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def interleaved_rounds(calls: Mapping[str, Callable[[], object]], device: str | torch.device = "cpu", *,
                       min_rounds: int = 5, max_rounds: int = 200, budget_s: float = 2.0) -> dict[str, list[float]]:
    """Synchronised wall time of every call in every round: each round runs all the calls in turn (the order rotating
    from round to round), so a slow stretch of a shared machine slows every variant of that round alike and the
    per-round ratios cancel it. `min_rounds` rounds, then more while `budget_s` lasts, at most `max_rounds`. The calls
    must be warm already (compiled, caches filled): nothing here is left out of the timings."""
    if not calls:
        raise ValueError("calls: expected at least one callable")
    if min_rounds < 1 or max_rounds < min_rounds:
        raise ValueError(f"min_rounds, max_rounds: expected 1 <= min_rounds <= max_rounds, got {min_rounds}, "
                         f"{max_rounds}")
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    synchronize(device)
    deadline = time.perf_counter() + budget_s
    done = 0
    while done < max_rounds and (done < min_rounds or time.perf_counter() < deadline):
        for i in range(len(names)):
            name = names[(done + i) % len(names)]
            start = time.perf_counter()
            calls[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
        done += 1
    return times


def copy_bandwidth_gbs(device: str | torch.device) -> float:
    """Measured device-to-device copy bandwidth (read + write bytes per second), the roofline of the norm ops."""
    device = torch.device(device)
    n = (1 << 30) if device.type == "cuda" else (1 << 25)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * n / median_seconds(lambda: dst.copy_(src), device, repeats=10) / 1e9
