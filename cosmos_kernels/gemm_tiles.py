"""What the Triton GEMM kernels share before and inside their main loops: the grouped order in which programs walk
the output tiles, the wrapped row and column indices of a tile, the operands' tile pointers, the loads of one K
tile, and the tile configuration.

Programs walk the output tiles in groups of GROUP_M tile rows, so that a group reuses each weight tile from L2.
Rows and columns past the edge are wrapped (`% M`, `% N`) instead of masked on load, which keeps the main loop free
of M and N masks; only the stores are masked. A ragged last K tile is masked on load (zeros add nothing to a dot).
The `@triton.jit` functions here are inlined into the kernels that call them (and run as they are under the
interpreter). Imported by the Triton modules only: Triton is an optional dependency.
"""

from __future__ import annotations

from dataclasses import dataclass

import triton
import triton.language as tl


@dataclass(frozen=True)
class GemmConfig:
    """An output tile of `block_m x block_n`, K tiles `block_k` deep, `group_m` tile rows per group of programs."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int


@triton.jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """`(pid_m, pid_n)` of program `pid`: the tiles in groups of GROUP_M tile rows, column by column in a group."""
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = min(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows
    return pid_m, pid_n


@triton.jit
def tile_indices(pid_m, pid_n, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """`(rm, rn, rows, cols)`: the tile's row and column indices (for the masked stores), and the same wrapped into
    the matrix as int64 (for the loads, which need no mask along M and N)."""
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = (rm % M).to(tl.int64)
    cols = (rn % N).to(tl.int64)
    return rm, rn, rows, cols


@triton.jit
def operand_tiles(x_ptr, w_ptr, rows, cols, rk, sxm, sxk, swn, swk):
    """Pointers to the first K tiles of the operands of `x (M, K) @ w (N, K)^T`: `(BLOCK_M, BLOCK_K)` of x's rows
    `rows`, `(BLOCK_K, BLOCK_N)` of w's rows `cols` (w's tile transposed)."""
    x_tile = x_ptr + rows[:, None] * sxm + rk[None, :] * sxk
    w_tile = w_ptr + cols[None, :] * swn + rk[:, None] * swk
    return x_tile, w_tile


@triton.jit
def load_rows_k(ptrs, rk, k_left, EVEN_K: tl.constexpr):
    """A `(rows, BLOCK_K)` tile, K along its columns: zeros past `k_left` unless every K tile is whole."""
    if EVEN_K:
        tile = tl.load(ptrs)
    else:
        tile = tl.load(ptrs, mask=rk[None, :] < k_left, other=0.0)
    return tile


@triton.jit
def load_cols_k(ptrs, rk, k_left, EVEN_K: tl.constexpr):
    """A `(BLOCK_K, cols)` tile, K along its rows: zeros past `k_left` unless every K tile is whole."""
    if EVEN_K:
        tile = tl.load(ptrs)
    else:
        tile = tl.load(ptrs, mask=rk[:, None] < k_left, other=0.0)
    return tile
