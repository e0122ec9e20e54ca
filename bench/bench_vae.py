"""The Wan 2.1 VAE (diffusers' `AutoencoderKLWan`, 96 wide, random weights) on the CPU: patched with cosmos_kernels
("fused") vs diffusers' modules ("reference") vs `torch.compile` of diffusers' encoder / decoder ("compile").

Workloads, encode and decode each (the query: encode only):
- "query": what one LIBERO action query encodes, at the demo's 64 x 64 frames: `PolicyVAE.encode_prefix` of the two
  camera images, each repeated over a chunk of four frames, behind the cached constant prefix (blank and proprio
  frames), as the policy runs it after its first query.
- "policy": the encoder's chunking at the demo's 64 x 64 frames: the first frame alone, then two chunks of four
  random frames through one feature cache (called as `PolicyVAE` calls it); decode: the three latent frames back to
  nine frames.
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
SHAPES = {"query": (1, 3, 2, 64, 64), "policy": (1, 3, 9, 64, 64), "video": (1, 3, 5, 48, 80)}
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


def _query_encode(vae, images: list[torch.Tensor]) -> torch.Tensor:
    return vae.encode_prefix(images)


def calls(models: dict, workload: str, direction: str) -> dict:
    """{variant: zero-argument call} for one workload and direction, on inputs made once."""
    gen = torch.Generator().manual_seed(0)
    if workload == "query":
        from cosmos_policy.model.vae import PolicyVAE

        b, c, n, h, w = SHAPES[workload]
        images = [torch.randint(0, 256, (b, c, h, w), generator=gen, dtype=torch.uint8) for _ in range(n)]
        vaes = {name: PolicyVAE(vae, backend="fused" if name == "fused" else "reference")
                for name, vae in models.items()}
        return {name: (lambda vae=vae: _query_encode(vae, images)) for name, vae in vaes.items()}
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


def convolution_gflop(fn) -> float:
    """The convolutions' GFLOP in one call of `fn` (`torch.utils.flop_counter`). Count diffusers' call: the fused
    one runs the same convolutions through a direct oneDNN call, which the counter does not see."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn()
    return sum(v for k, v in counter.get_flop_counts().get("Global", {}).items() if "convolution" in str(k)) / 1e9


def run(rounds: int = 5, variants: tuple[str, ...] = VARIANT_NAMES, workloads: tuple[str, ...] = tuple(SHAPES),
        directions: tuple[str, ...] = ("encode", "decode"), base_dim: int = BASE_DIM) -> dict:
    models = build(variants, base_dim)
    report = {"threads": torch.get_num_threads(), "base_dim": base_dim, "rounds": rounds, "results": {}}
    for workload in workloads:
        for direction in directions:
            if workload == "query" and direction == "decode":
                continue
            group = calls(models, workload, direction)
            outs = {name: fn() for name, fn in group.items()}  # warm-up (compilation, cached prefix) and parity
            want = outs["reference"] if "reference" in outs else next(iter(outs.values()))
            conv_gflop = convolution_gflop(group["reference"]) if "reference" in group else float("nan")
            times = interleaved_rounds(group, min_rounds=rounds, max_rounds=rounds)
            median_s = {k: statistics.median(v) for k, v in times.items()}
            entry = {"shape": list(SHAPES[workload]),
                     "median_ms": {k: round(1e3 * v, 1) for k, v in median_s.items()},
                     "relative_difference_vs_reference": {
                         k: ((o - want).norm() / want.norm()).item() for k, o in outs.items()},
                     "conv_gflop": round(conv_gflop, 2),
                     "conv_gflop_per_s_at_median": {k: round(conv_gflop / v, 1) for k, v in median_s.items()}}
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

    if workload == "query" and direction == "decode":
        pytest.skip("a query only encodes")
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
