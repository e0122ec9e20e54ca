"""The whole action chunk (every network pass and the sampler updates) as one CUDA graph.

A graph is captured per (batch size, instructions): the instruction's cross-attention K/V and the modulation vectors
of the fixed sigma schedule come from the network's exact caches and are pinned for the graph's life. Noise and clean
latents are copied into static buffers before each replay. The update arithmetic is the one of
`cosmos_kernels.sampling.sample()` (same float64 coefficient table), without its host-side input checks, which
cannot run inside a capture.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

import torch

from cosmos_kernels.sampling import multistep_plan


class ChunkGraphs:
    def __init__(self, policy, max_graphs: int = 4):
        self.policy = policy
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[tuple, tuple] = OrderedDict()
        self._pool = None
        self.disabled_reason: str | None = None

    def __len__(self) -> int:
        return len(self._graphs)

    def run(self, noise: torch.Tensor, gt: torch.Tensor, context: torch.Tensor, instructions: list[str]):
        if self.disabled_reason is not None:
            return self._eager(noise, gt, context)
        key = (noise.shape[0], tuple(instructions))
        entry = self._graphs.get(key)
        if entry is None:
            try:
                entry = self._capture(noise, gt, context)
            except Exception as err:  # keep serving: an uncapturable setup falls back to eager execution
                self.disabled_reason = f"{type(err).__name__}: {err}"
                warnings.warn(f"CUDA graph capture failed, running eagerly ({self.disabled_reason})", stacklevel=3)
                return self._eager(noise, gt, context)
            self._graphs[key] = entry
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
        graph, static_noise, static_gt, out, _context = entry
        static_noise.copy_(noise)
        static_gt.copy_(gt)
        graph.replay()
        return out.clone()

    def _eager(self, noise, gt, context):
        return self._loop(self.policy._x0_fn_float(gt, context), noise)

    def _loop(self, x0_fn, noise: torch.Tensor) -> torch.Tensor:
        p, layout = self.policy, self.policy.layout
        plan = multistep_plan("2ab", p.num_steps, layout.sigma_min, layout.sigma_max)
        sigmas, coeffs = plan.sigmas.tolist(), plan.coeffs.tolist()
        x, history = noise.double(), []
        for k, sigma in enumerate(sigmas):
            x0 = x0_fn(x.to(noise.dtype), sigma).double()
            if k == len(sigmas) - 1:
                return x0.to(noise.dtype)
            a, *b = coeffs[k]
            terms = [x0, *reversed(history[-2:])]
            x = a * x
            for weight, term in zip(b, terms):
                if weight != 0.0:
                    x = x + weight * term
            history.append(x0)
        raise AssertionError("unreachable")

    def _capture(self, noise, gt, context):
        static_noise, static_gt = noise.clone(), gt.clone()
        x0_fn = self.policy._x0_fn_float(static_gt, context)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: fills the caches and lets lazy initialisation happen outside
            for _ in range(2):
                self._loop(x0_fn, static_noise)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self._loop(x0_fn, static_noise)
        return graph, static_noise, static_gt, out, context
