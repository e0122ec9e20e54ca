"""The evaluation loop on a simulated pool: batching, seeds, resuming, failed workers (no simulator needed)."""

from __future__ import annotations

import numpy as np

from cosmos_policy.evaluation.libero import CHUNK_SIZE, EpisodeSpec
from cosmos_policy.evaluation.loop import evaluate
from cosmos_policy.evaluation.results import ResultStore
from cosmos_policy.evaluation.workers import WorkerFailure


def spec(task_id, trial, seed=195):
    return EpisodeSpec("libero_10", task_id, trial, f"task {task_id}", "x.bddl", np.zeros(3), 48, seed)


class FakePool:
    """Episode (task, trial) lasts 1 + trial chunks; trial 9 crashes its worker."""

    def __init__(self, size):
        self.size, self.calls, self.pending, self.replaced = size, [], [], 0
        self.state = {}

    def submit(self, slot, method, arg, timeout):
        self.calls.append((slot, method))
        if method == "start":
            self.state[slot] = [arg, 0]
            reply = {"kind": "query", "observation": {"trial": arg.trial}, "steps": 0}
        else:
            episode = self.state[slot]
            episode[1] += 1
            steps = episode[1] * CHUNK_SIZE
            if episode[0].trial == 9:
                reply = WorkerFailure("simulator worker crashed (exit code -9)")
                self.replaced += 1
            elif episode[1] > episode[0].trial:
                reply = {"kind": "done", "success": episode[0].trial % 2 == 0, "steps": steps, "digest": "d",
                         "reason": None}
            else:
                reply = {"kind": "query", "observation": {"trial": episode[0].trial}, "steps": steps}
        self.pending.append((slot, reply))

    def wait(self, timeout=None):
        out, self.pending = self.pending, []
        return out


class RecordingPolicy:
    def __init__(self):
        self.batches = []

    def infer_batch(self, observations, seeds):
        self.batches.append(([o["trial"] for o in observations], list(seeds)))
        return [np.zeros((CHUNK_SIZE, 7), np.float32) for _ in observations]


def test_batches_seeds_and_records(tmp_path):
    store = ResultStore(tmp_path, {"seed": 195})
    policy = RecordingPolicy()
    stats = evaluate([spec(0, t) for t in range(3)], FakePool(3), policy, store)
    # all three workers wait at once: one batch of three, then the two still running, then the last one
    assert policy.batches[0] == ([0, 1, 2], [195, 195, 195])
    assert [len(b[0]) for b in policy.batches] == [3, 2, 1]
    assert stats.episodes == 3 and stats.successes == 2 and stats.queries == 6
    by_trial = {r["trial"]: r for r in store.records}
    assert [by_trial[t]["queries"] for t in range(3)] == [1, 2, 3]
    assert by_trial[1]["success"] is False and by_trial[2]["steps"] == 3 * CHUNK_SIZE
    assert stats.env_steps == 3 * 10 + (1 + 2 + 3) * CHUNK_SIZE


def test_resume_skips_finished_episodes(tmp_path):
    store = ResultStore(tmp_path, {"seed": 195})
    store.append({"task_id": 0, "trial": 1, "success": True, "steps": 5, "seed": 195, "task": "task 0"})
    pool = FakePool(2)
    evaluate([spec(0, t) for t in range(3)], pool, RecordingPolicy(), store)
    started = sorted(s.trial for s, _ in pool.state.values())
    assert started == [0, 2]
    assert len(store.episodes_path.read_text().splitlines()) == 3


def test_failed_worker_marks_its_episode_failed_and_goes_on(tmp_path):
    store = ResultStore(tmp_path, {"seed": 195})
    stats = evaluate([spec(0, 9), spec(0, 0)], FakePool(1), RecordingPolicy(), store)
    by_trial = {r["trial"]: r for r in store.records}
    assert by_trial[9]["success"] is False and "crashed" in by_trial[9]["reason"]
    assert by_trial[0]["success"] is True and by_trial[0]["reason"] is None
    assert stats.replaced_workers == 1
