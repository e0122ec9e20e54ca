"""Shared helpers of the benchmark suites (`pytest bench/ --benchmark-only`).

Every suite times its variants side by side in one process (fused vs reference vs torch.compile of the
reference), as medians over repeats, and stores the ratios in `benchmark.extra_info`; the table of all
ratios is printed at the end of the session.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.utils.benchmark as tbench

_ROWS: list[dict] = []

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def median_seconds(fn, min_run_time: float = 0.5) -> float:
    """Median wall time of `fn()` (CUDA-synchronised by torch.utils.benchmark)."""
    fn()  # warm-up: compilation, caches, probes
    return tbench.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median


def interleaved_medians(fns: dict[str, object], rounds: int = 30, inner: int = 3) -> dict[str, float]:
    """Median seconds per call of each function, timed in interleaved rounds so that load from other
    processes falls on every variant alike (CUDA-synchronised)."""
    import statistics
    import time

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for fn in fns.values():
        fn()  # warm-up: compilation, caches, probes
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            sync()
            samples[name].append((time.perf_counter() - start) / inner)
    return {k: statistics.median(v) for k, v in samples.items()}


def compiled(fn):
    """torch.compile of a reference function, the baseline a fused kernel must match."""
    return torch.compile(fn, dynamic=False, fullgraph=True)


def record(benchmark, name: str, times: dict[str, float], **extra) -> None:
    """Store each variant's median and the ratios of the fused variant against the others."""
    fused = times["fused"]
    info = {f"{k}_ms": v * 1e3 for k, v in times.items()}
    for k, v in times.items():
        if k != "fused":
            info[f"speedup_vs_{k}"] = v / fused
    info.update(extra)
    benchmark.extra_info.update(info)
    _ROWS.append({"name": name, **info})


def copy_bandwidth_gbs(device: torch.device) -> float:
    """Measured device-to-device copy bandwidth (read + write bytes per second), for roofline ratios."""
    n = (1 << 28) if device.type == "cuda" else (1 << 25)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    t = median_seconds(lambda: dst.copy_(src), 0.3)
    return 2 * n / t / 1e9


def pytest_terminal_summary(terminalreporter):
    if not _ROWS:
        return
    tr = terminalreporter
    tr.section("cosmos-kernels: medians and speedups (fused = 1.0)")
    keys = sorted({k for r in _ROWS for k in r if k != "name"})
    tr.write_line("name | " + " | ".join(keys))
    for r in _ROWS:
        cells = [f"{r[k]:.3f}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys]
        tr.write_line(f"{r['name']} | " + " | ".join(cells))


@pytest.fixture(autouse=True)
def _inference_mode():
    with torch.inference_mode():
        yield


def pytest_configure(config):
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
