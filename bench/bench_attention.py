"""Attention family at the model's shapes: `pytest bench/bench_attention.py --benchmark-only`.

qk_norm_rope (B=1, 16 heads x 128, q and k strided views of one packed QKV projection, L = 1764): the
fused kernel vs the eager reference vs torch.compile(reference) (and the Triton kernel on CUDA), fp32 on the
CPU, bf16 on CUDA. Attention (CUDA only, bf16, B=1, 16 x 128): L = 1764 and 2156 self-attention and
Lq = 1764 / Lk = 512 cross-attention, each backend with and without the norm + RoPE ("sdpa" and "flash_attn"
then run the separate qk_norm_rope kernel first, "triton" fuses them into its tile loads), in TFLOP/s; "fused"
is the automatic choice, so `fused_vs_<backend>` >= 1 means auto is at least as fast as that backend.
"""

from __future__ import annotations

import functools

import pytest
import torch

import cosmos_kernels as ck
from bench.conftest import DEVICES, VARIANTS, compiled, measure
from bench.workloads import HEAD_DIM, HEADS, attention_inputs
from cosmos_kernels import _dispatch
from cosmos_kernels.attention import ops, reference

SHAPES = {"self1764": (1764, 1764), "self2156": (2156, 2156), "cross1764x512": (1764, 512)}
ATTENTION_VARIANTS = ["fused", "triton", "flash_attn", "sdpa"]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("variant", VARIANTS + ["triton"])
@pytest.mark.parametrize("device", DEVICES)
def test_qk_norm_rope(benchmark, device, variant):
    if variant == "triton" and device != "cuda":
        pytest.skip("the Triton kernel runs on CUDA only (the interpreter is no benchmark)")
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    q, k, _, qw, kw, cos, sin = attention_inputs(device, dtype, 1764, 1764)
    args = (q, k, qw, kw, cos, sin)
    fn = {"fused": ck.qk_norm_rope, "reference": reference.qk_norm_rope, "compile": compiled(reference.qk_norm_rope),
          "triton": functools.partial(ck.qk_norm_rope, backend="triton")}[variant]
    dt = str(dtype).removeprefix("torch.")
    measure(benchmark, f"qk_norm_rope[1x1764x16x128,{dt},{device}]", variant, lambda: fn(*args), device=device,
            dtype=dt, backend=_dispatch.resolve_backend("qk_norm_rope", q.device, None, dtype=dtype))


@needs_cuda
@pytest.mark.parametrize("variant", ATTENTION_VARIANTS)
@pytest.mark.parametrize("norm_rope", [True, False], ids=["norm+rope", "plain"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_attention(benchmark, shape, norm_rope, variant):
    Lq, Lk = SHAPES[shape]
    q, k, v, qw, kw, cos, sin = attention_inputs("cuda", torch.bfloat16, Lq, Lk)
    if variant != "fused" and variant not in ops.auto_candidates(q):
        pytest.skip(f"attention backend {variant!r} is not usable here")
    extra = {}
    if norm_rope:  # the DiT normalises q and k in both attentions and rotates them in self-attention only
        extra = dict(q_norm_weight=qw, k_norm_weight=kw)
        if Lq == Lk:
            extra.update(rope_cos=cos, rope_sin=sin)
    backend = None if variant == "fused" else variant
    median = measure(benchmark, f"attention[{shape},{'norm+rope' if norm_rope else 'plain'},bf16,cuda]", variant,
                     lambda: ck.attention(q, k, v, backend=backend, **extra), device="cuda")
    if median:
        benchmark.extra_info["TFLOP/s"] = 4 * HEADS * Lq * Lk * HEAD_DIM / median / 1e12
    if variant == "fused":
        key = (tuple(q.shape), tuple(k.shape), q.dtype, str(q.device), "q_norm_weight" in extra, "rope_cos" in extra)
        benchmark.extra_info["auto_chose"] = ops.chosen_backends().get(key, "?")
