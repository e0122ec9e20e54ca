"""Per-group summary of pytest-benchmark results: medians of fused / reference / torch.compile and their ratios.

Every benchmark is one variant of one group (`extra_info["variant"]`, `group`); the medians are pytest-benchmark's
own `stats.median`, so the summary and pytest-benchmark's table agree by construction. A ratio is the other
variant's median over the fused one: above 1, the fused variant is faster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

FUSED, REFERENCE, COMPILE = "fused", "reference", "compile"
HEADER = ("group", "fused", "reference", "torch.compile", "ref/fused", "compile/fused", "other variants")


@dataclass
class GroupSummary:
    group: str
    medians_s: dict[str, float] = field(default_factory=dict)  # variant -> median seconds
    extra_info: dict[str, dict] = field(default_factory=dict)  # variant -> its extra_info

    def ratio(self, variant: str) -> float | None:
        """median(variant) / median(fused): how many times faster the fused variant is."""
        fused, other = self.medians_s.get(FUSED), self.medians_s.get(variant)
        if fused is None or other is None or fused <= 0:
            return None
        return other / fused

    def ratios(self) -> dict[str, float]:
        out = {}
        for variant in self.medians_s:
            r = self.ratio(variant)
            if variant != FUSED and r is not None:
                out[f"fused_vs_{variant}"] = r
        return out

    def others(self) -> list[str]:
        return [v for v in self.medians_s if v not in (FUSED, REFERENCE, COMPILE)]


def group_benchmarks(benchmarks: Iterable[Mapping]) -> list[GroupSummary]:
    """Benchmarks as pytest-benchmark's JSON writes them (`group`, `name`, `extra_info`, `stats.median`), grouped
    in order of first appearance; a benchmark without a variant is a group of its own."""
    groups: dict[str, GroupSummary] = {}
    for bench in benchmarks:
        stats = bench.get("stats") or {}
        median = stats.get("median")
        if median is None:
            continue
        info = bench.get("extra_info") or {}
        variant = info.get("variant") or bench.get("name", "?")
        name = bench.get("group") or bench.get("name", "?")
        summary = groups.setdefault(name, GroupSummary(name))
        summary.medians_s[variant] = float(median)
        summary.extra_info[variant] = dict(info)
    return list(groups.values())


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.4f}" if ms < 0.1 else f"{ms:.3f}" if ms < 100 else f"{ms:.1f}"


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def rows(groups: Iterable[GroupSummary]) -> list[tuple[str, ...]]:
    """One row per group: name, the three medians in ms, the two ratios, the remaining variants."""
    out = []
    for g in groups:
        other = ", ".join(
            f"{v} {_ms(g.medians_s[v])}" + (f" ({_x(g.ratio(v))})" if g.ratio(v) is not None else "")
            for v in g.others())
        out.append((g.group, _ms(g.medians_s.get(FUSED)), _ms(g.medians_s.get(REFERENCE)),
                    _ms(g.medians_s.get(COMPILE)), _x(g.ratio(REFERENCE)), _x(g.ratio(COMPILE)), other))
    return out


def format_table(groups: Iterable[GroupSummary]) -> list[str]:
    """The aligned text table (medians in ms): name left-aligned, numbers right-aligned."""
    body = rows(groups)
    table = [HEADER, *body]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADER) - 1)]
    lines = []
    for r in table:
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:-1], widths[1:])]
        lines.append("  ".join(cells + [r[-1]]).rstrip())
    return lines
