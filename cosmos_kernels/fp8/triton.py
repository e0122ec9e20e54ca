"""Triton kernels of the FP8 family: row-wise e4m3 quantization, of x or of GELU(x) (one pass: the GELU output
never reaches memory), one program per row of a (N0, N1, N2, D) grid.

The jit helpers `row_scale` and `to_e4m3_grid` are shared with the kernels that quantize the rows they produce
(the adaptive-norm family's FP8 outputs). `to_e4m3_grid` rounds an fp32 value to the nearest e4m3 value (ties to
even) with integer arithmetic, so the final cast converts an exact value: the cast's own rounding is never relied
on (Triton's interpreter rounds some values that carry into the next binade to half their size).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from cosmos_kernels import _alloc, _dispatch
from cosmos_kernels._registry import TritonConfig, register_triton_kernel
from cosmos_kernels.fp8.reference import E4M3

MAX_SINGLE_TILE = 8192
LOOP_TILE = 4096
MIN_NORMAL_E4M3 = tl.constexpr(0.015625)  # 2^-6: below it e4m3 values are multiples of 2^-9


@triton.jit
def row_scale(amax):
    """`max(amax / 448, 2^-126)`, the division correctly rounded (as the reference's)."""
    return tl.maximum(tl.math.div_rn(amax, 448.0), 1.1754943508222875e-38)


@triton.jit
def to_e4m3_grid(y):
    """`y` clamped to [-448, 448] and rounded to the nearest e4m3 value, ties to even, still in fp32."""
    a = tl.minimum(tl.abs(y), 448.0)
    small = a < MIN_NORMAL_E4M3
    # In [2^-6, 2^-5) e4m3's spacing is 2^-9, that of its subnormals: shift them there, round, shift back.
    z = tl.where(small, a + MIN_NORMAL_E4M3, a)
    bits = z.to(tl.int32, bitcast=True)
    bits = (bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576  # keep 3 mantissa bits, round half to even
    r = bits.to(tl.float32, bitcast=True)
    r = tl.where(small, r - MIN_NORMAL_E4M3, r)
    return tl.where(y < 0, -r, r)


@triton.jit
def quantize_tile(y, scale):
    """e4m3 values of `y / scale` (a tile of one row, fp32)."""
    return to_e4m3_grid(tl.math.div_rn(y, scale)).to(tl.float8e4nv)


@triton.jit
def round_to_bf16(y):
    """fp32 `y` rounded to the nearest bfloat16 (ties to even) on its bits, still fp32: a bfloat16 cast that follows
    is exact on every backend (Triton's interpreter truncates a bfloat16 cast)."""
    bits = y.to(tl.int32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def gelu_in_dtype(x, ROUND: tl.constexpr):
    """Exact (erf) GELU of an fp32 tile, `x * 0.5 * (1 + erf(x / sqrt(2)))` as PyTorch evaluates it, rounded to
    the input's dtype (ROUND 1: bfloat16, 2: float16, 0: float32 stays) and returned in fp32: the value that
    `F.gelu(x)` stores. The bfloat16 rounding (to nearest, ties to even) is done on the bits, so that every
    backend rounds alike (Triton's interpreter truncates a bfloat16 cast)."""
    y = x * 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))
    if ROUND == 1:
        y = round_to_bf16(y)
    elif ROUND == 2:
        y = y.to(tl.float16).to(tl.float32)
    return y


@triton.jit
def load_row_tile(x_row, cols, mask, GELU: tl.constexpr, ROUND: tl.constexpr):
    """A tile of the row in fp32, or of its GELU (rounded as `gelu_in_dtype` says; GELU(0) = 0 past the row)."""
    x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
    if GELU:
        x = gelu_in_dtype(x, ROUND)
    return x


@triton.jit
def _quantize_rows_kernel(
    x_ptr, q_ptr, s_ptr, N1, N2, D, xs0, xs1, xs2,
    BLOCK_D: tl.constexpr, SINGLE_TILE: tl.constexpr, GELU: tl.constexpr, ROUND: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    i2 = row % N2
    i1 = (row // N2) % N1
    i0 = row // (N2 * N1)
    x_row = x_ptr + i0 * xs0 + i1 * xs1 + i2 * xs2
    q_row = q_ptr + row * D
    if SINGLE_TILE:
        cols = tl.arange(0, BLOCK_D)
        mask = cols < D
        y = load_row_tile(x_row, cols, mask, GELU, ROUND)
        scale = row_scale(tl.max(tl.abs(y), axis=0))
        tl.store(q_row + cols, quantize_tile(y, scale), mask=mask)
    else:  # wide rows: read twice (and GELU twice, which is cheap) rather than a round trip through memory
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for start in range(0, D, BLOCK_D):
            cols = start + tl.arange(0, BLOCK_D)
            acc = tl.maximum(acc, tl.abs(load_row_tile(x_row, cols, cols < D, GELU, ROUND)))
        scale = row_scale(tl.max(acc, axis=0))
        for start in range(0, D, BLOCK_D):
            cols = start + tl.arange(0, BLOCK_D)
            mask = cols < D
            tl.store(q_row + cols, quantize_tile(load_row_tile(x_row, cols, mask, GELU, ROUND), scale), mask=mask)
    tl.store(s_ptr + row, scale)


ROUNDING = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def row_config(d: int) -> tuple[int, bool, int]:
    """(BLOCK_D, SINGLE_TILE, num_warps) for rows of width d."""
    block = triton.next_power_of_2(max(d, 1))
    if block <= MAX_SINGLE_TILE:
        return block, True, max(1, min(16, block // 256))
    return LOOP_TILE, False, 16


def _quantize_rows(x: torch.Tensor, gelu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    n0, n1, n2, d = x.shape
    values = _alloc.empty(x.shape, dtype=E4M3, device=x.device)
    scales = _alloc.empty((n0, n1, n2, 1), dtype=torch.float32, device=x.device)
    rows = n0 * n1 * n2
    if rows:
        block, single, warps = row_config(d)
        _quantize_rows_kernel[(rows,)](x, values, scales, n1, n2, d, x.stride(0), x.stride(1), x.stride(2),
                                       BLOCK_D=block, SINGLE_TILE=single, GELU=gelu,
                                       ROUND=ROUNDING[x.dtype] if gelu else 0, num_warps=warps)
    return values, scales


@_dispatch.on_tensor_device  # launch on the tensors' GPU
def quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`x` a (N0, N1, N2, D) row grid (any strides, last dim contiguous): new contiguous values and (N0, N1, N2, 1)
    fp32 scales."""
    return _quantize_rows(x, gelu=False)


@_dispatch.on_tensor_device  # launch on the tensors' GPU
def gelu_quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantize_rowwise(F.gelu(x))` in one pass over a (N0, N1, N2, D) row grid (any strides, last dim
    contiguous; float32, bfloat16 or float16): new contiguous e4m3 values and (N0, N1, N2, 1) fp32 scales."""
    return _quantize_rows(x, gelu=True)


def _register_for_compile_report() -> None:
    sig = {"x_ptr": "*{dt}", "q_ptr": "*fp8e4nv", "s_ptr": "*fp32"}
    sig.update({n: "i64" for n in ("N1", "N2", "D", "xs0", "xs1", "xs2")})
    sig.update(BLOCK_D="constexpr", SINGLE_TILE="constexpr", GELU="constexpr", ROUND="constexpr")
    configs = []
    for dt in ("bf16", "fp32"):
        for d in (2048, 8192, 16384):
            block, single, warps = row_config(d)
            configs.append(TritonConfig(f"{dt} D={d}", {k: v.format(dt=dt) for k, v in sig.items()},
                                        {"BLOCK_D": block, "SINGLE_TILE": single, "GELU": False, "ROUND": 0},
                                        num_warps=warps,
                                        divisible=("x_ptr", "q_ptr", "s_ptr", "D", "xs0", "xs1", "xs2")))
    register_triton_kernel("fp8.quantize_rowwise", _quantize_rows_kernel, configs)
    gelu_configs = [TritonConfig(c.label, c.signature,
                                 {**c.constexprs, "GELU": True, "ROUND": 1 if c.label.startswith("bf16") else 0},
                                 num_warps=c.num_warps, divisible=c.divisible) for c in configs]
    register_triton_kernel("fp8.gelu_quantize_rowwise", _quantize_rows_kernel, gelu_configs)


_register_for_compile_report()
