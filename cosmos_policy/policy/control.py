"""Action-chunk scheduling on the client side: when to query the policy and which action to execute.

A policy answers an observation with a chunk of H actions, action i meant for i control steps after the
observation. `SyncScheduler` queries when the executed part of the chunk runs out (the robot waits during the
query: the official LIBERO and ALOHA loops). `AsyncScheduler` queries for the next chunk while the current one
executes: a query made at step t returns d steps later, so the new chunk's first d actions are already in the past
and are discarded (the overlap), and it takes over at step t + d. For that to work the inference delay
d = ceil(latency / dt) must satisfy

    d <= executed_steps <= chunk - d

(executed_steps: the steps between two queries). Below d a query would be made before the last one returned;
above chunk - d the current chunk runs out before the next one arrives. `check_schedule` explains a violation;
the asynchronous scheduler measures every query's latency and counts the violations it sees.

The `policy` of a scheduler is any callable observation -> actions (an array of (H, action_dim)) or a dict with
"actions" (what `CosmosPolicy.infer` and the openpi client's `infer` return).
"""

from __future__ import annotations

import concurrent.futures
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

Policy = Callable[[Mapping], object]


class ScheduleError(ValueError):
    """A schedule that cannot keep the robot supplied with actions; the message says why and what to change."""


def inference_delay(latency_s: float, dt: float) -> int:
    """d = ceil(latency / dt): the control steps that pass while one query runs."""
    if not dt > 0:
        raise ValueError(f"dt: expected a control period > 0 s, got {dt!r}")
    if not latency_s >= 0:
        raise ValueError(f"latency: expected >= 0 s, got {latency_s!r}")
    return max(0, math.ceil(latency_s / dt - 1e-9))


def check_schedule(latency_s: float, dt: float, executed_steps: int, chunk: int) -> int:
    """d for `latency_s`, or `ScheduleError` when d <= executed_steps <= chunk - d does not hold."""
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk: expected an int >= 1, got {chunk!r}")
    if isinstance(executed_steps, bool) or not isinstance(executed_steps, int) or not 1 <= executed_steps <= chunk:
        raise ValueError(f"executed_steps: expected an int in 1..{chunk} (the chunk), got {executed_steps!r}")
    d = inference_delay(latency_s, dt)
    what = (f"a query takes {latency_s * 1e3:.0f} ms = {latency_s / dt:.2f} control steps of {dt * 1e3:.0f} ms, "
            f"so d = ceil(latency / dt) = {d}")
    if d > chunk - d and d > executed_steps:
        raise ScheduleError(f"{what}, but a chunk of {chunk} cannot cover two delays (d <= executed_steps <= "
                            f"chunk - d has no solution): use the synchronous scheduler, a longer control period "
                            f"or a faster server")
    if executed_steps < d:
        raise ScheduleError(f"{what} > executed_steps = {executed_steps}: the next query would start before the "
                            f"previous one returned; raise executed_steps to at least {d}")
    if executed_steps > chunk - d:
        raise ScheduleError(f"{what}: executed_steps = {executed_steps} > chunk - d = {chunk - d}, so the chunk "
                            f"runs out {executed_steps + d - chunk} step(s) before the next one arrives; lower "
                            f"executed_steps to at most {chunk - d}")
    return d


def _actions(reply) -> np.ndarray:
    actions = reply["actions"] if isinstance(reply, Mapping) else reply
    actions = np.asarray(actions)
    if actions.ndim != 2 or actions.shape[0] < 1:
        raise ValueError(f"policy: expected actions of shape (chunk, action_dim), got {actions.shape}")
    return actions


@dataclass
class ScheduleStats:
    steps: int = 0
    queries: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    delays: list[int] = field(default_factory=list)  # steps between a query and the use of its chunk
    discarded: int = 0  # overlap actions dropped (asynchronous)
    stalls: int = 0  # steps that had to wait for a chunk (asynchronous: the rule was violated)
    violations: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def summary(self) -> dict:
        wall = time.perf_counter() - self.started
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {"steps": self.steps, "queries": self.queries, "wall_s": wall,
                "control_hz": self.steps / wall if wall > 0 else None,
                "latency_ms": {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
                               "max": float(lat.max())},
                "mean_delay_steps": float(np.mean(self.delays)) if self.delays else None,
                "discarded": self.discarded, "stalls": self.stalls, "violations": len(self.violations)}


class SyncScheduler:
    """Query when the executed part of the chunk runs out; execute `executed_steps` actions (default: all)."""

    def __init__(self, policy: Policy, executed_steps: int | None = None):
        if executed_steps is not None and (isinstance(executed_steps, bool) or not isinstance(executed_steps, int)
                                           or executed_steps < 1):
            raise ValueError(f"executed_steps: expected an int >= 1, got {executed_steps!r}")
        self.policy, self.executed_steps = policy, executed_steps
        self.reset()

    def reset(self) -> None:
        self._chunk: np.ndarray | None = None
        self._index = 0
        self.stats = ScheduleStats()

    def act(self, obs: Mapping) -> np.ndarray:
        """The action for this control step (querying the policy first when the chunk is used up)."""
        horizon = None if self._chunk is None else min(self.executed_steps or len(self._chunk), len(self._chunk))
        if self._chunk is None or self._index >= horizon:
            start = time.perf_counter()
            self._chunk = _actions(self.policy(obs))
            self.stats.latencies_ms.append((time.perf_counter() - start) * 1e3)
            self.stats.queries += 1
            self.stats.delays.append(0)
            self._index = 0
        action = self._chunk[self._index]
        self._index += 1
        self.stats.steps += 1
        return action


class AsyncScheduler:
    """Query for the next chunk every `executed_steps` steps while the current one executes.

    `dt`: the control period; `act` is meant to be called once per period (`pace=True` sleeps to keep that rate,
    as a robot's control loop does). `expected_latency_s`, when given, is checked against the rule up front; each
    query's measured latency is checked as it comes (`strict=True` raises `ScheduleError`, else it is counted and
    warned about once). A chunk that runs out before the next arrives makes `act` wait for it (a stall)."""

    def __init__(self, policy: Policy, dt: float, executed_steps: int, chunk: int, *,
                 expected_latency_s: float | None = None, strict: bool = False, pace: bool = False):
        if expected_latency_s is not None:
            check_schedule(expected_latency_s, dt, executed_steps, chunk)
        else:
            check_schedule(0.0, dt, executed_steps, chunk)  # the arguments themselves
        self.policy, self.dt, self.executed_steps, self.chunk = policy, dt, executed_steps, chunk
        self.strict, self.pace = strict, pace
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunk-query")
        self.reset()

    def reset(self) -> None:
        self._current: np.ndarray | None = None
        self._origin = 0  # the step of the observation the current chunk answers
        self._pending: concurrent.futures.Future | None = None
        self._pending_step = 0
        self._step = 0
        self._next_tick: float | None = None
        self._warned = False
        self.stats = ScheduleStats()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _query(self, obs: Mapping):
        start = time.perf_counter()
        actions = _actions(self.policy(obs))
        return actions, time.perf_counter() - start

    def _adopt(self, result) -> None:
        actions, latency = result
        if len(actions) != self.chunk:
            raise ValueError(f"policy: expected chunks of {self.chunk} actions, got {len(actions)}")
        self.stats.latencies_ms.append(latency * 1e3)
        self.stats.queries += 1
        delay = self._step - self._pending_step
        self.stats.delays.append(delay)
        self.stats.discarded += min(delay, self.chunk)  # the overlap: actions for steps already executed
        self._current, self._origin, self._pending = actions, self._pending_step, None
        try:
            check_schedule(latency, self.dt, self.executed_steps, self.chunk)
        except ScheduleError as err:
            self.stats.violations.append(str(err))
            if self.strict:
                raise
            if not self._warned:
                warnings.warn(str(err), RuntimeWarning, stacklevel=3)
                self._warned = True

    def act(self, obs: Mapping) -> np.ndarray:
        """The action for this control step; queries in the background every `executed_steps` steps."""
        if self.pace:
            now = time.perf_counter()
            if self._next_tick is not None and now < self._next_tick:
                time.sleep(self._next_tick - now)
            self._next_tick = max(now, self._next_tick or now) + self.dt
        if self._current is None:  # the first chunk: nothing to execute meanwhile
            self._pending_step = self._step
            self._adopt(self._query(obs))
        if self._pending is not None and self._pending.done():
            self._adopt(self._pending.result())
        if self._pending is None and self._step - self._origin >= self.executed_steps:
            self._pending, self._pending_step = self._pool.submit(self._query, obs), self._step
        index = self._step - self._origin
        if index >= self.chunk:  # ran out: wait for the next chunk (the rule was violated)
            self.stats.stalls += 1
            self._adopt(self._pending.result())
            index = self._step - self._origin
        action = self._current[min(index, self.chunk - 1)]
        self._step += 1
        self.stats.steps += 1
        return action
