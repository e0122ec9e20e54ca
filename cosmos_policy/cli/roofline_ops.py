"""Per-op breakdown of a roofline prediction: where one pass's predicted time and non-matmul bytes go, per card.

`breakdown(records, gpu)` groups the recorded ops by name and gives each group its calls, launches, matrix FLOPs,
bytes, non-matmul bytes and predicted milliseconds (the roofline's own per-op formula, `gpu.op_seconds`, summed
over the group's calls). `format_breakdown` prints the top groups by predicted time and by non-matmul bytes.
"""

from __future__ import annotations

from typing import Any

from cosmos_kernels.tools.dispatch_counter import OpRecord

TOP = 8


def table(rows: list[list[str]]) -> str:
    """Rows of cells as aligned text: the first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def breakdown(records: list[OpRecord], gpu: Any) -> list[dict]:
    """The records grouped by op name, most predicted time first (`gpu`: a roofline card, with `op_seconds` and
    `rate`). Ops that launch nothing (views, allocations) are left out."""
    groups: dict[str, dict] = {}
    for r in records:
        c = r.cost
        if not c.launches:
            continue
        moved = c.bytes_read + c.bytes_written
        g = groups.setdefault(r.name, {"op": r.name, "calls": 0, "launches": 0, "flops": 0, "bytes": 0,
                                       "nonmatmul_bytes": 0, "ms": 0.0})
        g["calls"] += 1
        g["launches"] += c.launches
        g["flops"] += c.flops
        g["bytes"] += moved
        g["nonmatmul_bytes"] += 0 if r.matmul else moved
        g["ms"] += 1e3 * gpu.op_seconds(c.flops, moved, c.launches, gpu.rate(r))
    return sorted(groups.values(), key=lambda g: (-g["ms"], g["op"]))


def format_breakdown(per_card: dict[str, list[dict]], labels: dict[str, str], top: int = TOP) -> str:
    """Per card: the `top` ops by predicted time (with their share of the pass) and by non-matmul bytes."""
    parts = []
    for card, groups in per_card.items():
        total = sum(g["ms"] for g in groups) or 1.0
        rows = [[f"{card} ({labels[card]}), fused pass: top ops by predicted time", "calls", "launches", "GFLOP",
                 "GB", "ms", "share"]]
        rows += [[g["op"], str(g["calls"]), str(g["launches"]), f"{g['flops'] / 1e9:.1f}", f"{g['bytes'] / 1e9:.3f}",
                  f"{g['ms']:.2f}", f"{100 * g['ms'] / total:.0f} %"] for g in groups[:top]]
        by_bytes = sorted((g for g in groups if g["nonmatmul_bytes"]), key=lambda g: -g["nonmatmul_bytes"])[:top]
        rows_b = [[f"{card}: top ops by non-matmul bytes", "GB", "launches", "ms"]]
        rows_b += [[g["op"], f"{g['nonmatmul_bytes'] / 1e9:.3f}", str(g["launches"]), f"{g['ms']:.2f}"]
                   for g in by_bytes]
        parts += [table(rows), table(rows_b)]
    return "\n\n".join(parts)
