"""Attention family at the model's shapes: `pytest bench/bench_attention.py --benchmark-only`.

qk_norm_rope (B=1, 16 heads x 128, q and k strided views of one packed QKV projection, L = 1764): the
fused kernel vs the eager reference vs torch.compile(reference), fp32 on the CPU, bf16 on CUDA.
Attention (CUDA only, bf16, B=1, 16 x 128): L = 1764 and 2156 self-attention and Lq = 1764 / Lk = 512
cross-attention, each backend with and without the norm + RoPE ("sdpa" and "flash_attn" then run the
separate qk_norm_rope kernel first, "triton" fuses them into its tile loads), in TFLOP/s; "fused" is the
automatic choice, so `speedup_vs_<backend>` >= 1 means auto is at least as fast as that backend.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

import cosmos_kernels as ck
from bench.conftest import DEVICES, compiled, median_seconds, record
from cosmos_kernels import _dispatch
from cosmos_kernels.attention import ops, reference

HEADS, HEAD_DIM = 16, 128
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _inputs(device: str, dtype: torch.dtype, Lq: int, Lk: int):
    g = torch.Generator().manual_seed(0)
    if Lq == Lk:
        qkv = torch.randn(1, Lq, 3 * HEADS * HEAD_DIM, generator=g).to(device, dtype)
        q, k, v = qkv.view(1, Lq, 3, HEADS, HEAD_DIM).unbind(2)
    else:
        q = torch.randn(1, Lq, HEADS, HEAD_DIM, generator=g).to(device, dtype)
        kv = torch.randn(1, Lk, 2 * HEADS * HEAD_DIM, generator=g).to(device, dtype)
        k, v = kv.view(1, Lk, 2, HEADS, HEAD_DIM).unbind(2)
    q_weight, k_weight = (torch.rand(HEAD_DIM, generator=g).add(0.5).to(device) for _ in range(2))
    cos, sin = ck.rope_3d_tables(Lq // 196, 14, 14, HEAD_DIM, h_extrapolation_ratio=3.0, w_extrapolation_ratio=3.0,
                                 device=device)
    return q, k, v, q_weight, k_weight, cos, sin


def interleaved_medians(fns: dict, device: str, rounds: int = 30) -> dict[str, float]:
    """Median seconds of each variant, timed in alternation so that load drift on a shared machine hits
    every variant alike (the ratios are what matter)."""
    for fn in fns.values():
        median_seconds(fn, min_run_time=0.05)  # warm-up: compilation, probes, allocator
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in samples.items()}


@pytest.mark.parametrize("device", DEVICES)
def test_qk_norm_rope(benchmark, device):
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    q, k, _, qw, kw, cos, sin = _inputs(device, dtype, 1764, 1764)
    args = (q, k, qw, kw, cos, sin)
    ref_compiled = compiled(reference.qk_norm_rope)
    fused = lambda: ck.qk_norm_rope(*args)  # noqa: E731
    variants = {
        "fused": fused,
        "reference": lambda: reference.qk_norm_rope(*args),
        "compiled": lambda: ref_compiled(*args),
    }
    if device == "cuda":
        variants["triton"] = lambda: ck.qk_norm_rope(*args, backend="triton")
    times = interleaved_medians(variants, device)
    dt = str(dtype).removeprefix("torch.")
    record(benchmark, f"qk_norm_rope[1x1764x16x128,{dt},{device}]", times, dtype=dt, device=device,
           backend=_dispatch.resolve_backend("qk_norm_rope", q.device, None, dtype=dtype))
    benchmark.pedantic(fused, rounds=20, iterations=1, warmup_rounds=2)


SHAPES = {"self1764": (1764, 1764), "self2156": (2156, 2156), "cross1764x512": (1764, 512)}


@needs_cuda
@pytest.mark.parametrize("norm_rope", [True, False], ids=["norm+rope", "plain"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_attention(benchmark, shape, norm_rope):
    Lq, Lk = SHAPES[shape]
    q, k, v, qw, kw, cos, sin = _inputs("cuda", torch.bfloat16, Lq, Lk)
    extra = {}
    if norm_rope:  # the DiT normalises q and k in both attentions and rotates them in self-attention only
        extra = dict(q_norm_weight=qw, k_norm_weight=kw)
        if Lq == Lk:
            extra.update(rope_cos=cos, rope_sin=sin)
    fused = lambda: ck.attention(q, k, v, **extra)  # noqa: E731
    times = {"fused": median_seconds(fused)}
    for backend in ops.auto_candidates(q):
        times[backend] = median_seconds(lambda b=backend: ck.attention(q, k, v, backend=b, **extra))
    flops = 4 * HEADS * Lq * Lk * HEAD_DIM
    tflops = {f"{name}_TFLOP/s": flops / t / 1e12 for name, t in times.items()}
    chosen = ops.chosen_backends().get((tuple(q.shape), tuple(k.shape), q.dtype, str(q.device),
                                        "q_norm_weight" in extra, "rope_cos" in extra), "?")
    record(benchmark, f"attention[{shape},{'norm+rope' if norm_rope else 'plain'},bf16,cuda]", times,
           auto_chose=chosen, **tflops)
    benchmark.pedantic(fused, rounds=20, iterations=1, warmup_rounds=2)
