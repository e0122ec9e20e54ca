"""Triton kernel of the fused sampler step: one program per (row, block) of a (B, C, T, S) latent.

A row is one (b, c, t) line of S = H * W elements, wholly conditional or not. The coefficient row is
loaded at the device-held step index, so launches need no host value (CUDA-graph capturable).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from cosmos_kernels import _alloc, _dispatch
from cosmos_kernels._registry import TritonConfig, register_triton_kernel

MAX_BLOCK = 1024


@triton.jit
def _sampler_step_kernel(
    v_ptr, x_ptr, p1_ptr, p2_ptr, clean_ptr, mask_ptr, coeff_ptr, step_ptr, x0_ptr, xn_ptr, net_ptr,
    C, T, S, K,
    vs0, vs1, vs2, xs0, xs1, xs2, p1s0, p1s1, p1s2, p2s0, p2s1, p2s2, cs0, cs1, cs2,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    t = row % T
    c = (row // T) % C
    b = row // (T * C)
    cols = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < S

    step = tl.minimum(tl.maximum(tl.load(step_ptr), 0), K - 1)
    crow = coeff_ptr + step * 8
    c_skip = tl.load(crow + 0).to(tl.float32)
    c_out = tl.load(crow + 1).to(tl.float32)
    a = tl.load(crow + 2).to(tl.float32)
    b0 = tl.load(crow + 3).to(tl.float32)
    b1 = tl.load(crow + 4).to(tl.float32)
    b2 = tl.load(crow + 5).to(tl.float32)
    c_in = tl.load(crow + 6).to(tl.float32)
    frame_mask = tl.load(mask_ptr + b * T + t)
    cond = frame_mask != 0.0

    x = tl.load(x_ptr + b * xs0 + c * xs1 + t * xs2 + cols, mask=inside, other=0.0).to(tl.float32)
    clean = tl.load(clean_ptr + b * cs0 + c * cs1 + t * cs2 + cols, mask=inside, other=0.0).to(tl.float32)
    v_len = tl.where(cond, 0, S)  # conditional rows never read the network output
    v = tl.load(v_ptr + b * vs0 + c * vs1 + t * vs2 + cols, mask=cols < v_len, other=0.0).to(tl.float32)
    x0 = tl.where(cond, clean, c_skip * x + c_out * v)
    xn = a * x + b0 * x0
    if b1 != 0.0:  # no history yet on a solver's first steps: do not read it
        xn += b1 * tl.load(p1_ptr + b * p1s0 + c * p1s1 + t * p1s2 + cols, mask=inside, other=0.0).to(tl.float32)
    if b2 != 0.0:
        xn += b2 * tl.load(p2_ptr + b * p2s0 + c * p2s1 + t * p2s2 + cols, mask=inside, other=0.0).to(tl.float32)
    net = tl.where(cond, clean, c_in * xn)
    out = row * S + cols
    tl.store(x0_ptr + out, x0.to(x0_ptr.dtype.element_ty), mask=inside)
    tl.store(xn_ptr + out, xn.to(xn_ptr.dtype.element_ty), mask=inside)
    tl.store(net_ptr + out, net.to(net_ptr.dtype.element_ty), mask=inside)


def block_config(s: int) -> tuple[int, int]:
    """(BLOCK, num_warps) for rows of s elements."""
    block = min(MAX_BLOCK, triton.next_power_of_2(max(s, 1)))
    return block, max(1, min(8, block // 128))


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


@_dispatch.on_tensor_device  # launch on the tensors' GPU
def sampler_step(v, x, x0_prev, x0_prev2, cond_latent, cond_mask, coeffs, step):
    """Launch on (B, C, T, S) latents (contiguous last dim); see reference.py for the semantics."""
    bsz, c, t, s = x.shape
    x0 = _alloc.empty(x.shape, dtype=x.dtype, device=x.device)
    x_next = _alloc.empty(x.shape, dtype=x.dtype, device=x.device)
    net_in = _alloc.empty(x.shape, dtype=v.dtype, device=x.device)
    rows = bsz * c * t
    if rows and s:
        block, warps = block_config(s)
        grid = (rows, triton.cdiv(s, block))
        _sampler_step_kernel[grid](
            v, x, x0_prev, x0_prev2, cond_latent, cond_mask, coeffs, step, x0, x_next, net_in,
            c, t, s, coeffs.shape[0],
            *_strides(v), *_strides(x), *_strides(x0_prev), *_strides(x0_prev2), *_strides(cond_latent),
            BLOCK=block, num_warps=warps,
        )
    return x0, x_next, net_in


def _register_for_compile_report() -> None:
    sig = {"v_ptr": "*{nt}", "x_ptr": "*{st}", "p1_ptr": "*{st}", "p2_ptr": "*{st}", "clean_ptr": "*{st}",
           "mask_ptr": "*fp32", "coeff_ptr": "*fp64", "step_ptr": "*i64", "x0_ptr": "*{st}", "xn_ptr": "*{st}",
           "net_ptr": "*{nt}"}
    sig.update({n: "i64" for n in ("C", "T", "S", "K", "vs0", "vs1", "vs2", "xs0", "xs1", "xs2", "p1s0", "p1s1",
                                   "p1s2", "p2s0", "p2s1", "p2s2", "cs0", "cs1", "cs2")})
    sig["BLOCK"] = "constexpr"
    configs = []
    for st, nt in (("fp32", "bf16"), ("fp32", "fp32")):
        for s in (784, 4096):  # LIBERO's 28 x 28 latent frames, and a larger video
            block, warps = block_config(s)
            configs.append(TritonConfig(f"state {st} net {nt} S={s}",
                                        {k: v.format(st=st, nt=nt) for k, v in sig.items()},
                                        {"BLOCK": block}, num_warps=warps))
    register_triton_kernel("sampling.sampler_step", _sampler_step_kernel, configs)


_register_for_compile_report()
