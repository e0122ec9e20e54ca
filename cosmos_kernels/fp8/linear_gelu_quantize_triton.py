"""Triton FP8 GEMM whose epilogue applies the exact (erf) GELU and quantizes the result group-wise to e4m3.

`values (M, N), scales (M, G) = quantize_groupwise(gelu((x * x_scale) @ (w * w_scale)^T), 128)`: x (M, K) and
w (N, K) e4m3 with one fp32 scale per row of x and per output channel. A program owns a BLOCK_M x 128 output tile,
which is exactly one 128-column group of BLOCK_M rows: the group's amax, its scale and its e4m3 values are all made
from the fp32 accumulator, so the hidden activation reaches memory once, as e4m3, with one fp32 scale per (row,
group). Programs walk the tiles in groups of GROUP_M tile rows, so that a group reuses each weight tile from L2.
Rows and columns past the edge are wrapped (`% M`, `% N`) on load, which keeps the main loop free of M and N
masks; the wrapped columns of a ragged last group are zeroed before its amax, and only the stores are masked.
On Hopper an e4m3 dot accumulates in a narrower format inside the tensor cores (Triton's default there leaves
it so over the whole K); `max_num_imprecise_acc=BLOCK_K` adds each K tile's sum to the fp32 accumulator, as
cuBLAS's FP8 GEMM does without fast accumulation. The quantization reuses the row quantizers' helpers
(`row_scale`, `quantize_tile`), so a group is rounded exactly as `quantize_rowwise` rounds a row.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from cosmos_kernels import _alloc, _dispatch
from cosmos_kernels._registry import TritonConfig, register_triton_kernel
from cosmos_kernels.fp8.reference import E4M3
from cosmos_kernels.fp8.triton import gelu_in_dtype, quantize_tile, row_scale
from cosmos_kernels.gemm_tiles import GemmConfig, grouped_tile, load_cols_k, load_rows_k, operand_tiles, tile_indices

GROUP = 128  # the quantization group: one output tile wide


@triton.jit
def _fp8_linear_gelu_quantize_kernel(
    x_ptr, xs_ptr, w_ptr, ws_ptr, q_ptr, s_ptr, M, N, K, G, sxm, sxk, sxs, swn, swk, sws,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm, rn, rows, cols = tile_indices(pid_m, pid_n, M, N, BLOCK_M, BLOCK_N)  # rows, cols wrapped for the loads
    rk = tl.arange(0, BLOCK_K)
    x_tile, w_tile = operand_tiles(x_ptr, w_ptr, rows, cols, rk, sxm, sxk, swn, swk)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a = load_rows_k(x_tile, rk, K - k0, EVEN_K)
        b = load_cols_k(w_tile, rk, K - k0, EVEN_K)
        acc = tl.dot(a, b, acc, max_num_imprecise_acc=BLOCK_K)  # sums added to acc in full fp32 per K tile
        x_tile += BLOCK_K * sxk
        w_tile += BLOCK_K * swk

    x_scale = tl.load(xs_ptr + rows * sxs)
    w_scale = tl.load(ws_ptr + cols * sws)
    y = gelu_in_dtype(acc * x_scale[:, None] * w_scale[None, :], 0)  # fp32, not rounded to a narrower dtype
    in_n = rn < N
    y = tl.where(in_n[None, :], y, 0.0)  # the wrapped columns of a ragged last group take no part in its amax
    scale = row_scale(tl.max(tl.abs(y), axis=1))
    in_m = rm < M
    out_rows = rm.to(tl.int64)
    tl.store(q_ptr + out_rows[:, None] * N + rn[None, :], quantize_tile(y, scale[:, None]),
             mask=in_m[:, None] & in_n[None, :])
    tl.store(s_ptr + out_rows * G + pid_n, scale, mask=in_m)


# Tiles per problem size, for Hopper and the other FP8 cards (Ada, Blackwell): e4m3 operands are 1 byte, so a
# 128 x 128 x 128 stage holds 32 KiB and three stages fit every FP8 card's shared memory (Ada: about 100 KiB).
# Small K takes a 64-deep K tile (the e4m3 dot's K step is 32). block_n is always GROUP: one quantization group.
CONFIGS = {
    "large": GemmConfig(128, GROUP, 128, 8, 8, 3),
    "large_small_k": GemmConfig(128, GROUP, 64, 8, 8, 3),
    "small": GemmConfig(64, GROUP, 128, 8, 4, 3),  # too few large tiles to fill the card
    "small_small_k": GemmConfig(64, GROUP, 64, 8, 4, 3),
}
# Under the interpreter one program costs the same whatever its tile: fewer, larger tiles run faster.
INTERPRETER_CONFIG = GemmConfig(64, GROUP, 64, 4, 4, 1)


def gemm_config(device: torch.device, m: int, n: int, k: int) -> GemmConfig:
    if device.type != "cuda":
        return INTERPRETER_CONFIG
    size = "small" if m * n < 128 * 128 * 64 else "large"
    return CONFIGS[size if k > 64 else f"{size}_small_k"]


@_dispatch.on_tensor_device  # launch on the tensors' GPU
def fp8_linear_gelu_quantize(x: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor,
                             weight_scale: torch.Tensor, config: GemmConfig | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """`x (M, K)` e4m3 with `x_scale (M,)` fp32, `weight (N, K)` e4m3 with `weight_scale (N,)` fp32, any strides:
    new contiguous e4m3 values `(M, N)` and fp32 scales `(M, ceil(N / 128))`. `config` overrides the tiles."""
    m, k = x.shape
    n = weight.shape[0]
    g = triton.cdiv(n, GROUP)
    values = _alloc.empty((m, n), dtype=E4M3, device=x.device)
    scales = _alloc.empty((m, g), dtype=torch.float32, device=x.device)
    if m == 0 or n == 0:
        return values, scales
    cfg = config or gemm_config(x.device, m, n, k)
    grid = (triton.cdiv(m, cfg.block_m) * g,)
    _fp8_linear_gelu_quantize_kernel[grid](
        x, x_scale, weight, weight_scale, values, scales, m, n, k, g, x.stride(0), x.stride(1), x_scale.stride(0),
        weight.stride(0), weight.stride(1), weight_scale.stride(0),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
        EVEN_K=k % cfg.block_k == 0, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return values, scales


def _register_for_compile_report() -> None:
    # The launch at the 2B's MLP shapes (M = 1764 tokens, N = 8192, K = 2048) and the small ones: contiguous rows
    # and scales, whose stride 1 Triton specialises to a constant, aligned pointers, N, K and row strides multiples
    # of 16 (G = N / 128 is one for the 2B's 8192 columns: 64).
    signature = {"x_ptr": "*fp8e4nv", "xs_ptr": "*fp32", "w_ptr": "*fp8e4nv", "ws_ptr": "*fp32",
                 "q_ptr": "*fp8e4nv", "s_ptr": "*fp32", "M": "i32", "N": "i32", "K": "i32", "G": "i32",
                 "sxm": "i32", "sxk": "constexpr", "sxs": "constexpr", "swn": "i32", "swk": "constexpr",
                 "sws": "constexpr"}
    signature.update({name: "constexpr" for name in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "EVEN_K")})
    configs = [TritonConfig(
        f"e4m3 {name} {cfg.block_m}x{cfg.block_n}x{cfg.block_k}", signature,
        {"sxk": 1, "sxs": 1, "swk": 1, "sws": 1, "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n,
         "BLOCK_K": cfg.block_k, "GROUP_M": cfg.group_m, "EVEN_K": True},
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        divisible=("x_ptr", "xs_ptr", "w_ptr", "ws_ptr", "q_ptr", "s_ptr", "N", "K", "G", "sxm", "swn"))
        for name, cfg in CONFIGS.items()]
    register_triton_kernel("fp8.fp8_linear_gelu_quantize", _fp8_linear_gelu_quantize_kernel, configs, matrix=True)


_register_for_compile_report()
