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
from bench.common import interleaved_rounds
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


def _forward(net: CosmosDiT, backend: str, module=None):
    """A call of `module` (the network itself, or its compiled form) with the network set to `backend` first: the
    variants share one network and may run in any order."""
    def run(*args):
        net.backend = backend
        return (net if module is None else module)(*args)
    return run


def _variants(net: CosmosDiT) -> dict:
    net.backend = "reference"  # what torch.compile traces
    return {summary.FUSED: _forward(net, "fused"), summary.REFERENCE: _forward(net, "reference"),
            summary.COMPILE: _forward(net, "reference", compiled(net))}


@pytest.mark.parametrize("variant", [summary.FUSED, summary.REFERENCE, summary.COMPILE])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_two_blocks(benchmark, dtype, variant):
    net, args = _setup(dtype)
    fn = _variants(net)[variant]
    dt = str(dtype).removeprefix("torch.")
    with torch.no_grad():
        measure(benchmark, f"two_blocks_2b_width[libero,{dt},cpu]", variant, lambda: fn(*args), rounds=5,
                warmup=2, tokens=1764, text_tokens=TEXT_TOKENS, dtype=dt)


# -- interleaved rounds alone: `python -m bench.bench_two_blocks [--rounds N] [--json]` --------------------------
# The same interleaved measurement the pytest session makes after pytest-benchmark's (see bench/conftest.py), without
# pytest: every round runs the three variants in turn and the ratios are the medians of the per-round ratios, so a
# slow minute of a shared CPU slows all three alike.

def interleaved(dtype: torch.dtype, rounds: int) -> dict:
    net, args = _setup(dtype)
    with torch.no_grad():
        variants = _variants(net)
        for fn in variants.values():  # compilation, caches
            fn(*args)
            fn(*args)
        times = interleaved_rounds({name: functools.partial(fn, *args) for name, fn in variants.items()},
                                   min_rounds=rounds, max_rounds=rounds)
    group = summary.from_rounds("two_blocks", times)
    return {
        "median_ms": {name: 1e3 * median for name, median in group.medians_s.items()},
        "min_ms": {name: 1e3 * fastest for name, fastest in group.minimums_s.items()},
        "ratio_to_fused": {name: group.ratio(name) for name in times if name != summary.FUSED},
        "noisy": group.noise(),
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
                  "interleaved rounds" + (f"; noisy, {result['noisy']}" if result["noisy"] else ""), flush=True)
    if args.json:
        print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
