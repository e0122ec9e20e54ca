"""Triton FP8 GEMM of a projection split in attention heads, whose epilogue applies the per-head RMSNorm (and the
rotate-half RoPE) so that the heads leave the GEMM ready for attention: the packed QKV projection (three sections,
`[q; k; v]`: q and k normed and rotated, v as it is) and a projection whose every head is normed (one section: the
cross-attention's query).

`out (B*L, S, H, D) = x (B*L, K) @ weight (S*H*D, K)^T`, scaled by each row's fp8 scale and each output channel's
weight scale. A program owns BLOCK_M rows and one head column (q heads, then k heads, then v heads) and accumulates
it as two half-width dots, columns d < D/2 and d >= D/2: the pairs that RoPE rotates together (`x1 * cos - x2 * sin`,
`x2 * cos + x1 * sin`) sit in the same registers of the two accumulators. Row tiles past the last row are wrapped
(`% M`) on load, so the main loop needs masks only for a ragged K; the store is masked. The token index of a row,
which picks its cos / sin row, is its position in L.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from cosmos_kernels import _alloc, _dispatch
from cosmos_kernels._registry import TritonConfig, register_triton_kernel
from cosmos_kernels.fp8.triton import round_to_bf16
from cosmos_kernels.gemm_tiles import load_cols_k, load_rows_k


@triton.jit
def _rms_norm_halves(y1, y2, w_ptr, cols, eps, D: tl.constexpr, HALF: tl.constexpr, NORM: tl.constexpr):
    """`y * rsqrt(mean(y^2) + eps) * w` over the head's two halves (columns past HALF hold zeros)."""
    if NORM:
        ss = tl.sum(y1 * y1, axis=1) + tl.sum(y2 * y2, axis=1)
        inv = tl.math.rsqrt(ss / D + eps)
        w1 = tl.load(w_ptr + cols)
        w2 = tl.load(w_ptr + HALF + cols)
        y1 = y1 * inv[:, None] * w1[None, :]
        y2 = y2 * inv[:, None] * w2[None, :]
    return y1, y2


@triton.jit
def _rope_halves(y1, y2, cos_ptr, sin_ptr, tok, cols, D: tl.constexpr, HALF: tl.constexpr):
    """Rotate-half RoPE of the head's two halves with each row's token row of the `(L, D)` tables."""
    table = tok[:, None] * D + cols[None, :]
    c1 = tl.load(cos_ptr + table)
    c2 = tl.load(cos_ptr + table + HALF)
    s1 = tl.load(sin_ptr + table)
    s2 = tl.load(sin_ptr + table + HALF)
    return y1 * c1 - y2 * s1, y2 * c2 + y1 * s2


@triton.jit
def _fp8_heads_kernel(
    x_ptr, xs_ptr, w_ptr, ws_ptr, qw_ptr, kw_ptr, cos_ptr, sin_ptr, out_ptr,
    M, L, K, H, eps, sxb, sxl, sxk, ssb, ssl, swn, swk,
    D: tl.constexpr, HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr, SECTIONS: tl.constexpr, NORM_Q: tl.constexpr, NORM_K: tl.constexpr, ROPE: tl.constexpr,
    ROUND_BF16: tl.constexpr,
):
    pid_m = tl.program_id(0)
    head = tl.program_id(1)  # 0 .. SECTIONS*H-1: the q heads (then the k heads, then the v heads)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row = (rm % M).to(tl.int64)  # wrapped: the loads need no mask along M
    batch = row // L
    tok = row - batch * L
    dh = tl.arange(0, BLOCK_H)
    if BLOCK_H == HALF:
        cols = dh
    else:  # a half that is not a power of two: wrapped on load, zeroed before the norm, masked on store
        cols = dh % HALF
    n1 = (head * D + cols).to(tl.int64)
    rk = tl.arange(0, BLOCK_K)
    x_tile = x_ptr + (batch * sxb + tok * sxl)[:, None] + rk[None, :] * sxk
    w1_tile = w_ptr + n1[None, :] * swn + rk[:, None] * swk
    w2_tile = w1_tile + HALF * swn
    acc1 = tl.zeros((BLOCK_M, BLOCK_H), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_H), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a = load_rows_k(x_tile, rk, K - k0, EVEN_K)
        b1 = load_cols_k(w1_tile, rk, K - k0, EVEN_K)
        b2 = load_cols_k(w2_tile, rk, K - k0, EVEN_K)
        # Hopper's FP8 MMA accumulates in reduced precision: its partial sums join the fp32 accumulators after
        # every K tile (as cuBLAS's FP8 GEMM does without fast accumulation), not once at the end of the loop.
        acc1 = tl.dot(a, b1, acc1, max_num_imprecise_acc=BLOCK_K)
        acc2 = tl.dot(a, b2, acc2, max_num_imprecise_acc=BLOCK_K)
        x_tile += BLOCK_K * sxk
        w1_tile += BLOCK_K * swk
        w2_tile += BLOCK_K * swk

    row_scale = tl.load(xs_ptr + batch * ssb + tok * ssl)
    y1 = acc1 * row_scale[:, None] * tl.load(ws_ptr + n1)[None, :]
    y2 = acc2 * row_scale[:, None] * tl.load(ws_ptr + n1 + HALF)[None, :]
    if BLOCK_H != HALF:
        y1 = tl.where(dh[None, :] < HALF, y1, 0.0)
        y2 = tl.where(dh[None, :] < HALF, y2, 0.0)
    if SECTIONS == 1:  # one section: every head normed with the q weight (and rotated)
        y1, y2 = _rms_norm_halves(y1, y2, qw_ptr, cols, eps, D, HALF, NORM_Q)
    elif head < H:  # q
        y1, y2 = _rms_norm_halves(y1, y2, qw_ptr, cols, eps, D, HALF, NORM_Q)
    elif head < 2 * H:  # k
        y1, y2 = _rms_norm_halves(y1, y2, kw_ptr, cols, eps, D, HALF, NORM_K)
    if ROPE:  # q and k: RoPE with the token's row of the tables
        if SECTIONS == 1:
            y1, y2 = _rope_halves(y1, y2, cos_ptr, sin_ptr, tok, cols, D, HALF)
        elif head < 2 * H:
            y1, y2 = _rope_halves(y1, y2, cos_ptr, sin_ptr, tok, cols, D, HALF)
    if ROUND_BF16:
        y1 = round_to_bf16(y1)
        y2 = round_to_bf16(y2)
    out = out_ptr + rm[:, None].to(tl.int64) * (SECTIONS * H * D) + n1[None, :]
    mask = (rm[:, None] < M) & (dh[None, :] < HALF)
    tl.store(out, y1.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(out + HALF, y2.to(out_ptr.dtype.element_ty), mask=mask)


@dataclass(frozen=True)
class QkvConfig:
    block_m: int
    block_k: int
    num_warps: int
    num_stages: int


# Hopper / data-centre Blackwell: 128 x 128 x (2 x 64) fp8 tiles, 32 KiB a stage, 96 KiB over 3 stages.
CONFIGS = {
    "sm_90": QkvConfig(128, 128, 8, 3),
    "sm_89": QkvConfig(128, 64, 8, 3),  # about 100 KiB of shared memory (Ada, consumer Blackwell): 48 KiB
    "small": QkvConfig(64, 128, 4, 3),  # too few row tiles to fill the card with 128-row tiles
}
# Under the interpreter one program costs the same whatever its tile: small tiles keep the ragged edges covered.
INTERPRETER_CONFIG = QkvConfig(32, 64, 4, 1)


def block_k_for(k: int, cfg: QkvConfig) -> int:
    """The K tile for rows of k values: the config's, or the next power of two of a smaller k (at least 32)."""
    return max(32, min(cfg.block_k, triton.next_power_of_2(max(k, 1))))


def qkv_config(device: torch.device, m: int, num_heads: int, sections: int = 3) -> QkvConfig:
    """The tiles for m rows and `sections * num_heads` heads on `device`."""
    if device.type != "cuda":
        return INTERPRETER_CONFIG
    major, minor = torch.cuda.get_device_capability(device)
    programs = triton.cdiv(m, 128) * sections * num_heads
    if programs < 2 * torch.cuda.get_device_properties(device).multi_processor_count:
        return CONFIGS["small"]
    if (major, minor) == (8, 9) or major == 12:
        return CONFIGS["sm_89"]
    return CONFIGS["sm_90"]


ROUND_BF16 = {torch.bfloat16: True, torch.float16: False, torch.float32: False}


def _launch(x: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
            q_norm_weight: torch.Tensor | None, k_norm_weight: torch.Tensor | None, cos: torch.Tensor | None,
            sin: torch.Tensor | None, num_heads: int, sections: int, eps: float, out_dtype: torch.dtype,
            config: QkvConfig | None) -> torch.Tensor:
    b, seq, k = x.shape
    d = weight.shape[0] // (sections * num_heads)
    m = b * seq
    shape = (b, seq, sections, num_heads, d) if sections > 1 else (b, seq, num_heads, d)  # the same memory layout
    out = _alloc.empty(shape, dtype=out_dtype, device=x.device)
    if m == 0:
        return out
    cfg = config or qkv_config(x.device, m, num_heads, sections)
    block_k = block_k_for(k, cfg)
    half = d // 2
    dummy = weight_scale  # never read where its constexpr switch is off
    grid = (triton.cdiv(m, cfg.block_m), sections * num_heads)
    _fp8_heads_kernel[grid](
        x, x_scale, weight, weight_scale, dummy if q_norm_weight is None else q_norm_weight,
        dummy if k_norm_weight is None else k_norm_weight, dummy if cos is None else cos,
        dummy if sin is None else sin, out,
        m, seq, k, num_heads, float(eps), x.stride(0), x.stride(1), x.stride(2), x_scale.stride(0),
        x_scale.stride(1), weight.stride(0), weight.stride(1),
        D=d, HALF=half, BLOCK_H=triton.next_power_of_2(half), BLOCK_M=cfg.block_m, BLOCK_K=block_k,
        EVEN_K=k % block_k == 0, SECTIONS=sections, NORM_Q=q_norm_weight is not None,
        NORM_K=k_norm_weight is not None, ROPE=cos is not None, ROUND_BF16=ROUND_BF16[out_dtype],
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out


@_dispatch.on_tensor_device  # launch on the tensors' GPU
def fp8_linear_qk_norm_rope(x: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                            q_norm_weight: torch.Tensor | None, k_norm_weight: torch.Tensor | None,
                            cos: torch.Tensor | None, sin: torch.Tensor | None, num_heads: int, eps: float,
                            out_dtype: torch.dtype, config: QkvConfig | None = None) -> torch.Tensor:
    """`x (B, L, K)` e4m3 (any strides), `x_scale (B, L, 1)` fp32, `weight (3*H*D, K)` e4m3, `weight_scale`
    `3*H*D` contiguous fp32 values, norm weights `(D,)` and tables `(L, D)` contiguous fp32 or None. Returns a new
    contiguous `(B, L, 3, H, D)` tensor in `out_dtype`. `config` overrides the tiles."""
    return _launch(x, x_scale, weight, weight_scale, q_norm_weight, k_norm_weight, cos, sin, num_heads, 3, eps,
                   out_dtype, config)


@_dispatch.on_tensor_device
def fp8_linear_head_norm(x: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                         norm_weight: torch.Tensor, num_heads: int, eps: float, out_dtype: torch.dtype,
                         config: QkvConfig | None = None) -> torch.Tensor:
    """As `fp8_linear_qk_norm_rope` with one section: `weight (H*D, K)`, every head normed with `norm_weight (D,)`
    (contiguous fp32), no RoPE. Returns a new contiguous `(B, L, H, D)` tensor in `out_dtype`."""
    return _launch(x, x_scale, weight, weight_scale, norm_weight, None, None, None, num_heads, 1, eps, out_dtype,
                   config)


def _register_for_compile_report() -> None:
    # The 2B's launches: x (1, 1764, 2048) contiguous rows, 16 heads of 128; the QKV weight (6144, 2048) with both
    # norms and RoPE, the cross-attention query's (2048, 2048) with its norm alone.
    signature = {"x_ptr": "*fp8e4nv", "xs_ptr": "*fp32", "w_ptr": "*fp8e4nv", "ws_ptr": "*fp32", "qw_ptr": "*fp32",
                 "kw_ptr": "*fp32", "cos_ptr": "*fp32", "sin_ptr": "*fp32", "out_ptr": "*{dt}", "M": "i32",
                 "L": "i32", "K": "i32", "H": "i32", "eps": "fp32", "sxb": "i32", "sxl": "i32", "sxk": "constexpr",
                 "ssb": "i32", "ssl": "constexpr", "swn": "i32", "swk": "constexpr"}
    signature.update({name: "constexpr" for name in ("D", "HALF", "BLOCK_H", "BLOCK_M", "BLOCK_K", "EVEN_K",
                                                    "SECTIONS", "NORM_Q", "NORM_K", "ROPE", "ROUND_BF16")})
    for name, sections in (("attention.fp8_linear_qk_norm_rope", 3), ("attention.fp8_linear_head_norm", 1)):
        configs = []
        for arch, cfg in CONFIGS.items():
            for dt in ("bf16", "fp32"):
                configs.append(TritonConfig(
                    f"{dt} {arch} {cfg.block_m}x(2x64)x{cfg.block_k}",
                    {k: v.format(dt=dt) for k, v in signature.items()},
                    {"sxk": 1, "ssl": 1, "swk": 1, "D": 128, "HALF": 64, "BLOCK_H": 64, "BLOCK_M": cfg.block_m,
                     "BLOCK_K": cfg.block_k, "EVEN_K": True, "SECTIONS": sections, "NORM_Q": True,
                     "NORM_K": sections == 3, "ROPE": sections == 3, "ROUND_BF16": dt == "bf16"},
                    num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                    divisible=("x_ptr", "xs_ptr", "w_ptr", "ws_ptr", "qw_ptr", "kw_ptr", "cos_ptr", "sin_ptr",
                               "out_ptr", "K", "sxb", "sxl", "swn")))
        register_triton_kernel(name, _fp8_heads_kernel, configs, matrix=True)


_register_for_compile_report()
