"""Triton kernels of the attention family.

`_qk_norm_rope_kernel`: one program per token and block of heads, for q and k in one launch; each head
is loaded as its two halves, so the rotate-half RoPE is a pairwise update of registers.

`_attention_fwd_kernel`: a flash-attention forward (online softmax in fp32 with exp2). K is normalised and
rotated once per key by `_qk_norm_rope_kernel` (a K tile is read by every Q block: fusing its norm into the
tile loads would redo it 14-17 times per head at the model's lengths); the Q side, loaded once per program,
gets its RMSNorm and RoPE in the tile load. Q and K are held as two half-width tiles and QK^T is the sum of
two dots, which keeps the rotation free of data movement. A last key that stands for several equal keys (the
zero padding of a text embedding, merged into one row) gets log2(count) added to its score: exact. With
OUT_FP8 the epilogue quantizes each normalised fp32 output row of a head (one (token, head)) by the fp8 family's
row rule (`row_scale`, `quantize_tile`) and writes e4m3 values and one fp32 scale per (token, head).
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from cosmos_kernels import _alloc, _dispatch
from cosmos_kernels._registry import TritonConfig, register_triton_kernel
from cosmos_kernels.fp8.reference import E4M3, SCALE_FLOOR
from cosmos_kernels.fp8.triton import quantize_tile, row_scale

LOG2E = 1.4426950408889634


def half_block(head_dim: int) -> int:
    """The padded width of one half of a head (tl.dot needs at least 16, tl.arange a power of two)."""
    return max(16, triton.next_power_of_2(head_dim // 2))


# -- fused QK RMSNorm + RoPE --------------------------------------------------------------------------

@triton.jit
def _rms_norm_halves(x1, x2, w_ptr, cols, col_ok, half_dim, eps, HEAD_DIM: tl.constexpr):
    """Per-row RMSNorm with weight of a head held as its two rotate-half halves (fp32)."""
    inv = 1.0 / tl.sqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / HEAD_DIM + eps)
    w1 = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    w2 = tl.load(w_ptr + half_dim + cols, mask=col_ok, other=0.0).to(tl.float32)
    return x1 * inv[:, None] * w1[None, :], x2 * inv[:, None] * w2[None, :]


@triton.jit
def _norm_rope_token(
    x_ptr, w_ptr, o_ptr, cos_ptr, sin_ptr, t, L, H, sb, sl, sh, st, eps, pid_h,
    HEAD_DIM: tl.constexpr, HALF: tl.constexpr, BLOCK_H: tl.constexpr, NORM: tl.constexpr, ROPE: tl.constexpr,
):
    half_dim: tl.constexpr = HEAD_DIM // 2
    b = t // L
    pos = t % L
    heads = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.arange(0, HALF)
    col_ok = cols < half_dim
    mask = (heads[:, None] < H) & col_ok[None, :]
    src = x_ptr + b * sb + pos * sl + heads[:, None].to(tl.int64) * sh + cols[None, :]
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + half_dim, mask=mask, other=0.0).to(tl.float32)
    if NORM:
        x1, x2 = _rms_norm_halves(x1, x2, w_ptr, cols, col_ok, half_dim, eps, HEAD_DIM)
    if ROPE:
        row = pos * st
        c1 = tl.load(cos_ptr + row + cols, mask=col_ok, other=0.0)[None, :]
        c2 = tl.load(cos_ptr + row + half_dim + cols, mask=col_ok, other=0.0)[None, :]
        s1 = tl.load(sin_ptr + row + cols, mask=col_ok, other=0.0)[None, :]
        s2 = tl.load(sin_ptr + row + half_dim + cols, mask=col_ok, other=0.0)[None, :]
        y1 = x1 * c1 - x2 * s1
        y2 = x2 * c2 + x1 * s2
        x1, x2 = y1, y2
    dst = o_ptr + (t * H + heads[:, None]).to(tl.int64) * HEAD_DIM + cols[None, :]
    tl.store(dst, x1.to(o_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + half_dim, x2.to(o_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _qk_norm_rope_kernel(
    q_ptr, k_ptr, qw_ptr, kw_ptr, cos_ptr, sin_ptr, q_out_ptr, k_out_ptr,
    NQ, Lq, Lk, H, sqb, sql, sqh, skb, skl, skh, st, eps,
    HEAD_DIM: tl.constexpr, HALF: tl.constexpr, BLOCK_H: tl.constexpr, NORM_Q: tl.constexpr, NORM_K: tl.constexpr,
    ROPE: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    pid_h = tl.program_id(1)
    if token < NQ:  # tokens of q first, then those of k: one launch for both
        _norm_rope_token(q_ptr, qw_ptr, q_out_ptr, cos_ptr, sin_ptr, token, Lq, H, sqb, sql, sqh, st, eps, pid_h,
                         HEAD_DIM, HALF, BLOCK_H, NORM_Q, ROPE)
    else:
        _norm_rope_token(k_ptr, kw_ptr, k_out_ptr, cos_ptr, sin_ptr, token - NQ, Lk, H, skb, skl, skh, st, eps,
                         pid_h, HEAD_DIM, HALF, BLOCK_H, NORM_K, ROPE)


def _qk_rope_block_h(heads: int, head_dim: int) -> int:
    return max(1, min(triton.next_power_of_2(heads), 2048 // (2 * half_block(head_dim))))


@_dispatch.on_tensor_device  # launch on the tensors' GPU
def qk_norm_rope(q, k, q_weight, k_weight, cos, sin, eps: float):
    """Launch on (B, L, H, D) tensors (any strides, last dim contiguous); weights (each side's, or None) and
    tables fp32 or None."""
    b, lq, h, d = q.shape
    lk = k.shape[1]
    q_out = _alloc.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = _alloc.empty(k.shape, dtype=k.dtype, device=k.device)
    tokens = b * (lq + lk)
    if tokens == 0 or h == 0:
        return q_out, k_out
    norm_q, norm_k, rope = q_weight is not None, k_weight is not None, cos is not None
    block_h = _qk_rope_block_h(h, d)
    grid = (tokens, triton.cdiv(h, block_h))
    _qk_norm_rope_kernel[grid](
        q, k, q_weight if norm_q else q, k_weight if norm_k else k, cos if rope else q, sin if rope else q,
        q_out, k_out, b * lq, lq, lk, h, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1),
        k.stride(2), cos.stride(0) if rope else 0, eps,
        HEAD_DIM=d, HALF=half_block(d), BLOCK_H=block_h, NORM_Q=norm_q, NORM_K=norm_k, ROPE=rope, num_warps=4,
    )
    return q_out, k_out


# -- flash-attention forward with the norm and RoPE fused into the tile loads ---------------------------

@triton.jit
def _load_norm_rope_tile(
    base, rows, n_rows, stride_row, w_ptr, cos_ptr, sin_ptr, st, eps,
    HEAD_DIM: tl.constexpr, HALF: tl.constexpr, NORM: tl.constexpr, ROPE: tl.constexpr,
):
    """Rows `rows` of one head as two half tiles (fp32), RMS-normalised and rotated as asked."""
    half_dim: tl.constexpr = HEAD_DIM // 2
    cols = tl.arange(0, HALF)
    col_ok = cols < half_dim
    row_ok = rows < n_rows
    mask = row_ok[:, None] & col_ok[None, :]
    ptrs = base + rows[:, None].to(tl.int64) * stride_row + cols[None, :]
    x1 = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(ptrs + half_dim, mask=mask, other=0.0).to(tl.float32)
    if NORM:
        x1, x2 = _rms_norm_halves(x1, x2, w_ptr, cols, col_ok, half_dim, eps, HEAD_DIM)
    if ROPE:
        tab = rows[:, None].to(tl.int64) * st + cols[None, :]
        c1 = tl.load(cos_ptr + tab, mask=mask, other=0.0)
        c2 = tl.load(cos_ptr + tab + half_dim, mask=mask, other=0.0)
        s1 = tl.load(sin_ptr + tab, mask=mask, other=0.0)
        s2 = tl.load(sin_ptr + tab + half_dim, mask=mask, other=0.0)
        y1 = x1 * c1 - x2 * s1
        y2 = x2 * c2 + x1 * s2
        x1, x2 = y1, y2
    return x1, x2


@triton.jit
def _attention_fwd_kernel(
    q_ptr, k_ptr, v_ptr, qw_ptr, kw_ptr, cos_ptr, sin_ptr, out_ptr, s_ptr,
    Lq, Lk, H, sqb, sql, sqh, skb, skl, skh, svb, svl, svh, st, qk_scale, eps, last_key_log2,
    HEAD_DIM: tl.constexpr, HALF: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, NORM: tl.constexpr, ROPE: tl.constexpr, EVEN_N: tl.constexpr,
    REPEAT_LAST: tl.constexpr, DOT_PRECISION: tl.constexpr, OUT_FP8: tl.constexpr,
):
    # one grid axis (see `attention_grid`): the query blocks of one (batch, head) run next to each other
    tiles_m = tl.cdiv(Lq, BLOCK_M)
    pid = tl.program_id(0)
    pid_m = pid % tiles_m
    bh = pid // tiles_m
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    dtype = q_ptr.dtype.element_ty
    rows_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    q1, q2 = _load_norm_rope_tile(q_ptr + b * sqb + h * sqh, rows_m, Lq, sql, qw_ptr, cos_ptr, sin_ptr, st, eps,
                                  HEAD_DIM, HALF, NORM, ROPE)
    q1 = q1.to(dtype)
    q2 = q2.to(dtype)
    k_base = k_ptr + b * skb + h * skh
    v_base = v_ptr + b * svb + h * svh
    d_cols = tl.arange(0, BLOCK_D)
    d_ok = d_cols < HEAD_DIM
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, Lk, BLOCK_N):
        rows_n = start_n + tl.arange(0, BLOCK_N)
        # K arrives normalised and rotated (once per key, by qk_norm_rope): a plain two-half load.
        k1, k2 = _load_norm_rope_tile(k_base, rows_n, Lk, skl, kw_ptr, cos_ptr, sin_ptr, st, eps,
                                      HEAD_DIM, HALF, False, False)
        scores = tl.dot(q1, tl.trans(k1.to(dtype)), input_precision=DOT_PRECISION)
        scores = tl.dot(q2, tl.trans(k2.to(dtype)), acc=scores, input_precision=DOT_PRECISION)
        scores = scores * qk_scale  # log2-domain: scale * log2(e)
        if REPEAT_LAST:  # the last key stands for `repeats` equal keys: weight exp(s) * repeats
            scores = scores + tl.where((rows_n == Lk - 1)[None, :], last_key_log2, 0.0)
        if not EVEN_N:
            scores = tl.where((rows_n < Lk)[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v_mask = (rows_n < Lk)[:, None] & d_ok[None, :]
        v = tl.load(v_base + rows_n[:, None].to(tl.int64) * svl + d_cols[None, :], mask=v_mask, other=0.0)
        acc = tl.dot(p.to(dtype), v, acc=acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new
    out = acc / l_i[:, None]
    o_rows = (b * Lq + rows_m).to(tl.int64) * H + h
    o_ptrs = out_ptr + o_rows[:, None] * HEAD_DIM + d_cols[None, :]
    o_mask = (rows_m < Lq)[:, None] & d_ok[None, :]
    if OUT_FP8:  # one scale per (token, head) from the fp32 row (padded columns hold 0: no effect on the amax)
        row_scales = row_scale(tl.max(tl.abs(out), axis=1))
        tl.store(o_ptrs, quantize_tile(out, row_scales[:, None]), mask=o_mask)
        tl.store(s_ptr + o_rows, row_scales, mask=rows_m < Lq)
    else:
        tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=o_mask)


@functools.lru_cache(maxsize=8)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def gpu_config(head_dim: int, dtype: torch.dtype, hopper: bool, rope: bool) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) on a GPU; BLOCK_N is a power of two (tl.arange).

    Checked for sm_90a by the compile report (no spills; HGMMA in 16 bits). K tiles are plain loads (K is
    normalised and rotated once before the kernel; only the Q tile, loaded once per program, carries the norm
    and the tables), so RoPE no longer shrinks the key tiles: 128 keys at head_dim 64, 64 at 128. Three K/V
    stages fit Hopper's 227 KB of shared memory; two fit Ampere and consumer cards.
    """
    stages = 3 if hopper else 2
    if dtype == torch.float32:
        # IEEE fp32 dots run on the FMA units: each thread holds its Q rows, its accumulator and its K / V operands
        # in registers. 4 warps on 64-row tiles spill (255 registers, 1.7 KB at head_dim 128, 11 KB at 256): more
        # warps and, at 256, half the rows keep them at 100-160. At 256 with one stage (consumer cards' 99 KB)
        # Triton 3.6 caps 8 warps at 128 registers: 16 keys per step there.
        if head_dim <= 64:
            return 64, 32, 4, 2
        if head_dim <= 128:
            return 64, 32, 8, 2
        return (32, 32, 8, 2) if hopper else (32, 16, 8, 1)
    if head_dim <= 64:
        return 128, 128 if hopper else 64, 8, 2 if hopper else stages
    if head_dim <= 128:
        # the normalised, rotated 128 x 128 Q tile with its tables spills at 255 registers: half the rows
        return (64, 64, 4, stages) if rope else (128, 64, 8, stages)
    return 64, 32, 8, 2 if hopper else 1  # head_dim up to 256: one stage fits consumer cards' 99 KB


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 attention stays fp32 (no TF32 rounding of its inputs); bf16 / fp16 tiles use tensor cores as they are."""
    return "ieee" if dtype == torch.float32 else "tf32"


def attention_config(head_dim: int, dtype: torch.dtype, device: torch.device, rope: bool) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for a head dim, dtype and device."""
    if device.type != "cuda":
        return 32, 32, 4, 1  # the interpreter: small tiles keep test shapes small
    index = device.index if device.index is not None else torch.cuda.current_device()
    return gpu_config(head_dim, dtype, _capability(index)[0] >= 9, rope)


MAX_GRID_X = 2 ** 31 - 1  # CUDA's limit on grid axis x; axes y and z stop at 65,535


def attention_grid(batch: int, heads: int, lq: int, block_m: int) -> tuple[int]:
    """The launch grid: every (query block, batch, head) on axis x, query blocks fastest, so that the programs of
    one head, which read the same K and V, run together. Axis y would cap batch x heads at 65,535."""
    programs = triton.cdiv(lq, block_m) * batch * heads
    if programs > MAX_GRID_X:
        raise ValueError(f"attention: {programs} programs of {block_m} queries (batch {batch} x heads {heads} x "
                         f"{lq} queries) exceed CUDA's {MAX_GRID_X} per launch; split the batch")
    return (programs,)


@_dispatch.on_tensor_device  # launch on the tensors' GPU
def attention(q, k, v, q_weight, k_weight, cos, sin, scale: float, eps: float, last_key_repeats: int = 1,
              config: tuple[int, int, int, int] | None = None, fp8: bool = False):
    """Launch on (B, L, H, D) tensors (any strides, last dim contiguous); weights (each side's, or None) and
    tables fp32 or None. K is normalised and rotated first, once per key (one `qk_norm_rope` launch, none
    when K needs neither); the Q side is fused into the kernel's tile loads. `config` overrides the tiles.
    Returns a new tensor in q's dtype, or with `fp8` (e4m3 values, (B, Lq, H, 1) fp32 scales)."""
    b, lq, h, d = q.shape
    lk = k.shape[1]
    out = _alloc.empty(q.shape, dtype=E4M3 if fp8 else q.dtype, device=q.device)
    scales = _alloc.empty((b, lq, h, 1), dtype=torch.float32, device=q.device) if fp8 else out
    result = (out, scales) if fp8 else out
    if out.numel() == 0:
        return result
    if lk == 0:  # softmax over no keys: the empty sum (quantized: zeros with the floor scale)
        out.zero_()
        if fp8:
            scales.fill_(SCALE_FLOOR)
        return result
    rope = cos is not None
    if k_weight is not None or rope:
        _, k = qk_norm_rope(k[:, :0], k, None, k_weight, cos, sin, eps)  # no q rows: K alone
    norm = q_weight is not None
    block_m, block_n, warps, stages = config or attention_config(d, q.dtype, q.device, rope)
    grid = attention_grid(b, h, lq, block_m)
    _attention_fwd_kernel[grid](
        q, k, v, q_weight if norm else q, q, cos if rope else q, sin if rope else q, out, scales,
        lq, lk, h, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), cos.stride(0) if rope else 0, scale * LOG2E, eps,
        math.log2(last_key_repeats),
        HEAD_DIM=d, HALF=half_block(d), BLOCK_D=2 * half_block(d), BLOCK_M=block_m, BLOCK_N=block_n,
        NORM=norm, ROPE=rope, EVEN_N=lk % block_n == 0, REPEAT_LAST=last_key_repeats != 1,
        DOT_PRECISION=dot_precision(q.dtype), OUT_FP8=fp8, num_warps=warps, num_stages=stages,
    )
    return result


# -- compile report ----------------------------------------------------------------------------------------

# What Triton sees divisible by 16 at the 2B's launches (it specialises on it): every pointer, the head count and
# the strides of the packed QKV projection (6,144 per token, 128 per head), of the cached cross-attention keys
# (2,048 per row; batch stride 0 when expanded) and of the RoPE tables (head_dim per row). The lengths (1,764
# tokens, 14 text rows) are not.
ATTENTION_DIVISIBLE = ("q_ptr", "k_ptr", "v_ptr", "qw_ptr", "kw_ptr", "cos_ptr", "sin_ptr", "out_ptr", "s_ptr", "H",
                       "sqb", "sql", "sqh", "skb", "skl", "skh", "svb", "svl", "svh", "st")
QK_ROPE_DIVISIBLE = ("q_ptr", "k_ptr", "qw_ptr", "kw_ptr", "cos_ptr", "sin_ptr", "q_out_ptr", "k_out_ptr", "H",
                     "sqb", "sql", "sqh", "skb", "skl", "skh", "st")


def _attention_signature(dt: str, fp8: bool) -> dict[str, str]:
    ints = ("Lq", "Lk", "H", "sqb", "sql", "sqh", "skb", "skl", "skh", "svb", "svl", "svh", "st")
    sig = {n: f"*{dt}" for n in ("q_ptr", "k_ptr", "v_ptr")}
    sig.update({"qw_ptr": "*fp32", "kw_ptr": "*fp32", "cos_ptr": "*fp32", "sin_ptr": "*fp32"})
    sig.update(out_ptr="*fp8e4nv" if fp8 else f"*{dt}", s_ptr="*fp32" if fp8 else f"*{dt}")
    sig.update({n: "i32" for n in ints})
    sig.update(qk_scale="fp32", eps="fp32", last_key_log2="fp32")
    sig.update({n: "constexpr" for n in ("HEAD_DIM", "HALF", "BLOCK_D", "BLOCK_M", "BLOCK_N", "NORM", "ROPE",
                                          "EVEN_N", "REPEAT_LAST", "DOT_PRECISION", "OUT_FP8")})
    return sig


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# The model's head dims in 16 bits; fp32, whose tiles change with head_dim, over the whole supported range.
_REPORT_HEAD_DIMS = {"bf16": (64, 128), "fp16": (64, 128), "fp32": (64, 96, 128, 256)}


def _attention_report_configs(fp8: bool = False) -> list[TritonConfig]:
    """The launch's own specialisations: self-attention (norm + RoPE on Q, EVEN_N False at 1,764 keys) and
    cross-attention over compacted text (Q norm, the last key repeated), per architecture family; families that
    launch the same tiles share one row. `fp8`: the e4m3 output's, which the FP8 network launches on q and k
    normed in the QKV GEMM (self-attention: no norm, no RoPE; cross-attention: the last key repeated, with or
    without the q norm)."""
    combos = ((True, True, False), (True, False, True), (False, False, False)) + (((False, False, True),) if fp8
                                                                                 else ())
    archs: dict[tuple, list[str]] = {}
    for dt, dims in _REPORT_HEAD_DIMS.items():
        for d in dims:
            for norm, rope, repeat in combos:
                for arch, hopper in (("sm90", True), ("sm80/sm89", False)):
                    tiles = gpu_config(d, _DTYPES[dt], hopper=hopper, rope=rope)
                    archs.setdefault((dt, d, norm, rope, repeat, tiles), []).append(arch)
    configs = []
    for (dt, d, norm, rope, repeat, tiles), names in archs.items():
        block_m, block_n, warps, stages = tiles
        label = (f"{'/'.join(names)} {dt} d={d}{' norm' if norm else ''}{' rope' if rope else ''}"
                 f"{' repeat-last' if repeat else ''}")
        precision = dot_precision(_DTYPES[dt])
        configs.append(TritonConfig(label, _attention_signature(dt, fp8), {
            "HEAD_DIM": d, "HALF": half_block(d), "BLOCK_D": 2 * half_block(d), "BLOCK_M": block_m,
            "BLOCK_N": block_n, "NORM": norm, "ROPE": rope, "EVEN_N": False, "REPEAT_LAST": repeat,
            "DOT_PRECISION": precision, "OUT_FP8": fp8}, num_warps=warps, num_stages=stages,
            divisible=ATTENTION_DIVISIBLE, tensor_cores=precision != "ieee"))
    return configs


def _register_for_compile_report() -> None:
    rope_configs = []
    for dt in ("bf16", "fp16"):
        rsig = {n: f"*{dt}" for n in ("q_ptr", "k_ptr", "q_out_ptr", "k_out_ptr")}
        rsig.update({"qw_ptr": "*fp32", "kw_ptr": "*fp32", "cos_ptr": "*fp32", "sin_ptr": "*fp32"})
        rsig.update({n: "i32" for n in ("NQ", "Lq", "Lk", "H", "sqb", "sql", "sqh", "skb", "skl", "skh", "st")})
        rsig.update(eps="fp32")
        rsig.update({n: "constexpr" for n in ("HEAD_DIM", "HALF", "BLOCK_H", "NORM_Q", "NORM_K", "ROPE")})
        for norm_q, rope in ((True, True), (False, True), (True, False)):
            rope_configs.append(TritonConfig(
                f"{dt} 16x128{' norm-q' if norm_q else ''} norm-k{' rope' if rope else ''}", rsig,
                {"HEAD_DIM": 128, "HALF": 64, "BLOCK_H": _qk_rope_block_h(16, 128), "NORM_Q": norm_q, "NORM_K": True,
                 "ROPE": rope}, num_warps=4, divisible=QK_ROPE_DIVISIBLE))
    register_triton_kernel("attention.flash_attention_fwd", _attention_fwd_kernel, _attention_report_configs(),
                           matrix=True)
    register_triton_kernel("attention.flash_attention_fwd_fp8", _attention_fwd_kernel,
                           _attention_report_configs(fp8=True), matrix=True)
    register_triton_kernel("attention.qk_norm_rope", _qk_norm_rope_kernel, rope_configs)


_register_for_compile_report()
