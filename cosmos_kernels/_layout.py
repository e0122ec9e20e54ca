"""Views of broadcast operands as (N0, N1, N2, D) row grids, without copies where the strides allow.

Every element-wise kernel of the package walks rows of length D whose offset is
`i0 * s0 + i1 * s1 + i2 * s2` per operand, with the last dimension contiguous. Broadcast dimensions get
stride 0, so per-frame modulation `(B, T, 1, D)` against `(B, T, S, D)` and strided `chunk()` views are
read in place.
"""

from __future__ import annotations

import torch


def _collapse(sizes: list[int], strides: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """Merge adjacent leading dims where every operand's strides allow it."""
    keep = [i for i, s in enumerate(sizes) if s != 1]
    sizes = [sizes[i] for i in keep]
    strides = [[st[i] for i in keep] for st in strides]
    i = len(sizes) - 2
    while i >= 0:
        if all(st[i] == st[i + 1] * sizes[i + 1] for st in strides):
            sizes[i] *= sizes.pop(i + 1)
            for st in strides:
                st.pop(i)  # the merged dim keeps the inner stride
        i -= 1
    return sizes, strides


def as_row_grid(out_shape: torch.Size, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Return each tensor expanded to `out_shape` and viewed as `(N0, N1, N2, D)`.

    The views share memory with the inputs unless the strides cannot be expressed in three leading dims
    or the last dim is not contiguous; those operands (rare) are copied.
    """
    if len(out_shape) <= 4 and all(t.stride(-1) == 1 or t.shape[-1] == 1 for t in tensors):
        # Fast path, the network's (B, T, S, D) tokens and (B, T, 1, D) modulation, and every shape of up to four
        # dims: a row grid once expanded (broadcast dims get stride 0) and padded with leading unit dims; no stride
        # arithmetic on the host, and only views that torch.compile tracks (never as_strided: inductor may lay
        # out an intermediate with other strides than the ones seen while tracing).
        # Sizes go as separate ints: parsing a torch.Size argument costs about twice as much host time.
        if len(out_shape) == 4:  # already a grid: no view to make
            return [t if t.shape == out_shape else t.expand(*out_shape) for t in tensors]
        grid = (1,) * (4 - len(out_shape)) + tuple(out_shape)
        return [(t if t.shape == out_shape else t.expand(*out_shape)).view(*grid) for t in tensors]
    d = out_shape[-1]
    lead = list(out_shape[:-1])
    ops = []
    for t in tensors:
        if t.shape[-1] != 1 and t.stride(-1) != 1:
            t = t.contiguous()
        ops.append(t.expand(out_shape))
    sizes, strides = _collapse(lead, [list(e.stride()[:-1]) for e in ops])
    if len(sizes) > 3:  # not expressible with three strides per operand: materialise (rare)
        ops = [e.contiguous() for e in ops]
        sizes, strides = _collapse(lead, [list(e.stride()[:-1]) for e in ops])
    pad = 3 - len(sizes)
    sizes = [1] * pad + sizes
    if torch.compiler.is_compiling():  # as_strided is unsafe on intermediates there: a copy in the grid's shape
        return [e.reshape(*sizes, d) for e in ops]
    return [
        torch.as_strided(e, (*sizes, d), (*([0] * pad + st), 1 if d != 1 else e.stride(-1)))
        for e, st in zip(ops, strides)
    ]
