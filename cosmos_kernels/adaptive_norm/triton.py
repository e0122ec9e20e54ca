"""Triton kernels of the adaptive-norm family: one program per row of a (N0, N1, N2, D) row grid.

Rows up to 8192 wide are held in registers (one read of each operand); wider rows loop over 4096-wide
tiles in three passes (sum, centred sum of squares, output), re-reading the row from L2.

With `FP8`, the LayerNorm kernel writes its output row as e4m3 values and one fp32 scale (the FP8 family's row-wise
rule, applied to the output rounded to the input dtype, as the reference quantizes it) instead of the row itself:
a held row is quantized in registers; a looped row takes a fourth pass (its largest magnitude first).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from cosmos_kernels import _alloc, _dispatch
from cosmos_kernels._registry import TritonConfig, register_triton_kernel
from cosmos_kernels.fp8.reference import E4M3
from cosmos_kernels.fp8.triton import quantize_tile, row_scale

MAX_SINGLE_TILE = 8192
LOOP_TILE = 4096


@triton.jit
def _row_offset(i0, i1, i2, s0, s1, s2):
    return i0 * s0 + i1 * s1 + i2 * s2


@triton.jit
def _layer_norm_modulate_kernel(
    res_ptr, x_ptr, gate_ptr, shift_ptr, scale_ptr, new_res_ptr, out_ptr, q_ptr, qs_ptr,
    N1, N2, D,
    rs0, rs1, rs2, xs0, xs1, xs2, gs0, gs1, gs2, shs0, shs1, shs2, scs0, scs1, scs2,
    eps,
    GATED: tl.constexpr, BLOCK_D: tl.constexpr, SINGLE_TILE: tl.constexpr, FP8: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    i2 = row % N2
    i1 = (row // N2) % N1
    i0 = row // (N2 * N1)
    x_row = x_ptr + _row_offset(i0, i1, i2, xs0, xs1, xs2)
    res_row = res_ptr + _row_offset(i0, i1, i2, rs0, rs1, rs2)
    gate_row = gate_ptr + _row_offset(i0, i1, i2, gs0, gs1, gs2)
    shift_row = shift_ptr + _row_offset(i0, i1, i2, shs0, shs1, shs2)
    scale_row = scale_ptr + _row_offset(i0, i1, i2, scs0, scs1, scs2)
    out_row = out_ptr + row * D
    new_res_row = new_res_ptr + row * D
    q_row = q_ptr + row * D
    if SINGLE_TILE:
        cols = tl.arange(0, BLOCK_D)
        mask = cols < D
        x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
        if GATED:
            r = tl.load(res_row + cols, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(gate_row + cols, mask=mask, other=0.0).to(tl.float32)
            s = (r + g * x).to(new_res_ptr.dtype.element_ty)
            tl.store(new_res_row + cols, s, mask=mask)
            x = s.to(tl.float32)  # statistics of the rounded values the caller sees
        mean = tl.sum(x, axis=0) / D
        xc = tl.where(mask, x - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / D + eps)
        shift = tl.load(shift_row + cols, mask=mask, other=0.0).to(tl.float32)
        scale = tl.load(scale_row + cols, mask=mask, other=0.0).to(tl.float32)
        y = xc * rstd * (1.0 + scale) + shift
        if FP8:
            y = y.to(out_ptr.dtype.element_ty).to(tl.float32)  # the output as the reference rounds it
            row_s = row_scale(tl.max(tl.where(mask, tl.abs(y), 0.0), axis=0))
            tl.store(q_row + cols, quantize_tile(y, row_s), mask=mask)
            tl.store(qs_ptr + row, row_s)
        else:
            tl.store(out_row + cols, y.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        src_row = x_row
        if GATED:
            src_row = new_res_row
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for start in range(0, D, BLOCK_D):
            cols = start + tl.arange(0, BLOCK_D)
            mask = cols < D
            x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
            if GATED:
                r = tl.load(res_row + cols, mask=mask, other=0.0).to(tl.float32)
                g = tl.load(gate_row + cols, mask=mask, other=0.0).to(tl.float32)
                s = (r + g * x).to(new_res_ptr.dtype.element_ty)
                tl.store(new_res_row + cols, s, mask=mask)
                x = s.to(tl.float32)
            acc += x
        mean = tl.sum(acc, axis=0) / D
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for start in range(0, D, BLOCK_D):
            cols = start + tl.arange(0, BLOCK_D)
            mask = cols < D
            x = tl.load(src_row + cols, mask=mask, other=0.0).to(tl.float32)
            xc = tl.where(mask, x - mean, 0.0)
            acc += xc * xc
        rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / D + eps)
        row_s = 1.0
        if FP8:
            acc = tl.zeros([BLOCK_D], dtype=tl.float32)
            for start in range(0, D, BLOCK_D):
                cols = start + tl.arange(0, BLOCK_D)
                mask = cols < D
                x = tl.load(src_row + cols, mask=mask, other=0.0).to(tl.float32)
                shift = tl.load(shift_row + cols, mask=mask, other=0.0).to(tl.float32)
                scale = tl.load(scale_row + cols, mask=mask, other=0.0).to(tl.float32)
                y = ((x - mean) * rstd * (1.0 + scale) + shift).to(out_ptr.dtype.element_ty).to(tl.float32)
                acc = tl.maximum(acc, tl.where(mask, tl.abs(y), 0.0))
            row_s = row_scale(tl.max(acc, axis=0))
            tl.store(qs_ptr + row, row_s)
        for start in range(0, D, BLOCK_D):
            cols = start + tl.arange(0, BLOCK_D)
            mask = cols < D
            x = tl.load(src_row + cols, mask=mask, other=0.0).to(tl.float32)
            shift = tl.load(shift_row + cols, mask=mask, other=0.0).to(tl.float32)
            scale = tl.load(scale_row + cols, mask=mask, other=0.0).to(tl.float32)
            y = (x - mean) * rstd * (1.0 + scale) + shift
            if FP8:
                tl.store(q_row + cols, quantize_tile(y.to(out_ptr.dtype.element_ty).to(tl.float32), row_s), mask=mask)
            else:
                tl.store(out_row + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_kernel(
    x_ptr, w_ptr, out_ptr, N1, N2, D, xs0, xs1, xs2, ws0, ws1, ws2, eps,
    BLOCK_D: tl.constexpr, SINGLE_TILE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    i2 = row % N2
    i1 = (row // N2) % N1
    i0 = row // (N2 * N1)
    x_row = x_ptr + _row_offset(i0, i1, i2, xs0, xs1, xs2)
    w_row = w_ptr + _row_offset(i0, i1, i2, ws0, ws1, ws2)
    out_row = out_ptr + row * D
    if SINGLE_TILE:
        cols = tl.arange(0, BLOCK_D)
        mask = cols < D
        x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
        inv = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / D + eps)
        w = tl.load(w_row + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_row + cols, (x * inv * w).to(out_ptr.dtype.element_ty), mask=mask)
    else:
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for start in range(0, D, BLOCK_D):
            cols = start + tl.arange(0, BLOCK_D)
            x = tl.load(x_row + cols, mask=cols < D, other=0.0).to(tl.float32)
            acc += x * x
        inv = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / D + eps)
        for start in range(0, D, BLOCK_D):
            cols = start + tl.arange(0, BLOCK_D)
            mask = cols < D
            x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
            w = tl.load(w_row + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(out_row + cols, (x * inv * w).to(out_ptr.dtype.element_ty), mask=mask)


def row_config(d: int) -> tuple[int, bool, int]:
    """(BLOCK_D, SINGLE_TILE, num_warps) for rows of width d."""
    block = triton.next_power_of_2(max(d, 1))
    if block <= MAX_SINGLE_TILE:
        return block, True, max(1, min(16, block // 256))
    return LOOP_TILE, False, 16


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


@_dispatch.on_tensor_device  # launch on the tensors' GPU
def layer_norm_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float,
                        residual: torch.Tensor | None = None, gate: torch.Tensor | None = None, fp8: bool = False):
    """Launch on (N0, N1, N2, D) row grids; with `residual` and `gate`, the gated variant. Returns `out` or
    `(new_residual, out)`; with `fp8`, `out` is replaced by its e4m3 values and (N0, N1, N2, 1) fp32 row scales."""
    n0, n1, n2, d = x.shape
    gated = residual is not None
    if fp8:
        values = _alloc.empty(x.shape, dtype=E4M3, device=x.device)
        row_scales = _alloc.empty((n0, n1, n2, 1), dtype=torch.float32, device=x.device)
        out = x  # never written: its dtype is the one the output is rounded to before quantization
    else:
        out = _alloc.empty(x.shape, dtype=x.dtype, device=x.device)
        values, row_scales = out, out  # never written
    new_res = _alloc.empty(x.shape, dtype=x.dtype, device=x.device) if gated else out
    rows = n0 * n1 * n2
    if rows and d:
        block, single, warps = row_config(d)
        res = residual if gated else x
        g = gate if gated else x
        _layer_norm_modulate_kernel[(rows,)](
            res, x, g, shift, scale, new_res, out, values, row_scales, n1, n2, d,
            *_strides(res), *_strides(x), *_strides(g), *_strides(shift), *_strides(scale), eps,
            GATED=gated, BLOCK_D=block, SINGLE_TILE=single, FP8=fp8, num_warps=warps,
        )
    result = (values, row_scales) if fp8 else (out,)
    return (new_res, *result) if gated else (result if fp8 else out)


@_dispatch.on_tensor_device  # launch on the tensors' GPU
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    n0, n1, n2, d = x.shape
    out = _alloc.empty(x.shape, dtype=x.dtype, device=x.device)
    rows = n0 * n1 * n2
    if rows and d:
        block, single, warps = row_config(d)
        _rms_norm_kernel[(rows,)](x, weight, out, n1, n2, d, *_strides(x), *_strides(weight), eps,
                                  BLOCK_D=block, SINGLE_TILE=single, num_warps=warps)
    return out


# What Triton sees divisible by 16 at the model's launches (it specialises on it, and it sets the vector width):
# the pointers (modulation vectors are D-aligned slices of one table), D and every row stride (multiples of D,
# or 0 where a per-frame vector is broadcast over a frame's tokens).
LN_DIVISIBLE = ("res_ptr", "x_ptr", "gate_ptr", "shift_ptr", "scale_ptr", "new_res_ptr", "out_ptr", "q_ptr", "D",
                "rs0", "rs1", "rs2", "xs0", "xs1", "xs2", "gs0", "gs1", "gs2", "shs0", "shs1", "shs2",
                "scs0", "scs1", "scs2")
RMS_DIVISIBLE = ("x_ptr", "w_ptr", "out_ptr", "D", "xs0", "xs1", "xs2")


def _register_for_compile_report() -> None:
    ln_sig = {name: "*{dt}" for name in ("res_ptr", "x_ptr", "gate_ptr", "shift_ptr", "scale_ptr",
                                          "new_res_ptr", "out_ptr")}
    ln_sig.update(q_ptr="*fp8e4nv", qs_ptr="*fp32")
    ln_sig.update({name: "i64" for name in ("N1", "N2", "D", "rs0", "rs1", "rs2", "xs0", "xs1", "xs2",
                                            "gs0", "gs1", "gs2", "shs0", "shs1", "shs2", "scs0", "scs1", "scs2")})
    ln_sig.update(eps="fp32", GATED="constexpr", BLOCK_D="constexpr", SINGLE_TILE="constexpr", FP8="constexpr")
    rms_sig = {"x_ptr": "*{dt}", "w_ptr": "*{dt}", "out_ptr": "*{dt}"}
    rms_sig.update({n: "i64" for n in ("N1", "N2", "D", "xs0", "xs1", "xs2", "ws0", "ws1", "ws2")})
    rms_sig.update(eps="fp32", BLOCK_D="constexpr", SINGLE_TILE="constexpr")
    ln_configs, rms_configs = [], []
    for dt in ("bf16", "fp32"):
        for d in (2048, 3072, 16384):
            block, single, warps = row_config(d)
            for gated, fp8 in ((False, False), (True, False), (False, True), (True, True)):
                ln_configs.append(TritonConfig(
                    f"{dt} D={d}{' gated' if gated else ''}{' fp8' if fp8 else ''}",
                    {k: v.format(dt=dt) for k, v in ln_sig.items()},
                    {"GATED": gated, "BLOCK_D": block, "SINGLE_TILE": single, "FP8": fp8}, num_warps=warps,
                    divisible=LN_DIVISIBLE))
        for d in (128, 2048, 16384):
            block, single, warps = row_config(d)
            rms_configs.append(TritonConfig(f"{dt} D={d}", {k: v.format(dt=dt) for k, v in rms_sig.items()},
                                            {"BLOCK_D": block, "SINGLE_TILE": single}, num_warps=warps,
                                            divisible=RMS_DIVISIBLE))
    register_triton_kernel("adaptive_norm.layer_norm_modulate", _layer_norm_modulate_kernel, ln_configs)
    register_triton_kernel("adaptive_norm.rms_norm", _rms_norm_kernel, rms_configs)


_register_for_compile_report()
