"""Two DiT blocks of the 2B's width at LIBERO's 1,764 tokens with real-text padding, on the CPU.

Fused network vs the reference network vs `torch.compile` of the reference, fp32 and bf16. The text is what real
checkpoints see: 512 T5 positions, of which the instruction's 13 are non-zero (`with_text_tokens` marks them), so
the fused cross-attention runs over 13 rows plus one zero row with its count. The fused network's exact caches
(cross-attention K/V, modulation, RoPE) are filled by the warm-up call, as a policy's first chunk fills them.
"""

from __future__ import annotations

import functools

import pytest
import torch

from bench import summary
from bench.conftest import compiled, measure
from cosmos_policy import CosmosDiT, DiTConfig
from cosmos_policy.model import with_text_tokens

TEXT_POSITIONS, TEXT_TOKENS = 512, 13


@functools.lru_cache(maxsize=1)  # the variants of one group share one network and one input
def _setup(dtype: torch.dtype):
    config = DiTConfig.cosmos_predict2_2b(num_blocks=2)
    gen = torch.Generator().manual_seed(0)
    net = CosmosDiT(config).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.1 if "norm" in name else p.shape[-1] ** -0.5)
                    + (1.0 if "norm" in name else 0.0))
    net = net.to(dtype)
    x = torch.randn(1, config.in_channels, 9, 28, 28, generator=gen).to(dtype)
    times = torch.tensor([[0.0] * 4 + [0.5] * 5])
    text = torch.zeros(1, TEXT_POSITIONS, config.crossattn_emb_channels, dtype=dtype)
    text[:, :TEXT_TOKENS] = torch.randn(1, TEXT_TOKENS, config.crossattn_emb_channels, generator=gen).to(dtype)
    with_text_tokens(text, TEXT_TOKENS)
    mask = (torch.arange(9) < 4).to(dtype).view(1, 1, 9, 1, 1)
    return net, (x, times, text, mask)


def _forward(net: CosmosDiT, backend: str):
    def run(*args):
        net.backend = backend
        return net(*args)
    return run


@pytest.mark.parametrize("variant", [summary.FUSED, summary.REFERENCE, summary.COMPILE])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_two_blocks(benchmark, dtype, variant):
    net, args = _setup(dtype)
    if variant == summary.FUSED:
        fn = _forward(net, "fused")
    elif variant == summary.REFERENCE:
        fn = _forward(net, "reference")
    else:
        net.backend = "reference"
        fn = compiled(net)
    dt = str(dtype).removeprefix("torch.")
    with torch.no_grad():
        measure(benchmark, f"two_blocks_2b_width[libero,{dt},cpu]", variant, lambda: fn(*args), rounds=5,
                warmup=2, tokens=1764, text_tokens=TEXT_TOKENS, dtype=dt)


# -- interleaved rounds: `python -m bench.bench_two_blocks [--rounds N] [--json]` ------------------------------
# pytest-benchmark times each variant's rounds back to back; on a shared CPU whose speed drifts by tens of
# percent over a minute, that drift lands in the ratios. Here every round runs the three variants in turn and the
# ratios are the medians of the per-round ratios, so a slow minute slows all three alike.

def interleaved(dtype: torch.dtype, rounds: int) -> dict:
    import statistics
    import time

    net, args = _setup(dtype)
    with torch.no_grad():
        net.backend = "reference"
        variants = {summary.FUSED: _forward(net, "fused"), summary.REFERENCE: _forward(net, "reference"),
                    summary.COMPILE: compiled(net)}
        for fn in variants.values():  # compilation, caches
            fn(*args)
            fn(*args)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, fn in variants.items():
                if name == summary.COMPILE:
                    net.backend = "reference"
                start = time.perf_counter()
                fn(*args)
                times[name].append(time.perf_counter() - start)
    fused = times[summary.FUSED]
    return {
        "median_ms": {name: 1e3 * statistics.median(t) for name, t in times.items()},
        "ratio_to_fused": {name: statistics.median(o / f for o, f in zip(t, fused))
                           for name, t in times.items() if name != summary.FUSED},
        "rounds": rounds,
    }


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    from bench.common import environment

    parser = argparse.ArgumentParser(description="two 2B-width blocks at LIBERO tokens, variants interleaved")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds: expected at least 1")
    report = {"environment": environment("cpu"), "threads": torch.get_num_threads(),
              "tokens": 1764, "text_tokens": TEXT_TOKENS}
    for dtype, label in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        report[label] = result = interleaved(dtype, args.rounds)
        if not args.json:
            ms, ratio = result["median_ms"], result["ratio_to_fused"]
            print(f"{label}: fused {ms[summary.FUSED]:.0f} ms, reference {ms[summary.REFERENCE]:.0f} ms "
                  f"({ratio[summary.REFERENCE]:.2f}x), torch.compile {ms[summary.COMPILE]:.0f} ms "
                  f"({ratio[summary.COMPILE]:.2f}x); ratio = other / fused, median of {args.rounds} "
                  "interleaved rounds", flush=True)
    if args.json:
        print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
