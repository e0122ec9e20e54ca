"""Triton FP8 GEMM whose epilogue adds the gated residual: `out = residual + gate * (A @ W^T)`, one launch.

`A (M, K)` is read one of three ways (MODE): e4m3 rows with one fp32 scale per row (0), e4m3 rows with one scale per
row and group of 128 columns (1), or rows of a float tensor quantized here by `quantize_rowwise`'s rule (2: a first
loop over the row tile's K finds each row's amax, the main loop quantizes every A tile to e4m3 before its dot). The
weight `W (N, K)` is e4m3 with one scale per output channel. Row and channel scales multiply the fp32 accumulator
once, after the K loop; group scales multiply each K tile's partial dot (a K tile lies in one group: BLOCK_K divides
128). The residual and the gate are read in the epilogue through (N0, N1, N2) row-grid strides (a gate broadcast
over a frame's tokens has stride 0 there), so the product never reaches memory; the sum is rounded once to the
residual's dtype. Rows and columns past the edge are wrapped (`% M`, `% N`) on load, masked on store.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from cosmos_kernels import _alloc, _dispatch
from cosmos_kernels._registry import TritonConfig, register_triton_kernel
from cosmos_kernels.fp8.triton import ROUNDING, quantize_tile, round_to_bf16, row_scale
from cosmos_kernels.gemm_tiles import GemmConfig, grouped_tile, load_cols_k, load_rows_k, tile_indices

GROUP = 128  # columns per scale of the group-scaled form
ROW_SCALED, GROUP_SCALED, QUANTIZE = 0, 1, 2


@triton.jit
def _fp8_linear_gated_residual_kernel(
    x_ptr, xs_ptr, w_ptr, ws_ptr, r_ptr, g_ptr, out_ptr,
    M, N, K, L, sxb, sxl, sxk, G, swn, swk, R1, R2, rs0, rs1, rs2, gs0, gs1, gs2,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    MODE: tl.constexpr, EVEN_K: tl.constexpr, ROUND: tl.constexpr,
):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm, rn, rows, cols = tile_indices(pid_m, pid_n, M, N, BLOCK_M, BLOCK_N)  # rows, cols wrapped for the loads
    rk = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + (rows // L) * sxb + (rows % L) * sxl  # x is a (B, L, K) view: row m is (m // L, m % L)
    x_tile = x_rows[:, None] + rk[None, :] * sxk
    w_tile = w_ptr + cols[None, :] * swn + rk[:, None] * swk

    if MODE == 2:  # the rows' amax over all of K, then quantize_rowwise's scale
        amax = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            a = tl.load(x_tile + k0 * sxk, mask=rk[None, :] < K - k0, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.max(tl.abs(a), axis=1))
        a_scale = row_scale(amax)
    elif MODE == 0:
        a_scale = tl.load(xs_ptr + rows)
    else:
        a_scale = tl.zeros((BLOCK_M,), dtype=tl.float32) + 1.0

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a = load_rows_k(x_tile, rk, K - k0, EVEN_K)
        b = load_cols_k(w_tile, rk, K - k0, EVEN_K)
        if MODE == 2:
            a = quantize_tile(a.to(tl.float32), a_scale[:, None])
        if MODE == 1:  # this K tile's group scale times its partial dot
            group_scale = tl.load(xs_ptr + rows * G + k0 // 128)
            acc += tl.dot(a, b) * group_scale[:, None]
        else:
            acc = tl.dot(a, b, acc)
        x_tile += BLOCK_K * sxk
        w_tile += BLOCK_K * swk

    y = acc * a_scale[:, None] * tl.load(ws_ptr + cols)[None, :]
    i2 = rows % R2
    i1 = (rows // R2) % R1
    i0 = rows // (R2 * R1)
    r = tl.load(r_ptr + (i0 * rs0 + i1 * rs1 + i2 * rs2)[:, None] + cols[None, :]).to(tl.float32)
    g = tl.load(g_ptr + (i0 * gs0 + i1 * gs1 + i2 * gs2)[:, None] + cols[None, :]).to(tl.float32)
    out = r + g * y
    if ROUND == 1:
        out = round_to_bf16(out)
    out_tile = out_ptr + rm[:, None].to(tl.int64) * N + rn[None, :]
    tl.store(out_tile, out.to(out_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


# Hopper's FP8 warp-group MMAs (QGMMA) take K in steps of 32: 128 x 128 x 128 tiles over 3 stages hold 96 KiB of
# e4m3 operands, within the 228 KiB of an SM (`gemm_config` halves the depth for the quantizing and group-scaled
# forms).
CONFIGS = {
    "large": GemmConfig(128, 128, 128, 8, 8, 3),
    "small": GemmConfig(64, 64, 128, 8, 4, 3),  # few output tiles: more programs to fill the card
}
INTERPRETER_CONFIG = GemmConfig(32, 64, 64, 4, 4, 1)  # one program costs the same whatever its tile


def gemm_config(device: torch.device, m: int, n: int, k: int, x_dtype: torch.dtype,
                grouped: bool = False) -> GemmConfig:
    base = INTERPRETER_CONFIG if device.type != "cuda" else (
        CONFIGS["small"] if m * n < 128 * 128 * 132 else CONFIGS["large"])
    # Row-scaled e4m3 A: K tiles of 128. A quantized here (its float tile and the rounding in registers) or scaled
    # per group (a second accumulator): tiles half as deep (a quarter for an fp32 A), which keep every launch free
    # of spills.
    block_k = base.block_k if x_dtype == torch.float8_e4m3fn and not grouped else base.block_k // 2
    if x_dtype == torch.float32:
        block_k //= 2
    while block_k > 32 and block_k >= 2 * max(k, 1):  # a K tile no wider than needed (at least 32)
        block_k //= 2
    return GemmConfig(base.block_m, base.block_n, block_k, base.group_m, base.num_warps, base.num_stages)


@_dispatch.on_tensor_device  # launch on the tensors' GPU
def fp8_linear_gated_residual(x: torch.Tensor, x_scale: torch.Tensor | None, weight: torch.Tensor,
                              weight_scale: torch.Tensor, residual: torch.Tensor, gate: torch.Tensor,
                              config: GemmConfig | None = None) -> torch.Tensor:
    """`x (B, L, K)` (any strides), e4m3 with `x_scale (B * L, 1)` or `(B * L, ceil(K / 128))` contiguous fp32, or
    float with `x_scale` None; `weight (N, K)` e4m3 (any strides), `weight_scale (N,)` fp32 contiguous; `residual`
    and `gate` (N0, N1, N2, N) row grids of B * L rows, last dim contiguous. Returns a new contiguous (N0, N1, N2, N)
    tensor of residual's dtype. `config` overrides the tiles."""
    n0, n1, n2, n = residual.shape
    _, rows_per_batch, k = x.shape
    m = n0 * n1 * n2
    out = _alloc.empty(residual.shape, dtype=residual.dtype, device=residual.device)
    if m == 0 or n == 0:
        return out
    if x_scale is None:
        mode, groups, scales = QUANTIZE, 1, weight_scale  # scales: a placeholder pointer, not read
    else:
        groups = x_scale.shape[-1]
        mode, scales = (ROW_SCALED if groups == 1 else GROUP_SCALED), x_scale
    cfg = config or gemm_config(x.device, m, n, k, x.dtype, grouped=mode == GROUP_SCALED)
    if mode == GROUP_SCALED and GROUP % cfg.block_k:
        raise ValueError(f"fp8_linear_gated_residual: BLOCK_K {cfg.block_k} must divide the scale group {GROUP}")
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
    _fp8_linear_gated_residual_kernel[grid](
        x, scales, weight, weight_scale, residual, gate, out,
        m, n, k, max(rows_per_batch, 1), x.stride(0), x.stride(1), x.stride(2), groups, weight.stride(0),
        weight.stride(1), n1, n2, residual.stride(0), residual.stride(1), residual.stride(2),
        gate.stride(0), gate.stride(1), gate.stride(2),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
        MODE=mode, EVEN_K=k % cfg.block_k == 0, ROUND=ROUNDING[residual.dtype],
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out


def _register_for_compile_report() -> None:
    # The 2B's launches: self-attention and cross-attention outputs (bf16 A quantized here, K = 2048), the MLP's
    # second layer (e4m3 A, row- or group-scaled, K = 8192); residual and gate bf16, N = 2048, 1764 tokens.
    def halved(c: GemmConfig, times: int = 1) -> GemmConfig:
        return GemmConfig(c.block_m, c.block_n, c.block_k >> times, c.group_m, c.num_warps, c.num_stages)

    launches = [(ROW_SCALED, "fp8e4nv", cfg) for cfg in CONFIGS.values()]
    launches += [(mode, x_type, halved(cfg)) for cfg in CONFIGS.values()
                 for mode, x_type in ((GROUP_SCALED, "fp8e4nv"), (QUANTIZE, "bf16"), (QUANTIZE, "fp16"))]
    launches += [(QUANTIZE, "fp32", halved(cfg, 2)) for cfg in CONFIGS.values()]
    names = {ROW_SCALED: "row-scaled", GROUP_SCALED: "group-scaled", QUANTIZE: "quantize"}
    configs = []
    for mode, x_type, cfg in launches:
        signature = {"x_ptr": f"*{x_type}", "xs_ptr": "*fp32", "w_ptr": "*fp8e4nv", "ws_ptr": "*fp32",
                     "r_ptr": "*bf16", "g_ptr": "*bf16", "out_ptr": "*bf16"}
        signature.update({a: "i32" for a in ("M", "N", "K", "L", "sxb", "sxl", "G", "swn", "R1", "R2",
                                             "rs0", "rs1", "rs2", "gs0", "gs1", "gs2")})
        signature.update(sxk="constexpr", swk="constexpr")
        signature.update({a: "constexpr" for a in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "MODE", "EVEN_K",
                                                   "ROUND")})
        configs.append(TritonConfig(
            f"{names[mode]} {x_type} {cfg.block_m}x{cfg.block_n}x{cfg.block_k}", signature,
            {"sxk": 1, "swk": 1, "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k,
             "GROUP_M": cfg.group_m, "MODE": mode, "EVEN_K": True, "ROUND": 1},
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            divisible=("x_ptr", "xs_ptr", "w_ptr", "ws_ptr", "r_ptr", "g_ptr", "out_ptr", "N", "K", "sxl", "swn",
                       "rs1", "rs2")))
    register_triton_kernel("fp8.fp8_linear_gated_residual", _fp8_linear_gated_residual_kernel, configs,
                           matrix=True)


_register_for_compile_report()
