"""The queue and the batching worker, with a stand-in policy whose answers tell which seed and batch made them."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from cosmos_policy.serve.engine import Busy, InferenceEngine, InputError, batch_sizes


class FakePolicy:
    """`infer_batch` as the real one: checks every observation first, results in order, one seed each."""

    def __init__(self, delay: float = 0.0):
        self.delay, self.calls, self.gate = delay, [], threading.Event()
        self.gate.set()
        self.layout = SimpleNamespace(cameras=("primary_image",), proprio_dim=2)
        self.text = SimpleNamespace(instructions=lambda: ["go"])

    def infer_batch(self, observations, seeds=None, return_future_images=False):
        self.gate.wait(10)
        for obs in observations:
            if obs.get("bad"):
                raise ValueError("obs: missing camera 'primary_image'")
            if obs.get("crash"):
                raise RuntimeError("device lost")
        self.calls.append(list(seeds))
        time.sleep(self.delay)
        return [{"actions": np.full((4, 2), s, np.float32), "value": float(s), "seed": s, "timing": {"total": 1.0}}
                for s in seeds]


@pytest.fixture
def engine():
    policy = FakePolicy()
    eng = InferenceEngine(policy, max_queue=4, max_batch=4)
    yield eng
    eng.close()


def test_batch_sizes():
    assert batch_sizes(1) == (1,)
    assert batch_sizes(8) == (1, 2, 4, 8)
    assert batch_sizes(6) == (1, 2, 4, 6)


def test_requests_waiting_together_run_as_one_batch_in_arrival_order(engine):
    engine.policy.gate.clear()  # hold the worker so that the requests queue up
    engine.start()
    first = engine.submit({}, 10)
    time.sleep(0.1)  # the worker has taken the first one and waits at the gate
    rest = [engine.submit({}, s) for s in (11, 12, 13)]
    engine.policy.gate.set()
    assert [f.result(10)["seed"] for f in [first, *rest]] == [10, 11, 12, 13]
    # three waiting: the largest warmed size that fits is 2, then 1
    assert engine.policy.calls == [[10], [11, 12], [13]]
    assert rest[0].result()["server_timing"]["batch_size"] == 2


def test_beyond_the_queue_a_request_is_busy_at_once(engine):
    engine.policy.gate.clear()
    engine.start()
    engine.submit({}, 0)
    time.sleep(0.1)
    waiting = [engine.submit({}, s) for s in range(1, 5)]  # max_queue = 4
    start = time.perf_counter()
    with pytest.raises(Busy, match="--queue 4"):
        engine.submit({}, 9)
    assert time.perf_counter() - start < 0.5
    engine.policy.gate.set()
    assert [f.result(10)["seed"] for f in waiting] == [1, 2, 3, 4]
    assert engine.stats()["busy"] == 1 and engine.stats()["waiting"] == 0


def test_a_bad_observation_fails_alone_not_its_batch(engine):
    engine.policy.gate.clear()
    engine.start()
    engine.submit({}, 0)
    time.sleep(0.1)
    good, bad, good2 = engine.submit({}, 1), engine.submit({"bad": True}, 2), engine.submit({}, 3)
    engine.policy.gate.set()
    assert good.result(10)["seed"] == 1 and good2.result(10)["seed"] == 3
    with pytest.raises(InputError, match="missing camera"):
        bad.result(10)


def test_an_internal_error_is_reported_and_the_worker_goes_on(engine):
    engine.start()
    with pytest.raises(RuntimeError, match="internal error"):
        engine.submit({"crash": True}, 0).result(10)
    assert engine.submit({}, 5).result(10)["seed"] == 5
    assert engine.stats()["internal_errors"] == 1


def test_seed_is_checked(engine):
    for seed in (-1, 2**32, 1.5, True):
        with pytest.raises(InputError, match="seed"):
            engine.submit({}, seed)


def test_warmup_calls_policy_warmup_with_the_batch_sizes():
    policy = FakePolicy()
    seen = []
    policy.warmup = lambda batch_sizes: seen.append(tuple(batch_sizes))
    InferenceEngine(policy, max_batch=8).warmup()
    assert seen == [(1, 2, 4, 8)]


def test_close_cancels_waiting_requests():
    policy = FakePolicy()
    policy.gate.clear()
    eng = InferenceEngine(policy, max_queue=4, max_batch=1)
    eng.start()
    eng.submit({}, 0)
    time.sleep(0.1)
    waiting = eng.submit({}, 1)
    eng.close(timeout=0.1)  # the worker is held inside the first request
    assert waiting.cancelled()
    policy.gate.set()
    with pytest.raises(Busy, match="shutting down"):
        eng.submit({}, 2)


def test_warmup_passes_the_instructions_when_asked():
    policy = FakePolicy()
    seen = []
    policy.warmup = lambda batch_sizes, instructions=None: seen.append((tuple(batch_sizes), instructions))
    InferenceEngine(policy, max_batch=2).warmup(["a", "b"])
    assert seen == [((1, 2), ["a", "b"])]
