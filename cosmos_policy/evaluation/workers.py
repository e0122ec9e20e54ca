"""Simulator workers and the policy behind them: K subprocesses on this machine, or Ray actors on a cluster.

A pool runs one `EpisodeRunner` per slot and speaks to it by method name (`start`, `chunk`) with a deadline per call.
A worker that dies or misses its deadline is killed and replaced, and its call answers with a `WorkerFailure`, so
the evaluation records that episode as failed with the reason and goes on.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_connections

import numpy as np

from ..errors import UsageError, missing_extra


@dataclass
class WorkerFailure:
    """A call that got no reply: the worker crashed or hung (it has been replaced)."""

    reason: str


# -- subprocesses -------------------------------------------------------------------------------------------------


def _serve(conn) -> None:
    """A worker process: run `EpisodeRunner` calls from the pipe until told to stop (None) or the pipe closes."""
    from .libero import EpisodeRunner

    try:
        runner = EpisodeRunner()
    except BaseException as err:
        conn.send(("error", f"{type(err).__name__}: {err}"))
        return
    conn.send(("ready", os.getpid()))
    try:
        while True:
            try:
                message = conn.recv()
            except EOFError:
                break
            if message is None:
                break
            method, arg = message
            try:
                reply = getattr(runner, method)(arg)
            except Exception as err:  # a bug in the runner: report it as this call's failure
                reply = WorkerFailure(f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}")
            conn.send(reply)
    finally:
        runner.close()


class _Process:
    def __init__(self, ctx, ready_timeout: float):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child,), daemon=True)
        self.process.start()
        child.close()
        if not self.conn.poll(ready_timeout):
            self.kill()
            raise RuntimeError(f"simulator worker did not start within {ready_timeout:.0f} s")
        try:
            kind, detail = self.conn.recv()
        except (EOFError, OSError):
            self.kill()
            raise RuntimeError(f"simulator worker exited while starting (exit code {self.process.exitcode})") from None
        if kind == "error":
            self.kill()
            raise UsageError(f"simulator worker: {detail}")

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.process.join(timeout=10)
        self.kill()


class SubprocessPool:
    """K simulator processes (spawned: the parent's threads and GL state stay out of them)."""

    def __init__(self, size: int, ready_timeout: float = 300.0):
        self.size = size
        self._ctx = mp.get_context("spawn")
        self._ready_timeout = ready_timeout
        self._workers = [_Process(self._ctx, ready_timeout) for _ in range(size)]
        self._deadline: dict[int, float] = {}
        self.replaced = 0

    def submit(self, slot: int, method: str, arg, timeout: float) -> None:
        self._workers[slot].conn.send((method, arg))
        self._deadline[slot] = time.monotonic() + timeout

    def wait(self, timeout: float | None = None) -> list[tuple[int, object]]:
        """Replies of the calls that finished (waits until at least one has, or a deadline passes)."""
        if not self._deadline:
            return []
        now = time.monotonic()
        limit = min(self._deadline.values()) - now
        limit = max(0.0, limit if timeout is None else min(timeout, limit))
        by_conn = {self._workers[s].conn: s for s in self._deadline}
        ready = wait_connections(list(by_conn), timeout=limit)
        out: list[tuple[int, object]] = []
        for conn in ready:
            slot = by_conn[conn]
            try:
                reply = conn.recv()
            except (EOFError, OSError):
                code = self._workers[slot].process.exitcode
                reply = WorkerFailure(f"simulator worker crashed (exit code {code})")
                self._replace(slot)
            del self._deadline[slot]
            out.append((slot, reply))
        now = time.monotonic()
        for slot, deadline in list(self._deadline.items()):
            if now >= deadline:
                del self._deadline[slot]
                self._replace(slot)
                out.append((slot, WorkerFailure("simulator worker hung past its time limit")))
        return out

    def _replace(self, slot: int) -> None:
        self._workers[slot].kill()
        self._workers[slot] = _Process(self._ctx, self._ready_timeout)
        self.replaced += 1

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers]

    def close(self) -> None:
        for worker in self._workers:
            worker.stop()
        self._workers = []


# -- Ray ------------------------------------------------------------------------------------------------------------


def init_ray(address: str | None):
    """Connect to the cluster at `address`, or start a local one (no dashboard) when it is empty."""
    try:
        import ray
    except ImportError:
        raise missing_extra("ray", "ray") from None
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    return ray


class RayPool:
    """K simulator actors (`EpisodeRunner` as a Ray actor), spread by Ray's scheduler over the cluster's CPUs."""

    def __init__(self, size: int, ray):
        from .libero import EpisodeRunner

        self.size, self._ray = size, ray
        cpus = ray.cluster_resources().get("CPU", 1.0)
        # fractional CPUs let more simulators than cores share a small cluster instead of waiting forever
        self._actor_class = ray.remote(num_cpus=min(1.0, cpus / size), max_restarts=0)(EpisodeRunner)
        self._actors = [self._actor_class.remote() for _ in range(size)]
        self._calls: dict[int, tuple[object, float]] = {}
        self.replaced = 0

    def submit(self, slot: int, method: str, arg, timeout: float) -> None:
        ref = getattr(self._actors[slot], method).remote(arg)
        self._calls[slot] = (ref, time.monotonic() + timeout)

    def wait(self, timeout: float | None = None) -> list[tuple[int, object]]:
        if not self._calls:
            return []
        now = time.monotonic()
        limit = min(d for _, d in self._calls.values()) - now
        limit = max(0.0, limit if timeout is None else min(timeout, limit))
        by_ref = {ref: slot for slot, (ref, _) in self._calls.items()}
        ready, _ = self._ray.wait(list(by_ref), num_returns=1, timeout=limit)
        if ready:  # take every call that is already done, not only the first
            ready, _ = self._ray.wait(list(by_ref), num_returns=len(by_ref), timeout=0)
        out: list[tuple[int, object]] = []
        for ref in ready:
            slot = by_ref[ref]
            del self._calls[slot]
            try:
                reply = self._ray.get(ref)
            except Exception as err:  # the actor died (RayActorError) or the call raised
                reply = WorkerFailure(f"simulator actor failed: {type(err).__name__}")
                self._replace(slot)
            out.append((slot, reply))
        now = time.monotonic()
        for slot, (_, deadline) in list(self._calls.items()):
            if now >= deadline:
                del self._calls[slot]
                self._replace(slot)
                out.append((slot, WorkerFailure("simulator actor hung past its time limit")))
        return out

    def _replace(self, slot: int) -> None:
        self._ray.kill(self._actors[slot], no_restart=True)
        self._actors[slot] = self._actor_class.remote()
        self.replaced += 1

    def close(self) -> None:
        for actor in self._actors:
            try:
                self._ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        self._actors = []


# -- the policy -----------------------------------------------------------------------------------------------------


class LocalPolicy:
    """The policy in this process: a batch of observations -> their action chunks."""

    def __init__(self, policy):
        self.policy = policy

    def warmup(self, batch_sizes: Sequence[int]) -> None:
        if hasattr(self.policy, "warmup"):
            self.policy.warmup(batch_sizes=tuple(batch_sizes))

    def infer_batch(self, observations: list[dict], seeds: list[int]) -> list[np.ndarray]:
        results = self.policy.infer_batch(observations, seeds=seeds)
        return [np.asarray(r["actions"], dtype=np.float32) for r in results]

    def close(self) -> None:
        pass


class _PolicyActor:
    """Loads the policy inside a Ray actor (one per GPU, or one on the CPU)."""

    def __init__(self, loader: Callable[[], object], threads: int):
        import torch

        # Ray caps an actor's threads at its CPU share; the driver's count keeps the CPU matmuls' rounding the same
        torch.set_num_threads(threads)
        self.policy = LocalPolicy(loader())

    def warmup(self, batch_sizes):
        self.policy.warmup(batch_sizes)

    def infer_batch(self, observations, seeds):
        return self.policy.infer_batch(observations, seeds)


class RayPolicy:
    """The policy in Ray actors: one per GPU of the cluster (up to `max_actors`), else one CPU actor.

    A batch is split evenly over the actors; each sample keeps its seed, so the actions do not depend on the split."""

    def __init__(self, ray, loader: Callable[[], object], device: str, max_actors: int):
        self._ray = ray
        gpus = int(ray.cluster_resources().get("GPU", 0)) if device != "cpu" else 0
        if gpus:
            actor = ray.remote(num_gpus=1, num_cpus=0)(_PolicyActor)
            count = max(1, min(gpus, max_actors))
        else:
            actor = ray.remote(num_cpus=0)(_PolicyActor)
            count = 1
        import torch

        self._actors = [actor.remote(loader, torch.get_num_threads()) for _ in range(count)]

    def warmup(self, batch_sizes: Sequence[int]) -> None:
        sizes = sorted({max(1, -(-b // len(self._actors))) for b in batch_sizes})
        self._ray.get([a.warmup.remote(sizes) for a in self._actors])

    def infer_batch(self, observations: list[dict], seeds: list[int]) -> list[np.ndarray]:
        parts = np.array_split(np.arange(len(observations)), min(len(self._actors), len(observations)))
        refs = [actor.infer_batch.remote([observations[i] for i in part], [seeds[i] for i in part])
                for actor, part in zip(self._actors, parts)]
        return [chunk for result in self._ray.get(refs) for chunk in result]

    def close(self) -> None:
        for actor in self._actors:
            self._ray.kill(actor, no_restart=True)
        self._actors = []
