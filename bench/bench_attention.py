"""Attention-family benchmarks: `pytest bench/bench_attention.py --benchmark-only`.

CPU (always): qk_norm_rope at the LIBERO self-attention shape (B=1, L=1764, 16 heads x 128, fp32): the
fused "cpu" kernel vs the eager reference vs `torch.compile(reference)`, ratios in `extra_info`.
GPU (skipped without CUDA): every attention backend with and without the fused norm + RoPE at B=1,
16 x 128, L = 1764 and 2156 self-attention and Lq = 1764 / Lk = 512 cross-attention, in TFLOP/s; and
qk_norm_rope "cuda" / "triton" vs eager vs torch.compile.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

import cosmos_kernels as ck
from cosmos_kernels.attention import ops, reference

HEADS, HEAD_DIM = 16, 128
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

_medians: dict[tuple, float] = {}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_s(fn, device: torch.device, reps: int = 20) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _run(benchmark, fn, device: torch.device, key: tuple) -> float:
    def call():
        fn()
        _sync(device)

    call()  # warm-up: compiles, allocates, times the attention auto choice
    benchmark.pedantic(call, rounds=15, iterations=1, warmup_rounds=2)
    median = benchmark.stats.stats.median
    _medians[key] = median
    return median


def _qk_inputs(device, dtype, L=1764, Lk=None):
    gen = torch.Generator().manual_seed(0)
    Lk = L if Lk is None else Lk
    if Lk == L:
        qkv = torch.randn(1, L, 3 * HEADS * HEAD_DIM, generator=gen).to(device, dtype)
        q, k, v = qkv.view(1, L, 3, HEADS, HEAD_DIM).unbind(2)  # strided views, as the DiT produces them
    else:
        q = torch.randn(1, L, HEADS, HEAD_DIM, generator=gen).to(device, dtype)
        kv = torch.randn(1, Lk, 2 * HEADS * HEAD_DIM, generator=gen).to(device, dtype)
        k, v = kv.view(1, Lk, 2, HEADS, HEAD_DIM).unbind(2)
    qw, kw = (torch.rand(HEAD_DIM, generator=gen).add(0.5).to(device) for _ in range(2))
    T = max(1, L // 196)
    cos, sin = ck.rope_3d_tables(T, 14, 14, HEAD_DIM, h_extrapolation_ratio=3.0, w_extrapolation_ratio=3.0,
                                 device=device)
    return q, k, v, qw, kw, cos[:L], sin[:L]


def _qk_variants(backend_fused: str):
    compiled = torch.compile(reference.qk_norm_rope)
    return {
        "reference": lambda q, k, qw, kw, c, s: reference.qk_norm_rope(q, k, qw, kw, c, s),
        "torch.compile": lambda q, k, qw, kw, c, s: compiled(q, k, qw, kw, c, s),
        backend_fused: lambda q, k, qw, kw, c, s: ck.qk_norm_rope(q, k, qw, kw, c, s, backend=backend_fused),
    }


def _qk_norm_rope_bench(benchmark, device, dtype, variant, fused):
    q, k, _, qw, kw, cos, sin = _qk_inputs(device, dtype)
    variants = _qk_variants(fused)
    fn = variants[variant]
    median = _run(benchmark, lambda: fn(q, k, qw, kw, cos, sin), device, (str(device), dtype, variant))
    benchmark.extra_info.update(shape="1x1764x16x128 (q and k)", dtype=str(dtype), variant=variant,
                                median_ms=round(median * 1e3, 3))
    if variant == fused:
        # ratios side by side in this process: time the others here if they were not run before
        others = {}
        for name, other in variants.items():
            if name == fused:
                continue
            key = (str(device), dtype, name)
            others[name] = _medians.get(key) or _median_s(lambda o=other: o(q, k, qw, kw, cos, sin), device)
        benchmark.extra_info["speedup_vs_eager"] = round(others["reference"] / median, 2)
        benchmark.extra_info["speedup_vs_compile"] = round(others["torch.compile"] / median, 2)


@pytest.mark.parametrize("variant", ["reference", "torch.compile", "cpu"])
def test_qk_norm_rope_cpu(benchmark, variant):
    torch.manual_seed(0)
    benchmark.group = "qk_norm_rope cpu fp32 L=1764"
    _qk_norm_rope_bench(benchmark, torch.device("cpu"), torch.float32, variant, "cpu")


@needs_cuda
@pytest.mark.parametrize("variant", ["reference", "torch.compile", "triton", "cuda"])
def test_qk_norm_rope_gpu(benchmark, variant):
    benchmark.group = "qk_norm_rope cuda bf16 L=1764"
    fused = "cuda" if variant in ("reference", "torch.compile") else variant
    _qk_norm_rope_bench(benchmark, torch.device("cuda"), torch.bfloat16, variant, fused)


ATTENTION_SHAPES = [(1764, 1764, True), (2156, 2156, True), (1764, 512, False)]


def _attention_variants():
    names = ["triton", "sdpa", "auto"]
    if ops._flash_attn_func() is not None:
        names.insert(2, "flash_attn")
    return names


@needs_cuda
@pytest.mark.parametrize("backend", _attention_variants())
@pytest.mark.parametrize("fused_norm_rope", [True, False], ids=["norm+rope", "plain"])
@pytest.mark.parametrize("Lq,Lk,self_attention", ATTENTION_SHAPES, ids=["self1764", "self2156", "cross1764x512"])
def test_attention_gpu(benchmark, backend, fused_norm_rope, Lq, Lk, self_attention):
    device = torch.device("cuda")
    q, k, v, qw, kw, cos, sin = _qk_inputs(device, torch.bfloat16, Lq, Lk)
    extra = {}
    if fused_norm_rope:
        extra = dict(q_norm_weight=qw, k_norm_weight=kw)
        if self_attention:
            extra.update(rope_cos=cos, rope_sin=sin)
    name = None if backend == "auto" else backend
    benchmark.group = f"attention bf16 Lq={Lq} Lk={Lk} {'norm+rope' if fused_norm_rope else 'plain'}"
    median = _run(benchmark, lambda: ck.attention(q, k, v, backend=name, **extra), device,
                  ("attention", Lq, Lk, fused_norm_rope, backend))
    flops = 4 * HEADS * Lq * Lk * HEAD_DIM
    benchmark.extra_info.update(backend=backend, tflops=round(flops / median / 1e12, 1),
                                median_us=round(median * 1e6, 1))
    if backend == "auto":
        chosen = [b for key, b in ops.chosen_backends().items() if key[0] == tuple(q.shape) and key[1] == tuple(k.shape)
                  and key[4] == fused_norm_rope]
        benchmark.extra_info["auto_chose"] = chosen[-1] if chosen else "?"
        best = min((m for key, m in _medians.items() if key[:4] == ("attention", Lq, Lk, fused_norm_rope)
                    and key[4] != "auto"), default=median)
        benchmark.extra_info["auto_vs_best"] = round(best / median, 3)
