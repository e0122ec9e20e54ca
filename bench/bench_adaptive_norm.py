"""Adaptive-norm family at the model's shapes: fused vs eager reference vs torch.compile(reference).

x of (1, 1764, 2048) (LIBERO, T = 9) and (1, 2156, 2048) (RoboCasa / ALOHA, T = 11) viewed as
(B, T, S, D) with per-frame modulation (B, T, 1, D) taken as `chunk(3, dim=-1)` views, fp32 and bf16.
Each variant is one measurement of the group `<op>[<shape>,<dtype>,<device>]`; on CUDA each also carries its
achieved GB/s and the fraction of the card's measured copy bandwidth.
"""

from __future__ import annotations

import pytest
import torch

from bench.conftest import DEVICES, VARIANTS, compiled, copy_gbs, measure
from bench.workloads import norm_inputs, workload

SHAPES = {"libero": (9, 196), "robocasa": (11, 196)}
OPS = ["layer_norm_modulate", "gated_residual_layer_norm_modulate", "rms_norm"]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("op", OPS)
def test_adaptive_norm(benchmark, op, shape, dtype, device, variant):
    frames, tokens = SHAPES[shape]
    fused, ref, args, nbytes = workload(op, *norm_inputs(device, dtype, frames, tokens))
    fn = {"fused": fused, "reference": ref, "compile": compiled(ref)}[variant]
    dt = str(dtype).removeprefix("torch.")
    median = measure(benchmark, f"{op}[{shape},{dt},{device}]", variant, lambda: fn(*args), device=device,
                     tokens=frames * tokens, dtype=dt)
    if device == "cuda" and median:
        benchmark.extra_info["GB/s"] = nbytes / median / 1e9
        benchmark.extra_info["fraction_of_copy_bw"] = benchmark.extra_info["GB/s"] / copy_gbs(device)
