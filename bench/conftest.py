"""Shared helpers of the benchmark suites (`pytest bench/ --benchmark-only`).

Every variant of a workload (fused, reference, torch.compile of the reference, ...) is its own pytest-benchmark
measurement in one `group`, run side by side in one process at the model's shapes. pytest-benchmark times each
variant's rounds back to back, so on a shared machine a busy minute lands on one variant only; so once the last
variant of a group has run (still inside its test, its fixtures alive), all the group's variants are timed again in
interleaved rounds (`bench.common.interleaved_rounds`, `--benchmark-max-time` per variant, the same number of rounds
as pytest-benchmark's when a test fixes it). At the end of the session each member's `extra_info` gets those
rounds (`interleaved_s`), the group's ratios (medians of per-round ratios) and, when the spread is too wide to read
a ratio from, `noisy`; they reach `--benchmark-json` and saved runs, and one aligned summary row per group is
printed after pytest-benchmark's own tables (`bench/summary.py`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from bench import summary
from bench.common import copy_bandwidth_gbs, environment, interleaved_rounds, synchronize

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
VARIANTS = [summary.FUSED, summary.REFERENCE, summary.COMPILE]
MIN_ROUNDS = 5  # interleaved rounds of a group whose tests leave the count to pytest-benchmark
_copy_gbs: dict[str, float] = {}


@dataclass
class _Variant:
    call: Callable[[], None]
    device: str
    rounds: int | None


_pending: dict[str, dict[str, _Variant]] = {}  # group -> variant -> its warm call, until the group's last test ends
_interleaved: dict[str, dict[str, list[float]]] = {}  # group -> variant -> seconds per interleaved round


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
    if stats is None:
        return None
    _pending.setdefault(group, {})[variant] = _Variant(call, device, rounds)
    return stats.stats.median


def run_interleaved(max_time_s: float = 1.0) -> None:
    """Time the variants of every pending group in interleaved rounds and forget their calls (and tensors)."""
    pending = dict(_pending)
    _pending.clear()
    for group, variants in pending.items():
        if len(variants) < 2:
            continue
        fixed = [v.rounds for v in variants.values() if v.rounds is not None]
        low = min(fixed) if fixed else MIN_ROUNDS
        devices = {v.device for v in variants.values()}
        times = interleaved_rounds({name: v.call for name, v in variants.items()},
                                   "cuda" if "cuda" in devices else "cpu", min_rounds=low,
                                   max_rounds=low if fixed else 200, budget_s=max_time_s * len(variants))
        _interleaved[group] = times  # rounds aligned across the variants: never mixed with an earlier run's


def _family(item) -> tuple:
    """Tests that differ only in their `variant` parameter: the members of one group, run one after another."""
    callspec = getattr(item, "callspec", None)
    params = {} if callspec is None else {k: v for k, v in callspec.params.items() if k != "variant"}
    return item.path, getattr(item, "originalname", item.name), repr(sorted(params.items(), key=str))


def _as_dicts(benchmarks) -> list[dict]:
    return [{"group": b.group, "name": b.name, "extra_info": b.extra_info,
             "stats": {"median": b.stats.median, "min": b.stats.min} if b.stats and b.stats.data else {}}
            for b in benchmarks]


def _session(config):
    return getattr(config, "_benchmarksession", None)


def _max_time(config) -> float:
    return float(config.getoption("benchmark_max_time", default=1.0) or 1.0)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    # Before the test's fixtures are torn down: the interleaved rounds run in the same setting (threads, caches).
    if _pending and (nextitem is None or _family(nextitem) != _family(item)):
        run_interleaved(_max_time(item.config))
    yield


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    # Before pytest-benchmark writes its JSON and saved runs, so that they carry the rounds and ratios.
    bs = _session(session.config)
    if _pending:  # a run without the teardown hook
        with torch.inference_mode():
            run_interleaved(_max_time(session.config))
    if bs is not None and bs.benchmarks:
        for b in bs.benchmarks:
            rounds = _interleaved.get(b.group or b.name, {}).get(b.extra_info.get("variant"))
            if rounds is not None:
                b.extra_info["interleaved_s"] = [float(f"{t:.6g}") for t in rounds]
        by_group = {g.group: g for g in summary.group_benchmarks(_as_dicts(bs.benchmarks))}
        for b in bs.benchmarks:
            group = by_group.get(b.group or b.name)
            if group is not None:
                b.extra_info.update({k: round(v, 4) for k, v in group.ratios().items()})
                noise = group.noise()
                if noise:
                    b.extra_info["noisy"] = noise
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
    tr.section("cosmos-kernels: median (min) ms of interleaved rounds per group; ratio = median of per-round "
               "other / fused (> 1: fused faster); spread = widest IQR / median")
    for line in summary.format_table(groups):
        tr.write_line(line)


@pytest.fixture(autouse=True)
def _inference_mode():
    with torch.inference_mode():
        yield


def pytest_configure(config):
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
