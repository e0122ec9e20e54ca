"""Adaptive-norm family at the model's shapes: fused vs eager reference vs torch.compile(reference).

x of (1, 1764, 2048) (LIBERO, T = 9) and (1, 2156, 2048) (RoboCasa / ALOHA, T = 11) viewed as
(B, T, S, D) with per-frame modulation (B, T, 1, D) taken as `chunk(3, dim=-1)` views, fp32 and bf16.
On CUDA each result also carries achieved GB/s against the card's measured copy bandwidth.
"""

from __future__ import annotations

import pytest
import torch

import cosmos_kernels as ck
from bench.conftest import DEVICES, compiled, copy_bandwidth_gbs, interleaved_medians, record
from cosmos_kernels.adaptive_norm import reference

SHAPES = {"libero": (9, 196), "robocasa": (11, 196)}
D = 2048
_copy_gbs: dict[str, float] = {}


def _inputs(device: str, dtype: torch.dtype, frames: int, tokens: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, frames, tokens, D, generator=g).to(device, dtype)
    residual = torch.randn(1, frames, tokens, D, generator=g).to(device, dtype)
    mod = torch.randn(1, frames, 1, 3 * D, generator=g).to(device, dtype)
    mod2 = torch.randn(1, frames, 1, 3 * D, generator=g).to(device, dtype)
    weight = torch.randn(D, generator=g).to(device, dtype)
    return x, residual, mod, mod2, weight


def _ops(x, residual, mod, mod2, weight):
    """(fused, reference, bytes moved) per op; the reference is what compile gets too."""
    shift, scale, gate = mod.chunk(3, dim=-1)
    shift2, scale2, _ = mod2.chunk(3, dim=-1)
    elt = x.element_size()
    return {
        "layer_norm_modulate": (
            lambda: ck.layer_norm_modulate(x, shift, scale),
            lambda x, s, c: reference.layer_norm_modulate(x, s, c), (x, shift, scale), 2 * x.numel() * elt),
        "gated_residual_layer_norm_modulate": (
            lambda: ck.gated_residual_layer_norm_modulate(residual, x, gate, shift2, scale2),
            lambda r, x, g, s, c: reference.gated_residual_layer_norm_modulate(r, x, g, s, c),
            (residual, x, gate, shift2, scale2), 4 * x.numel() * elt),
        "rms_norm": (lambda: ck.rms_norm(x, weight), lambda x, w: reference.rms_norm(x, w), (x, weight),
                     2 * x.numel() * elt),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("op", ["layer_norm_modulate", "gated_residual_layer_norm_modulate", "rms_norm"])
def test_adaptive_norm(benchmark, op, shape, dtype, device):
    frames, tokens = SHAPES[shape]
    fused, ref, args, nbytes = _ops(*_inputs(device, dtype, frames, tokens))[op]
    ref_compiled = compiled(ref)
    times = interleaved_medians({
        "fused": fused,
        "reference": lambda: ref(*args),
        "compiled": lambda: ref_compiled(*args),
    })
    extra = {"tokens": frames * tokens, "dtype": str(dtype).removeprefix("torch."), "device": device}
    if device == "cuda":
        if device not in _copy_gbs:
            _copy_gbs[device] = copy_bandwidth_gbs(torch.device(device))
        extra["GB/s"] = nbytes / times["fused"] / 1e9
        extra["fraction_of_copy_bw"] = extra["GB/s"] / _copy_gbs[device]
    record(benchmark, f"{op}[{shape},{extra['dtype']},{device}]", times, **extra)
    benchmark.pedantic(fused, rounds=20, iterations=1, warmup_rounds=2)
