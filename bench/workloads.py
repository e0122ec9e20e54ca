"""The workloads of the benchmarks at the model's shapes, shared by the pytest suites and `bench.gpu_suite`
(no pytest here: the GPU suite runs where only torch and the package are installed)."""

from __future__ import annotations

import functools

import torch

import cosmos_kernels as ck
from cosmos_kernels.adaptive_norm import reference as norm_reference

D = 2048
HEADS, HEAD_DIM = 16, 128


@functools.lru_cache(maxsize=1)  # the variants of one group run in a row and share their inputs
def norm_inputs(device: str, dtype: torch.dtype, frames: int, tokens: int):
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
        "layer_norm_modulate": (ck.layer_norm_modulate, norm_reference.layer_norm_modulate, (x, shift, scale),
                                2 * x.numel() * elt),
        "gated_residual_layer_norm_modulate": (
            ck.gated_residual_layer_norm_modulate, norm_reference.gated_residual_layer_norm_modulate,
            (residual, x, gate, shift2, scale2), 4 * x.numel() * elt),
        "rms_norm": (ck.rms_norm, norm_reference.rms_norm, (x, weight), 2 * x.numel() * elt),
    }[op]


@functools.lru_cache(maxsize=1)  # shared by the variants of one group, which run in a row
def attention_inputs(device: str, dtype: torch.dtype, Lq: int, Lk: int):
    """q, k, v (k and v strided views of a packed projection), the norm weights and the 3D RoPE tables."""
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
