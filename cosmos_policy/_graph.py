"""The whole action chunk (every network pass and the sampler updates) as one CUDA graph.

The loop is `cosmos_kernels.sampling.Sampler` (fixed shape, fused step, no host sync; fp32 state, which matches the
float64 `sample()` to about 1e-6). A graph is captured per (batch size, instructions): the instruction's cross-attention
K/V and the modulation vectors of the fixed sigma schedule come from the network's exact caches (the per-pass times
are handed to the fused network as host tensors, which it caches by value) and stay pinned for the graph's life. Noise
and clean latents are copied into static buffers before each replay.

With `capture=False` the same loop runs eagerly (that is how it is tested without a GPU).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

import torch

from cosmos_kernels.sampling import Sampler, sample


class _Chunk:
    def __init__(self, policy, batch: int, gt: torch.Tensor, context: torch.Tensor):
        layout, network = policy.layout, policy.network
        self.sampler = Sampler(gt.shape, num_steps=policy.num_steps, sigma_min=layout.sigma_min,
                               sigma_max=layout.sigma_max, solver="2ab", net_dtype=policy.dtype,
                               device=policy.device)
        self.noise, self.gt = torch.zeros_like(gt), torch.zeros_like(gt)
        self.cond_mask = policy._cond_frames.to(torch.float32).expand(batch, -1).contiguous()
        frames = policy._cond_frames.cpu()
        # host times for the fused network (its modulation cache is keyed by value); device ones otherwise
        self.host_times = [torch.where(frames, 0.0, t).to(torch.float32).expand(batch, -1)
                           for t in self.sampler.timesteps.to(torch.float32).tolist()]
        self.use_host_times = getattr(network, "backend", None) == "fused"
        self.network, self.context, self.mask5 = network, context, policy._cond_mask
        self.graph, self.out = None, None

    def net_fn(self, net_in: torch.Tensor, timesteps: torch.Tensor, k: int) -> torch.Tensor:
        times = self.host_times[k] if self.use_host_times else timesteps
        return self.network(net_in, times, self.context, self.mask5)

    def run_eager(self) -> torch.Tensor:
        return self.sampler.run(self.net_fn, self.noise, self.gt, self.cond_mask)

    def capture(self, pool) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: fills the caches, lazy initialisation happens outside
            for _ in range(2):
                self.run_eager()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            self.out = self.run_eager()
        self.graph = graph

    def __call__(self, noise: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        self.noise.copy_(noise)
        self.gt.copy_(gt)
        if self.graph is None:
            return self.run_eager().clone()
        self.graph.replay()
        return self.out.clone()


class ChunkGraphs:
    def __init__(self, policy, max_graphs: int = 4, capture: bool = True):
        self.policy, self.max_graphs, self.capture = policy, max_graphs, capture
        self._chunks: OrderedDict[tuple, _Chunk] = OrderedDict()
        self._pool = None
        self.disabled_reason: str | None = None
        self.failures = 0

    def __len__(self) -> int:
        return len(self._chunks)

    def run(self, noise: torch.Tensor, gt: torch.Tensor, context: torch.Tensor, instructions: list[str]):
        if self.disabled_reason is not None:
            return self._fallback(noise, gt, context)
        key = (noise.shape[0], tuple(instructions))
        chunk = self._chunks.get(key)
        if chunk is None:
            try:
                chunk = _Chunk(self.policy, noise.shape[0], gt, context)
                if self.capture:
                    chunk.noise.copy_(noise)
                    chunk.gt.copy_(gt)
                    if self._pool is None:
                        self._pool = torch.cuda.graph_pool_handle()
                    chunk.capture(self._pool)
            except Exception as err:  # keep serving: an uncapturable setup falls back to the checked sampler
                self.disabled_reason = f"{type(err).__name__}: {err}"
                warnings.warn(f"CUDA graph capture failed, running eagerly ({self.disabled_reason})", stacklevel=3)
                return self._fallback(noise, gt, context)
            self._chunks[key] = chunk
            while len(self._chunks) > self.max_graphs:
                self._chunks.popitem(last=False)
        self._chunks.move_to_end(key)
        return chunk(noise, gt)

    def _fallback(self, noise, gt, context):
        p, layout = self.policy, self.policy.layout
        return sample(p._x0_fn(gt, context), noise, num_steps=p.num_steps, sigma_min=layout.sigma_min,
                      sigma_max=layout.sigma_max, solver="2ab")
