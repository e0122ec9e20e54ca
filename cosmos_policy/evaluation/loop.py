"""The evaluation loop: episodes go to free simulator workers, and the workers waiting for a chunk are answered by one
batched policy query.

The loop runs in lockstep rounds: a batch is sent once every busy worker has replied. So which observations share a
batch depends only on the episode order and K, never on timing, and a run is reproducible bit for bit (subprocesses
and Ray alike). Each episode's seeds are fixed by the protocol; only the batch size can change the last bits of the
actions (a batched matmul may round differently), which can tell runs with different K apart.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .libero import CHUNK_SIZE, NUM_STEPS_WAIT, EpisodeSpec, query_seed
from .results import ResultStore
from .workers import WorkerFailure


@dataclass
class Timeouts:
    step_s: float = 30.0  # one simulator step (a chunk gets CHUNK_SIZE of them)
    start_s: float = 600.0  # making the environment, reset and the wait steps

    def for_call(self, method: str) -> float:
        return self.start_s if method == "start" else self.step_s * CHUNK_SIZE


@dataclass
class Stats:
    episodes: int = 0
    successes: int = 0
    env_steps: int = 0  # simulator steps, the wait steps included
    queries: int = 0  # observations answered by the policy
    batches: int = 0
    policy_s: float = 0.0
    wall_s: float = 0.0
    replaced_workers: int = 0
    batch_sizes: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        wall = max(self.wall_s, 1e-9)
        return {"episodes": self.episodes, "successes": self.successes, "env_steps": self.env_steps,
                "queries": self.queries, "batches": self.batches, "wall_s": self.wall_s,
                "policy_s": self.policy_s, "env_steps_per_s": self.env_steps / wall,
                "queries_per_s": self.queries / wall, "replaced_workers": self.replaced_workers,
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())}}


@dataclass
class _Active:
    spec: EpisodeSpec
    started: float
    queries: int = 0
    steps: int = 0


def evaluate(episodes: Sequence[EpisodeSpec], pool, policy, store: ResultStore,
             timeouts: Timeouts | None = None, on_episode: Callable[[dict, Stats], None] | None = None) -> Stats:
    """Run `episodes` (those not yet in `store`) on `pool`, appending each finished one to `store`."""
    timeouts = timeouts or Timeouts()
    todo = deque(spec for spec in episodes if not store.done(spec.task_id, spec.trial))
    stats = Stats()
    active: dict[int, _Active] = {}
    busy: dict[int, str] = {}  # slot -> the method it is running
    waiting: dict[int, dict] = {}  # slot -> observation waiting for a chunk
    begin = time.monotonic()

    def submit(slot: int, method: str, arg) -> None:
        if method == "start":
            store.claim()  # the run folder is taken only now, when an episode really starts
        pool.submit(slot, method, arg, timeouts.for_call(method))
        busy[slot] = method

    def finish(slot: int, reply: dict) -> None:
        state = active.pop(slot)
        spec = state.spec
        record = {"suite": spec.suite, "task_id": spec.task_id, "trial": spec.trial, "task": spec.task,
                  "seed": spec.seed, "success": bool(reply["success"]), "steps": int(reply["steps"]),
                  "queries": state.queries, "reason": reply.get("reason"), "digest": reply.get("digest"),
                  "video": reply.get("video"), "wall_s": round(time.monotonic() - state.started, 3)}
        store.append(record)
        stats.episodes += 1
        stats.successes += record["success"]
        if on_episode is not None:
            on_episode(record, stats)

    try:
        while todo or active:
            for slot in range(pool.size):
                if slot not in active and todo:
                    spec = todo.popleft()
                    active[slot] = _Active(spec, time.monotonic())
                    submit(slot, "start", spec)
            for slot, reply in pool.wait():
                method = busy.pop(slot)
                state = active[slot]
                if isinstance(reply, WorkerFailure):
                    reply = {"success": False, "steps": state.steps, "reason": reply.reason, "digest": None}
                    finish(slot, reply)
                    continue
                stats.env_steps += (NUM_STEPS_WAIT if method == "start" else 0) + reply["steps"] - state.steps
                state.steps = reply["steps"]
                if reply["kind"] == "done":
                    finish(slot, reply)
                else:
                    waiting[slot] = reply["observation"]
            if waiting and not busy:
                slots = sorted(waiting)
                seeds = [query_seed(active[s].spec.seed) for s in slots]
                t0 = time.monotonic()
                chunks = policy.infer_batch([waiting[s] for s in slots], seeds)
                stats.policy_s += time.monotonic() - t0
                stats.batches += 1
                stats.queries += len(slots)
                stats.batch_sizes[len(slots)] = stats.batch_sizes.get(len(slots), 0) + 1
                for slot, actions in zip(slots, chunks):
                    active[slot].queries += 1
                    submit(slot, "chunk", np.asarray(actions, dtype=np.float32))
                waiting.clear()
    finally:
        stats.wall_s = time.monotonic() - begin
        stats.replaced_workers = getattr(pool, "replaced", 0)
    return stats
