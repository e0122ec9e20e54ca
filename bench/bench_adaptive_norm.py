"""Adaptive-norm family at the model's shapes: fused vs eager reference vs torch.compile(reference).

x of (1, 1764, 2048) (LIBERO, T = 9) and (1, 2156, 2048) (RoboCasa / ALOHA, T = 11) viewed as
(B, T, S, D) with per-frame modulation (B, T, 1, D) taken as `chunk(3, dim=-1)` views, fp32 and bf16.
Each variant is one measurement of the group `<op>[<shape>,<dtype>,<device>]`; on CUDA each also carries its
achieved GB/s and the fraction of the card's measured copy bandwidth.
"""

from __future__ import annotations

import functools

import pytest
import torch

import cosmos_kernels as ck
from bench.conftest import DEVICES, VARIANTS, compiled, copy_gbs, measure
from cosmos_kernels.adaptive_norm import reference

SHAPES = {"libero": (9, 196), "robocasa": (11, 196)}
D = 2048
OPS = ["layer_norm_modulate", "gated_residual_layer_norm_modulate", "rms_norm"]


@functools.lru_cache(maxsize=1)  # the variants of one group run in a row and share their inputs
def _inputs(device: str, dtype: torch.dtype, frames: int, tokens: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, frames, tokens, D, generator=g).to(device, dtype)
    residual = torch.randn(1, frames, tokens, D, generator=g).to(device, dtype)
    mod = torch.randn(1, frames, 1, 3 * D, generator=g).to(device, dtype)
    mod2 = torch.randn(1, frames, 1, 3 * D, generator=g).to(device, dtype)
    weight = torch.randn(D, generator=g).to(device, dtype)
    return x, residual, mod, mod2, weight


def workload(op: str, x, residual, mod, mod2, weight):
    """(fused function, reference function, its arguments, bytes the op must move)."""
    shift, scale, gate = mod.chunk(3, dim=-1)
    shift2, scale2, _ = mod2.chunk(3, dim=-1)
    elt = x.element_size()
    return {
        "layer_norm_modulate": (ck.layer_norm_modulate, reference.layer_norm_modulate, (x, shift, scale),
                                2 * x.numel() * elt),
        "gated_residual_layer_norm_modulate": (
            ck.gated_residual_layer_norm_modulate, reference.gated_residual_layer_norm_modulate,
            (residual, x, gate, shift2, scale2), 4 * x.numel() * elt),
        "rms_norm": (ck.rms_norm, reference.rms_norm, (x, weight), 2 * x.numel() * elt),
    }[op]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("op", OPS)
def test_adaptive_norm(benchmark, op, shape, dtype, device, variant):
    frames, tokens = SHAPES[shape]
    fused, ref, args, nbytes = workload(op, *_inputs(device, dtype, frames, tokens))
    fn = {"fused": fused, "reference": ref, "compile": compiled(ref)}[variant]
    dt = str(dtype).removeprefix("torch.")
    median = measure(benchmark, f"{op}[{shape},{dt},{device}]", variant, lambda: fn(*args), device=device,
                     tokens=frames * tokens, dtype=dt)
    if device == "cuda" and median:
        benchmark.extra_info["GB/s"] = nbytes / median / 1e9
        benchmark.extra_info["fraction_of_copy_bw"] = benchmark.extra_info["GB/s"] / copy_gbs(device)
