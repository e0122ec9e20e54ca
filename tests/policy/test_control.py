"""The chunk schedulers, with a stand-in policy whose action i answers "step of the observation + i": a scheduler that
keeps chunks aligned in time executes, at every step, the action whose value is that step."""

from __future__ import annotations

import time

import numpy as np
import pytest

from cosmos_policy.policy.control import AsyncScheduler, ScheduleError, SyncScheduler, check_schedule, inference_delay

CHUNK = 16


class TimedPolicy:
    def __init__(self, latency: float = 0.0):
        self.latency, self.seen = latency, []

    def __call__(self, obs):
        self.seen.append(obs["t"])
        time.sleep(self.latency)
        return {"actions": (obs["t"] + np.arange(CHUNK, dtype=np.float32))[:, None].repeat(7, 1)}


def test_inference_delay_is_the_ceiling():
    assert inference_delay(0.0, 0.05) == 0
    assert inference_delay(0.05, 0.05) == 1
    assert inference_delay(0.051, 0.05) == 2
    assert inference_delay(0.3, 0.1) == 3  # no float surprise at an exact multiple
    with pytest.raises(ValueError, match="dt"):
        inference_delay(0.1, 0)


def test_check_schedule_explains_each_violation():
    assert check_schedule(0.12, 0.05, 8, 16) == 3
    with pytest.raises(ScheduleError, match=r"d = ceil\(latency / dt\) = 3 > executed_steps = 2.*at least 3"):
        check_schedule(0.12, 0.05, 2, 16)
    with pytest.raises(ScheduleError, match=r"executed_steps = 14 > chunk - d = 13.*at most 13"):
        check_schedule(0.12, 0.05, 14, 16)
    with pytest.raises(ScheduleError, match="no solution.*synchronous"):
        check_schedule(0.5, 0.05, 8, 16)  # d = 10 > 16 - 10
    with pytest.raises(ValueError, match="executed_steps"):
        check_schedule(0.1, 0.05, 0, 16)


def test_sync_queries_when_the_chunk_runs_out():
    policy = TimedPolicy()
    scheduler = SyncScheduler(policy)
    actions = [scheduler.act({"t": t})[0] for t in range(40)]
    assert actions == list(range(40))
    assert policy.seen == [0, 16, 32] and scheduler.stats.queries == 3
    half = SyncScheduler(TimedPolicy(), executed_steps=4)
    assert [half.act({"t": t})[0] for t in range(10)] == list(range(10)) and half.stats.queries == 3


def test_async_overlaps_inference_and_discards_the_overlap():
    policy = TimedPolicy(latency=0.05)
    dt = 0.02
    scheduler = AsyncScheduler(policy, dt=dt, executed_steps=8, chunk=CHUNK, expected_latency_s=0.05, pace=True)
    try:
        actions = [scheduler.act({"t": t})[0] for t in range(48)]
    finally:
        scheduler.close()
    assert actions == list(range(48))  # every executed action is the one meant for its step
    stats = scheduler.stats
    assert policy.seen[:3] == [0, 8, 16]  # queries every executed_steps steps, while the chunk executes
    assert stats.stalls == 0 and stats.queries >= 5
    assert min(stats.delays[1:]) >= 1 and stats.discarded == sum(stats.delays)
    summary = stats.summary()
    assert summary["latency_ms"]["p50"] >= 50 and summary["control_hz"] <= 1 / dt * 1.05


def test_async_too_slow_stalls_and_reports_the_rule():
    policy = TimedPolicy(latency=0.2)
    scheduler = AsyncScheduler(policy, dt=0.02, executed_steps=12, chunk=CHUNK, pace=True)
    try:
        with pytest.warns(RuntimeWarning, match="runs out"):
            actions = [scheduler.act({"t": t})[0] for t in range(40)]
    finally:
        scheduler.close()
    assert actions == list(range(40))  # still aligned: the late chunk's stale actions are skipped
    assert scheduler.stats.stalls > 0 and scheduler.stats.violations


def test_async_strict_raises_and_checks_up_front():
    with pytest.raises(ScheduleError, match="at least"):
        AsyncScheduler(TimedPolicy(), dt=0.02, executed_steps=2, chunk=CHUNK, expected_latency_s=0.1)
    scheduler = AsyncScheduler(TimedPolicy(latency=0.1), dt=0.02, executed_steps=4, chunk=CHUNK, strict=True)
    try:
        with pytest.raises(ScheduleError):
            for t in range(3):
                scheduler.act({"t": t})
    finally:
        scheduler.close()
