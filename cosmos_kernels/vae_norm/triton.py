"""Triton kernel of the Wan VAE norm family: one program per (sample, block of T*H*W positions).

A program holds a (channels x positions) tile: positions are addressed through the T, H and W strides, so the
contiguous (B, C, T, H, W) layout, channels-last-3d and strided views are all read in place. Up to 1024 channels
sit in one tile (one read); more loop over 1024-channel tiles twice (sum of squares, then output).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from cosmos_kernels import _dispatch
from cosmos_kernels._registry import TritonConfig, register_triton_kernel
from cosmos_kernels.vae_norm import layout

MAX_SINGLE_TILE = 1024
TILE_ELEMENTS = 2048


@triton.jit
def _load_sum(x_ptr, r_ptr, s_ptr, xo, ro, so, mask, RESIDUAL: tl.constexpr):
    x = tl.load(x_ptr + xo, mask=mask, other=0.0).to(tl.float32)
    if RESIDUAL:
        r = tl.load(r_ptr + ro, mask=mask, other=0.0).to(tl.float32)
        s = (x + r).to(s_ptr.dtype.element_ty)
        tl.store(s_ptr + so, s, mask=mask)
        x = s.to(tl.float32)  # the rounded sum the caller sees
    return x


@triton.jit
def _channel_rms_norm_silu_kernel(
    x_ptr, r_ptr, g_ptr, b_ptr, s_ptr, out_ptr,
    C, S, H, W,
    xsb, xsc, xst, xsh, xsw, rsb, rsc, rst, rsh, rsw, ssb, ssc, sst, ssh, ssw, osb, osc, ost, osh, osw,
    scale, eps,
    RESIDUAL: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
    SINGLE_TILE: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    pos = tl.program_id(1).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
    pmask = pos < S
    w = pos % W
    h = (pos // W) % H
    t = pos // (W * H)
    xp = (b * xsb + t * xst + h * xsh + w * xsw)[None, :]
    rp = (b * rsb + t * rst + h * rsh + w * rsw)[None, :]
    sp = (b * ssb + t * sst + h * ssh + w * ssw)[None, :]
    op = (b * osb + t * ost + h * osh + w * osw)[None, :]
    if SINGLE_TILE:
        ch = tl.arange(0, BLOCK_C).to(tl.int64)
        mask = (ch < C)[:, None] & pmask[None, :]
        x = _load_sum(x_ptr, r_ptr, s_ptr, xp + ch[:, None] * xsc, rp + ch[:, None] * rsc, sp + ch[:, None] * ssc,
                      mask, RESIDUAL)
        inv = scale / tl.maximum(tl.sqrt(tl.sum(x * x, axis=0)), eps)
        g = tl.load(g_ptr + ch, mask=ch < C, other=0.0).to(tl.float32)
        y = x * inv[None, :] * g[:, None]
        if HAS_BIAS:
            y += tl.load(b_ptr + ch, mask=ch < C, other=0.0).to(tl.float32)[:, None]
        y = y / (1.0 + tl.exp(-y))
        tl.store(out_ptr + op + ch[:, None] * osc, y.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        acc = tl.zeros([BLOCK_S], dtype=tl.float32)
        for start in range(0, C, BLOCK_C):
            ch = start + tl.arange(0, BLOCK_C).to(tl.int64)
            mask = (ch < C)[:, None] & pmask[None, :]
            x = _load_sum(x_ptr, r_ptr, s_ptr, xp + ch[:, None] * xsc, rp + ch[:, None] * rsc,
                          sp + ch[:, None] * ssc, mask, RESIDUAL)
            acc += tl.sum(x * x, axis=0)
        inv = scale / tl.maximum(tl.sqrt(acc), eps)
        for start in range(0, C, BLOCK_C):
            ch = start + tl.arange(0, BLOCK_C).to(tl.int64)
            mask = (ch < C)[:, None] & pmask[None, :]
            if RESIDUAL:  # re-read the sum this program wrote
                x = tl.load(s_ptr + sp + ch[:, None] * ssc, mask=mask, other=0.0).to(tl.float32)
            else:
                x = tl.load(x_ptr + xp + ch[:, None] * xsc, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(g_ptr + ch, mask=ch < C, other=0.0).to(tl.float32)
            y = x * inv[None, :] * g[:, None]
            if HAS_BIAS:
                y += tl.load(b_ptr + ch, mask=ch < C, other=0.0).to(tl.float32)[:, None]
            y = y / (1.0 + tl.exp(-y))
            tl.store(out_ptr + op + ch[:, None] * osc, y.to(out_ptr.dtype.element_ty), mask=mask)


def tile_config(c: int) -> tuple[int, int, bool, int]:
    """(BLOCK_C, BLOCK_S, SINGLE_TILE, num_warps) for C channels."""
    block_c = min(triton.next_power_of_2(max(c, 1)), MAX_SINGLE_TILE)
    block_s = max(1, TILE_ELEMENTS // block_c)
    return block_c, block_s, c <= MAX_SINGLE_TILE, 8


@_dispatch.on_tensor_device  # launch on the tensors' GPU
def channel_rms_norm_silu(x: torch.Tensor, gamma: torch.Tensor, bias: torch.Tensor | None, eps: float,
                          residual: torch.Tensor | None = None, out: torch.Tensor | None = None):
    """Launch on a 5-D (B, C, T, H, W) `x`; with `residual`, returns `(x + residual, normed)`; `out` (x's shape, any
    strides): where the normed values go (a new tensor when None)."""
    bsz, c, t, h, w = x.shape
    out = layout.empty_like_layout(x) if out is None else out
    s = layout.empty_like_layout(x) if residual is not None else out
    positions = t * h * w
    if bsz and c and positions:
        block_c, block_s, single, warps = tile_config(c)
        r = residual if residual is not None else x
        grid = (bsz, triton.cdiv(positions, block_s))
        _channel_rms_norm_silu_kernel[grid](
            x, r, gamma, bias if bias is not None else gamma, s, out, c, positions, h, w,
            *x.stride(), *r.stride(), *s.stride(), *out.stride(), float(c) ** 0.5, eps,
            RESIDUAL=residual is not None, HAS_BIAS=bias is not None, BLOCK_C=block_c, BLOCK_S=block_s,
            SINGLE_TILE=single, num_warps=warps,
        )
    return (s, out) if residual is not None else out


def _register_for_compile_report() -> None:
    sig = {name: "*{dt}" for name in ("x_ptr", "r_ptr", "g_ptr", "b_ptr", "s_ptr", "out_ptr")}
    sig.update({n: "i64" for n in ("C", "S", "H", "W", "xsb", "xsc", "xst", "xsh", "xsw", "rsb", "rsc", "rst",
                                   "rsh", "rsw", "ssb", "ssc", "sst", "ssh", "ssw", "osb", "osc", "ost", "osh", "osw")})
    sig.update(scale="fp32", eps="fp32", RESIDUAL="constexpr", HAS_BIAS="constexpr", BLOCK_C="constexpr",
               BLOCK_S="constexpr", SINGLE_TILE="constexpr")
    configs = []
    for dt in ("bf16", "fp32"):
        for c in (96, 384, 2048):
            block_c, block_s, single, warps = tile_config(c)
            for residual in (False, True):
                configs.append(TritonConfig(
                    f"{dt} C={c}{' residual' if residual else ''}", {k: v.format(dt=dt) for k, v in sig.items()},
                    {"RESIDUAL": residual, "HAS_BIAS": False, "BLOCK_C": block_c, "BLOCK_S": block_s,
                     "SINGLE_TILE": single}, num_warps=warps, divisible=("x_ptr", "g_ptr", "out_ptr", "s_ptr")))
    register_triton_kernel("vae_norm.channel_rms_norm_silu", _channel_rms_norm_silu_kernel, configs)


_register_for_compile_report()
