"""The Wan 2.1 VAE (diffusers' `AutoencoderKLWan`, 96 wide, random weights) on the CPU: patched with cosmos_kernels
("fused") vs diffusers' modules ("reference") vs `torch.compile` of diffusers' encoder / decoder ("compile").

Workloads, encode and decode each:
- "policy": what the policy encodes, at the demo's 64 x 64 frames: the first frame alone, then two chunks of four
  frames through one feature cache (the encoder's own chunking, called as `PolicyVAE` calls it); decode: the three
  latent frames back to nine frames.
- "video": a short Wan video through `encode` / `decode` as a video pipeline calls them (five 48 x 80 frames).

Command line: all variants of both workloads in interleaved rounds (each round runs every variant once, the order
rotating), the ratio of each variant's round time to the fused one's as the median over the rounds:

    PYTHONPATH=. python -m bench.bench_vae --rounds 5 [--threads 1] [--no-compile] [--workload policy]
        [--direction encode]

Under pytest-benchmark (`pytest bench/bench_vae.py --benchmark-only`), one group per workload and direction,
`vae[<workload>,<encode|decode>,cpu]`, variants fused / reference / compile.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics

import pytest
import torch

from bench.common import interleaved_rounds
from cosmos_kernels.integrations.diffusers import apply_cosmos_kernels
from cosmos_policy.testing import tiny_autoencoder

BASE_DIM = 96
SHAPES = {"policy": (1, 3, 9, 64, 64), "video": (1, 3, 5, 48, 80)}
VARIANT_NAMES = ("fused", "reference", "compile")


def build(variants: tuple[str, ...] = VARIANT_NAMES, base_dim: int = BASE_DIM) -> dict:
    """{variant: AutoencoderKLWan} sharing one set of random weights."""
    base = tiny_autoencoder(base_dim=base_dim).requires_grad_(False)
    models = {}
    for name in variants:
        model = copy.deepcopy(base)
        if name == "fused":
            apply_cosmos_kernels(model)
        elif name == "compile":
            model.encoder = torch.compile(model.encoder, dynamic=False)
            model.decoder = torch.compile(model.decoder, dynamic=False)
        models[name] = model
    return models


def _policy_encode(vae, frames: torch.Tensor) -> torch.Tensor:
    state = [None] * vae._cached_conv_counts["encoder"]
    outs = [vae.encoder(frames[:, :, :1], feat_cache=state, feat_idx=[0])]
    for start in range(1, frames.shape[2], 4):
        outs.append(vae.encoder(frames[:, :, start:start + 4], feat_cache=state, feat_idx=[0]))
    return torch.cat(outs, dim=2)


def calls(models: dict, workload: str, direction: str) -> dict:
    """{variant: zero-argument call} for one workload and direction, on inputs made once."""
    gen = torch.Generator().manual_seed(0)
    frames = torch.rand(SHAPES[workload], generator=gen) * 2 - 1
    any_model = next(iter(models.values()))
    with torch.no_grad():
        latents = any_model.encode(frames).latent_dist.mean
    out = {}
    for name, vae in models.items():
        if direction == "encode" and workload == "policy":
            fn = (lambda vae=vae: _policy_encode(vae, frames))
        elif direction == "encode":
            fn = (lambda vae=vae: vae.encode(frames).latent_dist.mean)
        else:
            fn = (lambda vae=vae: vae.decode(latents).sample)

        def run(fn=fn):
            with torch.no_grad():
                return fn()

        out[name] = run
    return out


def run(rounds: int = 5, variants: tuple[str, ...] = VARIANT_NAMES, workloads: tuple[str, ...] = tuple(SHAPES),
        directions: tuple[str, ...] = ("encode", "decode"), base_dim: int = BASE_DIM) -> dict:
    models = build(variants, base_dim)
    report = {"threads": torch.get_num_threads(), "base_dim": base_dim, "rounds": rounds, "results": {}}
    for workload in workloads:
        for direction in directions:
            group = calls(models, workload, direction)
            outs = {name: fn() for name, fn in group.items()}  # warm-up (compilation) and parity
            want = outs["reference"] if "reference" in outs else next(iter(outs.values()))
            times = interleaved_rounds(group, min_rounds=rounds, max_rounds=rounds)
            entry = {"shape": list(SHAPES[workload]),
                     "median_ms": {k: round(1e3 * statistics.median(v), 1) for k, v in times.items()},
                     "relative_difference_vs_reference": {
                         k: ((o - want).norm() / want.norm()).item() for k, o in outs.items()}}
            if "fused" in times:
                entry["median_ratio_over_fused"] = {
                    k: round(statistics.median(a / b for a, b in zip(v, times["fused"])), 3)
                    for k, v in times.items() if k != "fused"}
            report["results"][f"{workload}_{direction}"] = entry
    return report


# -- pytest-benchmark -----------------------------------------------------------------------------------------------

_models: dict = {}


@pytest.mark.parametrize("variant", VARIANT_NAMES)
@pytest.mark.parametrize("direction", ["encode", "decode"])
@pytest.mark.parametrize("workload", list(SHAPES))
def test_vae(benchmark, workload, direction, variant):
    from bench.conftest import measure

    if not _models:
        _models.update(build())
    fn = calls({variant: _models[variant]}, workload, direction)[variant]
    measure(benchmark, f"vae[{workload},{direction},cpu]", variant, fn, device="cpu", rounds=3,
            shape=list(SHAPES[workload]), base_dim=BASE_DIM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--no-compile", action="store_true", help="leave the torch.compile variant out")
    parser.add_argument("--workload", choices=[*SHAPES, "all"], default="all")
    parser.add_argument("--direction", choices=["encode", "decode", "both"], default="both")
    parser.add_argument("--base-dim", type=int, default=BASE_DIM,
                        help=f"the VAE's width (default {BASE_DIM}, Wan 2.1's; 16: the tiny checkpoints' VAE)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = tuple(v for v in VARIANT_NAMES if not (args.no_compile and v == "compile"))
    workloads = tuple(SHAPES) if args.workload == "all" else (args.workload,)
    directions = ("encode", "decode") if args.direction == "both" else (args.direction,)
    print(json.dumps(run(args.rounds, variants, workloads, directions, args.base_dim), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
