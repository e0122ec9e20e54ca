"""The whole action chunk (every network pass and the sampler updates) as one CUDA graph.

The loop is `cosmos_kernels.sampling.Sampler` (fixed shape, fused step, no host sync). A graph is captured per key:
latent shape (batch size included), instructions and the text tensor with its version (`CosmosDiT.text_versions`, so
an in-place edit of the text, inference-mode tensors included, is a new key rather than a replay of stale K/V), step
count and sigma range, the network's dtype, device, backend and weight versions. It reads the instruction's
cross-attention K/V and the modulation vectors of the fixed sigma schedule from the network's exact caches (pinned for
the graph's life), so every graph is dropped when the network frees those caches (`clear_caches()`,
`load_state_dict()`, `.to()`: its `cache_epoch` moves). Noise and clean latents are copied into static buffers before
each replay.

A capture that fails leaves that key on the eager fused loop (the same `Sampler`, not the float64 `sample()`) with a
warning. Where torch recovers from a failed capture (`capture_failure_recoverable()`), the key is retried after 1, 2,
4, ... (at most 64) more queries. Where it does not (torch 2.12 and older leave the caching allocator with a capture
underway, and the next capture's `empty_cache()` asserts), the first failure turns CUDA graphs off for the whole
process, every `ChunkGraphs` included, with one warning (`process_disabled_reason` says why); the eager fused loop
keeps answering. A capture during which a backend probe or a timed backend choice had to wait is checked afterwards
and captured again when it baked in an unchecked or provisional backend. With `capture=False` the same loop runs
eagerly (how it is tested without a GPU); `capturer` replaces the CUDA capture itself (tests pass a fake one).
A Cosmos-Predict2.5 policy's chunk is the same loop over `FlowUniPCSampler` (rectified flow, `flow.py`).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch.torch_version import TorchVersion

from cosmos_kernels.backends import run_deferred
from cosmos_kernels.sampling import FlowUniPCSampler, Sampler

from ..model.text_versions import tensor_version

MAX_RETRY_DELAY = 64
# torch releases whose caching allocator survives a failed capture: `CUDAGraph::capture_end` ends the pool's
# allocation before reporting the capture error from 2.13 on (pytorch#180395, after 2.11; 2.12 is not assumed)
FIRST_RECOVERING_TORCH = (2, 13)

# Why CUDA graphs are off for this process (a capture failed on a torch that cannot capture again), or None.
process_disabled_reason: str | None = None


def capture_failure_recoverable(version: str | None = None) -> bool:
    """Whether torch (`version`, default the running one) can capture again after a failed CUDA graph capture.
    Pre-releases of the first recovering version count as not recovering."""
    return TorchVersion(version if version is not None else torch.__version__) >= FIRST_RECOVERING_TORCH

Capturer = Callable[[Callable[[], torch.Tensor], torch.device, object], tuple[object, torch.Tensor]]


def cuda_capture(run: Callable[[], torch.Tensor], device: torch.device, pool) -> tuple[object, torch.Tensor]:
    """Warm `run` up eagerly on a side stream (lazy initialisation, cache fills), then capture one call of it."""
    with torch.cuda.device(device):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread-local: another thread's unsafe CUDA call neither breaks this capture nor is broken by it
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            out = run()
    return graph, out


class _Chunk:
    def __init__(self, policy, batch: int, gt: torch.Tensor, context: torch.Tensor):
        layout, network = policy.layout, policy.network
        self.device = policy.device
        if policy.shift is None:
            self.sampler = Sampler(gt.shape, num_steps=policy.num_steps, sigma_min=layout.sigma_min,
                                   sigma_max=layout.sigma_max, solver="2ab", net_dtype=policy.dtype,
                                   device=policy.device)
        self.noise, self.gt = torch.zeros_like(gt), torch.zeros_like(gt)
        self.cond_mask = policy.cond_frames.to(torch.float32).expand(batch, -1).contiguous()
        frames = policy.cond_frames.cpu()
        # host times for the fused network (its modulation cache is keyed by value); device ones otherwise
        self.host_times = [torch.where(frames, 0.0, t).to(torch.float32).expand(batch, -1)
                           for t in self.timesteps().to(torch.float32).tolist()]
        self.use_host_times = getattr(network, "backend", None) == "fused"
        self.network, self.context, self.mask5 = network, context, policy.cond_mask  # held: the graph reads them
        self.graph, self.out = None, None
        self.failures, self.retry_in = 0, 0

    def timesteps(self) -> torch.Tensor:
        return self.sampler.timesteps

    def net_fn(self, net_in: torch.Tensor, timesteps: torch.Tensor, k: int) -> torch.Tensor:
        times = self.host_times[k] if self.use_host_times else timesteps
        return self.network(net_in, times, self.context, self.mask5)

    def run_eager(self) -> torch.Tensor:
        return self.sampler.run(self.net_fn, self.noise, self.gt, self.cond_mask)

    def __call__(self, noise: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        self.noise.copy_(noise)
        self.gt.copy_(gt)
        if self.graph is None or process_disabled_reason is not None:
            return self.run_eager().clone()
        self.graph.replay()
        return self.out.clone()


class _FlowChunk(_Chunk):
    """The chunk of a Predict2.5 policy: `FlowUniPCSampler` from the unscaled noise, the conditional frames clean
    (`gt`, time 0) with velocity `noise - gt`."""

    def __init__(self, policy, batch: int, gt: torch.Tensor, context: torch.Tensor):
        self.flow = FlowUniPCSampler(gt.shape, num_steps=policy.num_steps, shift=policy.shift, device=policy.device)
        super().__init__(policy, batch, gt, context)
        self.cond = policy.cond_frames.view(1, 1, -1, 1, 1)
        self.cond_frames = policy.cond_frames

    def timesteps(self) -> torch.Tensor:
        return self.flow.timesteps

    def net_fn(self, x: torch.Tensor, timesteps: torch.Tensor, k: int) -> torch.Tensor:
        times = self.host_times[k] if self.use_host_times else torch.where(self.cond_frames, 0.0, timesteps[:, None])
        velocity = self.network(torch.where(self.cond, self.gt, x), times, self.context, self.mask5).float()
        return torch.where(self.cond, self.clean_velocity, velocity)

    def run_eager(self) -> torch.Tensor:
        self.clean_velocity = self.noise - self.gt
        return self.flow.run(self.net_fn, self.noise)


class ChunkGraphs:
    def __init__(self, policy, max_graphs: int = 4, capture: bool = True, capturer: Capturer | None = None):
        self.policy, self.max_graphs, self.capture = policy, max_graphs, capture
        self.capturer: Capturer = capturer if capturer is not None else cuda_capture
        self._chunks: OrderedDict[tuple, _Chunk] = OrderedDict()
        self._pool = None
        self._epoch = getattr(policy.network, "cache_epoch", 0)
        self.failures = 0  # failed captures so far
        self.last_error: str | None = None  # of the latest failed capture, None once a capture succeeds
        self.invalidations = 0

    def __len__(self) -> int:
        """Captured graphs in use (none once CUDA graphs are off for the process)."""
        if process_disabled_reason is not None:
            return 0
        return sum(chunk.graph is not None for chunk in self._chunks.values())

    @property
    def disabled_reason(self) -> str | None:
        """Why queries run eagerly: graphs off for the process, or the latest capture failure (None after a success)."""
        return process_disabled_reason if process_disabled_reason is not None else self.last_error

    def invalidate(self) -> None:
        """Drop every captured graph (and its memory pool)."""
        if self._chunks:
            self.invalidations += 1
        self._chunks.clear()
        self._pool = None

    def key(self, gt: torch.Tensor, context: torch.Tensor, instructions: list[str]) -> tuple:
        """Everything that changes what a capture reads or computes."""
        p, network = self.policy, self.policy.network
        weights = network.weights_key() if hasattr(network, "weights_key") else (p.dtype, p.device)
        versions = getattr(network, "text_versions", None)
        version = versions.version(context) if versions is not None else tensor_version(context)
        text = (id(context), version, tuple(context.shape), context.dtype, context.device)
        return (tuple(gt.shape), tuple(instructions), text, p.num_steps, p.layout.name, p.layout.sigma_min,
                p.layout.sigma_max, p.dtype, str(p.device), getattr(network, "backend", None), weights,
                getattr(p, "shift", None))

    def run(self, noise: torch.Tensor, gt: torch.Tensor, context: torch.Tensor, instructions: list[str]):
        epoch = getattr(self.policy.network, "cache_epoch", 0)
        if epoch != self._epoch:  # the network freed what the graphs read
            self.invalidate()
            self._epoch = epoch
        key = self.key(gt, context, instructions)
        chunk = self._chunks.get(key)
        if chunk is None:
            kind = _Chunk if getattr(self.policy, "shift", None) is None else _FlowChunk
            chunk = self._chunks[key] = kind(self.policy, noise.shape[0], gt, context)
            while len(self._chunks) > self.max_graphs:
                self._chunks.popitem(last=False)
        self._chunks.move_to_end(key)
        if self.capture and chunk.graph is None and process_disabled_reason is None:
            if chunk.retry_in > 0:
                chunk.retry_in -= 1
            else:
                chunk.noise.copy_(noise)
                chunk.gt.copy_(gt)
                self._capture(chunk)
        return chunk(noise, gt)

    def _capture(self, chunk: _Chunk) -> None:
        if self._pool is None and chunk.device.type == "cuda":
            self._pool = torch.cuda.graph_pool_handle()
        error, raised = None, False
        for _ in range(2):  # a second capture when the first one had to bake in an unchecked backend
            run_deferred()  # nothing pending may be blamed on this capture
            try:
                graph, out = self.capturer(chunk.run_eager, chunk.device, self._pool)
            except Exception as err:  # keep serving: this key runs the eager fused loop for now
                run_deferred()
                error, raised = f"{type(err).__name__}: {err}", True
                break
            if run_deferred():
                chunk.graph, chunk.out, chunk.failures = graph, out, 0
                self.last_error = None
                return
            error = "a backend probe or choice deferred during the capture invalidated it"
        chunk.failures += 1
        self.failures += 1
        self.last_error = error
        if raised and not capture_failure_recoverable():  # a capture that raised may leave the allocator mid-capture
            _disable_for_process(error)
            return
        chunk.retry_in = min(2 ** (chunk.failures - 1), MAX_RETRY_DELAY)
        warnings.warn(f"CUDA graph capture failed, running the fused loop eagerly; retrying after "
                      f"{chunk.retry_in} more queries ({error})", RuntimeWarning, stacklevel=4)


def _disable_for_process(error: str) -> None:
    global process_disabled_reason
    if process_disabled_reason is not None:
        return
    process_disabled_reason = (f"a CUDA graph capture failed on torch {torch.__version__}, which cannot capture again "
                               f"after a failure ({error})")
    warnings.warn(f"CUDA graph capture failed, running the fused loop eagerly; CUDA graphs are off for this process "
                  f"(torch {torch.__version__} cannot capture again after a failed capture; torch "
                  f"{'.'.join(map(str, FIRST_RECOVERING_TORCH))} can) ({error})", RuntimeWarning, stacklevel=5)
