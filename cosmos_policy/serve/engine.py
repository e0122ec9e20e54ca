"""One policy behind a bounded first-in-first-out queue, run by one worker thread.

Requests are answered in arrival order. Requests waiting together at the head of the queue may run as one
`infer_batch` (the same results as one at a time), in the batch sizes warmed up beforehand, so that no client pays a
graph capture. Beyond `max_queue` waiting requests, `submit` refuses at once (`Busy`) instead of letting the queue
grow. The engine takes explicit seeds only: the seed rule belongs to the front ends.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("cosmos_policy.serve")

SEED_LIMIT = 2**32


class Busy(Exception):
    """The queue is full: the request was not accepted."""


class InputError(ValueError):
    """The observation was refused by the policy (missing key, wrong shape, unknown instruction)."""


@dataclass
class _Request:
    observation: Mapping
    seed: int
    future_images: bool
    future: concurrent.futures.Future
    arrived: float = field(default_factory=time.perf_counter)


def batch_sizes(max_batch: int) -> tuple[int, ...]:
    """The batch sizes the engine runs: powers of two up to `max_batch`, and `max_batch` itself."""
    sizes = {1, max_batch}
    size = 2
    while size < max_batch:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


class InferenceEngine:
    """`submit(observation, seed)` -> a future of the policy's result with `server_timing` added."""

    def __init__(self, policy, max_queue: int = 32, max_batch: int = 8):
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"max_queue: expected an int >= 1, got {max_queue!r}")
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch: expected an int >= 1, got {max_batch!r}")
        self.policy, self.max_queue, self.max_batch = policy, max_queue, max_batch
        self.sizes = batch_sizes(max_batch)
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.counters = {"accepted": 0, "served": 0, "input_errors": 0, "internal_errors": 0, "busy": 0,
                         "batches": 0, "cancelled": 0}
        self.running = 0  # requests inside the policy right now

    # -- life cycle -------------------------------------------------------------------------------------------------

    def warmup(self, instructions: list[str] | None = None) -> float:
        """Fill the caches (and capture the graphs, on CUDA) for every batch size the engine runs, for `instructions`
        (default: the policy's choice, its first instruction); returns ms."""
        start = time.perf_counter()
        warm = getattr(self.policy, "warmup", None)
        if callable(warm):
            if instructions is None:
                warm(batch_sizes=self.sizes)
            else:
                warm(batch_sizes=self.sizes, instructions=instructions)
        else:
            obs = synthetic_observation(self.policy)
            if obs is not None:
                on_gpu = getattr(getattr(self.policy, "device", None), "type", "cpu") == "cuda"
                for size in self.sizes if on_gpu else (1,):  # the CPU has nothing to capture per size
                    self.policy.infer_batch([obs] * size, seeds=[0] * size)
        return (time.perf_counter() - start) * 1e3

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="cosmos-policy-engine", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Stop after the running batch; requests still waiting are cancelled."""
        with self._cond:
            self._closed = True
            waiting = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for request in waiting:
            request.future.cancel()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- requests ---------------------------------------------------------------------------------------------------

    def submit(self, observation: Mapping, seed: int, future_images: bool = False) -> concurrent.futures.Future:
        """Queue one observation; raises `Busy` when `max_queue` requests are already waiting."""
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < SEED_LIMIT:
            raise InputError(f"seed: expected an int in [0, 2**32), got {seed!r}")
        request = _Request(observation, int(seed), bool(future_images), concurrent.futures.Future())
        with self._cond:
            if self._closed:
                raise Busy("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                self.counters["busy"] += 1
                raise Busy(f"{len(self._queue)} requests are waiting (--queue {self.max_queue}); try again later")
            self._queue.append(request)
            self.counters["accepted"] += 1
            self._cond.notify()
        return request.future

    def stats(self) -> dict:
        with self._cond:
            return {**self.counters, "waiting": len(self._queue), "running": self.running,
                    "max_queue": self.max_queue, "batch_sizes": list(self.sizes)}

    # -- the worker -------------------------------------------------------------------------------------------------

    def _take(self) -> list[_Request] | None:
        """The next batch: consecutive requests from the head that agree on `future_images`, in a warmed size."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            head = self._queue[0]
            count = 0
            for request in self._queue:
                if request.future_images != head.future_images or count == self.max_batch:
                    break
                count += 1
            size = max(s for s in self.sizes if s <= count)
            taken = [self._queue.popleft() for _ in range(size)]
            live = [r for r in taken if r.future.set_running_or_notify_cancel()]
            self.counters["cancelled"] += len(taken) - len(live)
            self.running = len(live)
            return live

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            if batch:
                try:
                    self._run(batch)
                finally:
                    with self._cond:
                        self.running = 0

    def _run(self, batch: list[_Request]) -> None:
        start = time.perf_counter()
        try:
            results = self.policy.infer_batch([r.observation for r in batch], seeds=[r.seed for r in batch],
                                              return_future_images=batch[0].future_images)
        except Exception as err:  # noqa: BLE001 - one bad request must not fail the others nor stop the worker
            if len(batch) > 1 and isinstance(err, ValueError):
                for request in batch:  # each request gets its own answer, or its own error
                    self._run([request])
                return
            for request in batch:
                self._fail(request, err)
            return
        infer_ms = (time.perf_counter() - start) * 1e3
        with self._cond:
            self.counters["batches"] += 1
            self.counters["served"] += len(batch)
        for request, result in zip(batch, results):
            result = dict(result)
            result["timing"] = dict(result["timing"])
            result["server_timing"] = {"queue_ms": (start - request.arrived) * 1e3, "infer_ms": infer_ms,
                                       "batch_size": len(batch)}
            request.future.set_result(result)

    def _fail(self, request: _Request, err: Exception) -> None:
        if isinstance(err, ValueError):
            key = "input_errors"
            error: Exception = InputError(str(err))
        else:
            key = "internal_errors"
            log.exception("inference failed", exc_info=err)
            error = RuntimeError(f"internal error during inference ({type(err).__name__}); the server goes on")
        with self._cond:
            self.counters[key] += 1
        request.future.set_exception(error)


def synthetic_observation(policy) -> dict | None:
    """A valid observation for warm-up (black images, zero proprio, a known instruction); None without one."""
    known = getattr(policy.text, "instructions", None)
    instructions = list(known() if callable(known) else known or [])
    if not instructions:
        return None
    layout = policy.layout
    size = getattr(policy, "image_size", 224)
    obs: dict = {camera: np.zeros((size, size, 3), dtype=np.uint8) for camera in layout.cameras}
    obs["proprio"] = np.zeros(layout.proprio_dim, dtype=np.float32)
    obs["task_description"] = instructions[0]
    return obs
