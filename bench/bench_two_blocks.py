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
