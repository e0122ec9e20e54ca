"""Shared helpers of the benchmark suites (`pytest bench/ --benchmark-only`).

Every variant of a workload (fused, reference, torch.compile of the reference, ...) is its own pytest-benchmark
measurement in one `group`, run side by side in one process at the model's shapes. At the end of the session the
ratios of each group (read from pytest-benchmark's medians) are written into every member's `extra_info`, so they
reach `--benchmark-json` and saved runs, and one aligned summary row per group is printed after pytest-benchmark's
own tables (`bench/summary.py`).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch

from bench import summary
from bench.common import copy_bandwidth_gbs, environment, synchronize

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
VARIANTS = [summary.FUSED, summary.REFERENCE, summary.COMPILE]
_copy_gbs: dict[str, float] = {}


def compiled(fn):
    """torch.compile of a reference function, the baseline a fused kernel must match."""
    return torch.compile(fn, dynamic=False, fullgraph=True)


def copy_gbs(device: str) -> float:
    """The device's measured copy bandwidth, once per session."""
    if device not in _copy_gbs:
        _copy_gbs[device] = copy_bandwidth_gbs(device)
    return _copy_gbs[device]


def measure(benchmark, group: str, variant: str, fn: Callable[[], object], *, device: str = "cpu",
            rounds: int | None = None, warmup: int = 1, **extra) -> float | None:
    """Time `fn` as the `variant` member of `group`; returns pytest-benchmark's median in seconds (None when
    benchmarks are disabled). `rounds=None` lets pytest-benchmark choose (`--benchmark-max-time` and friends)."""
    benchmark.group = group
    benchmark.extra_info.update(variant=variant, device=device, **environment(device), **extra)
    for _ in range(warmup):  # compilation, caches, probes: never inside the measured rounds
        fn()
    synchronize(device)

    def call():
        fn()
        synchronize(device)

    if rounds is None:
        benchmark(call)
    else:
        benchmark.pedantic(call, rounds=rounds, iterations=1)
    stats = getattr(benchmark, "stats", None)
    return stats.stats.median if stats else None


def _as_dicts(benchmarks) -> list[dict]:
    return [{"group": b.group, "name": b.name, "extra_info": b.extra_info,
             "stats": {"median": b.stats.median} if b.stats and b.stats.data else {}} for b in benchmarks]


def _session(config):
    return getattr(config, "_benchmarksession", None)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    # Before pytest-benchmark writes its JSON and saved runs, so that they carry the ratios.
    bs = _session(session.config)
    if bs is not None and bs.benchmarks:
        by_group = {g.group: g for g in summary.group_benchmarks(_as_dicts(bs.benchmarks))}
        for b in bs.benchmarks:
            group = by_group.get(b.group or b.name)
            if group is not None:
                b.extra_info.update({k: round(v, 4) for k, v in group.ratios().items()})
    yield


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter):
    bs = _session(terminalreporter.config)
    if bs is None or not bs.benchmarks:
        return
    groups = summary.group_benchmarks(_as_dicts(bs.benchmarks))
    if not groups:
        return
    tr = terminalreporter
    tr.section("cosmos-kernels: pytest-benchmark medians (ms) per group; ratio = other / fused (> 1: fused faster)")
    for line in summary.format_table(groups):
        tr.write_line(line)


@pytest.fixture(autouse=True)
def _inference_mode():
    with torch.inference_mode():
        yield


def pytest_configure(config):
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
