"""Wan VAE prefix encode on the CPU: diffusers' `AutoencoderKLWan` vs the same VAE after `apply_cosmos_kernels`.

The policy's encode at the tiny checkpoint's 64 x 64 frames with the real 96-wide VAE: the first frame alone, then
two chunks of four frames through one feature cache. The two variants (same weights) run in interleaved rounds;
the ratio reported is the median of the per-round ratios.

    PYTHONPATH=. python -m bench.bench_vae --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics

import torch

from bench.common import interleaved_rounds
from cosmos_kernels.integrations.diffusers import apply_cosmos_kernels
from cosmos_policy.testing import tiny_autoencoder


def _encoder(vae, frames: torch.Tensor):
    num = vae._cached_conv_counts["encoder"]

    def run():
        with torch.no_grad():
            state = [None] * num
            outs = [vae.encoder(frames[:, :, :1], feat_cache=state, feat_idx=[0])]
            for start in range(1, frames.shape[2], 4):
                outs.append(vae.encoder(frames[:, :, start:start + 4], feat_cache=state, feat_idx=[0]))
            return torch.cat(outs, dim=2)

    return run


def run(rounds: int = 5, base_dim: int = 96, size: int = 64) -> dict:
    diffusers_vae = tiny_autoencoder(base_dim=base_dim)
    fused_vae = copy.deepcopy(diffusers_vae)
    apply_cosmos_kernels(fused_vae)
    frames = torch.rand(1, 3, 9, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    calls = {"fused": _encoder(fused_vae, frames), "diffusers": _encoder(diffusers_vae, frames)}
    want, got = calls["diffusers"](), calls["fused"]()  # warm-up, and the parity of what is timed
    rel = ((got - want).norm() / want.norm()).item()
    times = interleaved_rounds(calls, min_rounds=rounds, max_rounds=rounds)
    ratios = [d / f for d, f in zip(times["diffusers"], times["fused"])]
    return {"shape": [1, 3, 9, size, size], "base_dim": base_dim, "threads": torch.get_num_threads(),
            "median_ms": {k: 1e3 * statistics.median(v) for k, v in times.items()},
            "median_ratio_diffusers_over_fused": statistics.median(ratios), "rounds": rounds,
            "relative_difference": rel}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--base-dim", type=int, default=96)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.rounds, args.base_dim, args.size), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
