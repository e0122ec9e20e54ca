"""Triton GEMM with the exact-erf GELU applied to the fp32 accumulator before the one store of the output.

`out (M, N) = gelu(x (M, K) @ w (N, K)^T)`. The unfused pair writes the (M, N) product, then reads it and
writes it again for the GELU: at the 2B's MLP width that is two extra passes over 1764 x 8192 values per block.
Programs walk the output tiles in groups of GROUP_M tile rows, so that a group reuses each weight tile from L2.
Rows and columns past the edge are wrapped (`% M`, `% N`) instead of masked on load, which keeps the main loop
free of masks; only the store is masked. fp32 inputs multiply in IEEE fp32 (no TF32), like the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from cosmos_kernels import _alloc, _dispatch
from cosmos_kernels._registry import TritonConfig, register_triton_kernel
from cosmos_kernels.gemm_tiles import GemmConfig, grouped_tile, load_cols_k, load_rows_k, operand_tiles, tile_indices

SQRT_HALF = tl.constexpr(0.7071067811865476)


@triton.jit
def _linear_gelu_kernel(
    x_ptr, w_ptr, out_ptr, M, N, K, sxm, sxk, swn, swk,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm, rn, rows, cols = tile_indices(pid_m, pid_n, M, N, BLOCK_M, BLOCK_N)  # rows, cols wrapped for the loads
    rk = tl.arange(0, BLOCK_K)
    x_tile, w_tile = operand_tiles(x_ptr, w_ptr, rows, cols, rk, sxm, sxk, swn, swk)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a = load_rows_k(x_tile, rk, K - k0, EVEN_K)
        b = load_cols_k(w_tile, rk, K - k0, EVEN_K)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        x_tile += BLOCK_K * sxk
        w_tile += BLOCK_K * swk

    y = 0.5 * acc * (1.0 + tl.math.erf(acc * SQRT_HALF))
    out = out_ptr + rm[:, None].to(tl.int64) * N + rn[None, :]
    tl.store(out, y.to(out_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


# Per architecture, for the model's shapes (M = tokens, N = 4 * width, K = width): tiles that fit the SM's
# shared memory at this pipeline depth; Hopper runs 128 x 128 x 64 warp-group MMAs (HGMMA) over 4 stages.
CONFIGS = {
    "sm_90": GemmConfig(128, 128, 64, 8, 8, 4),  # 128 KiB of the 228 KiB shared memory
    "sm_80": GemmConfig(128, 128, 32, 8, 8, 4),  # 64 KiB of 164 KiB
    "sm_89": GemmConfig(128, 64, 32, 8, 4, 4),  # 48 KiB of 99 KiB (L40S, RTX 4090)
    "small": GemmConfig(64, 64, 32, 8, 4, 3),  # other cards and small problems
}
# IEEE fp32 dots run on the FMA units, every thread holding its operands along BLOCK_K in registers: the sm_90
# tiles take 255 registers and spill 4.9 KB there (Triton 3.6), and 4 stages of them overflow shared memory. Half
# the rows and a quarter of the depth: 160-168 registers, 24 KiB, the same on every card.
FP32_CONFIG = GemmConfig(64, 128, 16, 8, 4, 3)
# Under the interpreter one program costs the same whatever its tile: fewer, larger tiles run faster.
INTERPRETER_CONFIG = GemmConfig(64, 64, 32, 4, 4, 1)


def gemm_config(device: torch.device, m: int, n: int, dtype: torch.dtype) -> GemmConfig:
    if device.type != "cuda":
        return INTERPRETER_CONFIG
    major, minor = torch.cuda.get_device_capability(device)
    if m * n < 128 * 128 * 64:  # too few large tiles to fill the card
        return CONFIGS["small"]
    if dtype == torch.float32:
        return FP32_CONFIG
    if major in (9, 10):  # Hopper, data-centre Blackwell: 228 KiB of shared memory per SM
        return CONFIGS["sm_90"]
    if (major, minor) == (8, 9) or major == 12:  # Ada, consumer Blackwell: about 100 KiB
        return CONFIGS["sm_89"]
    if major == 8:
        return CONFIGS["sm_80"]
    return CONFIGS["small"]


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # "tf32" is ignored for 16-bit inputs


@_dispatch.on_tensor_device  # launch on the tensors' GPU
def linear_gelu(x: torch.Tensor, weight: torch.Tensor, config: GemmConfig | None = None) -> torch.Tensor:
    """`x (M, K)`, `weight (N, K)`, any strides; returns a new contiguous `(M, N)` tensor of x's dtype. `config`
    overrides the tiles."""
    m, k = x.shape
    n = weight.shape[0]
    out = _alloc.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return out
    if k == 0:
        return out.zero_()  # gelu(0) = 0
    cfg = config or gemm_config(x.device, m, n, x.dtype)
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
    _linear_gelu_kernel[grid](
        x, weight, out, m, n, k, x.stride(0), x.stride(1), weight.stride(0), weight.stride(1),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
        EVEN_K=k % cfg.block_k == 0, PRECISION=_precision(x.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out


def _register_for_compile_report() -> None:
    # The launch at the 2B's MLP shapes (M = 1764 tokens, N = 8192, K = 2048): contiguous rows, whose stride 1
    # along K Triton specialises to a constant, aligned pointers, N, K and the row strides multiples of 16.
    launches = [(dt, arch, cfg) for arch, cfg in CONFIGS.items() for dt in ("bf16", "fp16")]
    launches += [("fp32", "all", FP32_CONFIG), ("fp32", "small", CONFIGS["small"])]
    configs = []
    for dt, arch, cfg in launches:
        signature = {"x_ptr": f"*{dt}", "w_ptr": f"*{dt}", "out_ptr": f"*{dt}", "M": "i32", "N": "i32",
                     "K": "i32", "sxm": "i32", "sxk": "constexpr", "swn": "i32", "swk": "constexpr"}
        signature.update({name: "constexpr" for name in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "EVEN_K",
                                                        "PRECISION")})
        precision = _precision(torch.float32 if dt == "fp32" else torch.float16)
        configs.append(TritonConfig(
            f"{dt} {arch} {cfg.block_m}x{cfg.block_n}x{cfg.block_k}", signature,
            {"sxk": 1, "swk": 1, "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k,
             "GROUP_M": cfg.group_m, "EVEN_K": True, "PRECISION": precision},
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            divisible=("x_ptr", "w_ptr", "out_ptr", "N", "K", "sxm", "swn"), tensor_cores=precision != "ieee"))
    register_triton_kernel("linear_gelu.linear_gelu", _linear_gelu_kernel, configs, matrix=True)


_register_for_compile_report()
