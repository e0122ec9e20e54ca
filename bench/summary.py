"""Per-group summary of the benchmark results: fused / reference / torch.compile, their ratios and their spread.

Every benchmark is one variant of one group (`extra_info["variant"]`, `group`). Besides pytest-benchmark's own
rounds, which time each variant's rounds back to back, the variants of a group are timed in interleaved rounds
(`extra_info["interleaved_s"]`, one time per round, rounds aligned across the variants: see
`bench.common.interleaved_rounds`). A ratio is then the median over the rounds of the other variant's time over the
fused one's in the same round: a slow stretch of a shared machine slows both and cancels out. Above 1, the fused
variant is faster. Without interleaved rounds (one variant run alone, older JSON) the medians and the ratio of
medians are pytest-benchmark's.

A group is noisy when the interquartile range of any variant's times, or of any per-round ratio, is more than
`NOISE_THRESHOLD` of its median: its ratios are then not to be read (time-slicing by other processes makes times
multiples of the scheduler's slice, which no interleaving undoes).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

FUSED, REFERENCE, COMPILE = "fused", "reference", "compile"
NOISE_THRESHOLD = 0.20
HEADER = ("group", "rounds", "fused", "reference", "torch.compile", "ref/fused", "compile/fused", "spread",
          "other variants")
SHORT = {REFERENCE: "ref", COMPILE: "compile"}


def relative_iqr(samples: Sequence[float]) -> float:
    """Interquartile range over the median (0 for fewer than two samples)."""
    if len(samples) < 2:
        return 0.0
    q1, median, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return (q3 - q1) / median if median > 0 else float("inf")


def round_ratios(other: Sequence[float], fused: Sequence[float]) -> list[float]:
    """other / fused of each interleaved round."""
    if len(other) != len(fused):
        raise ValueError(f"other, fused: expected as many rounds, got {len(other)} and {len(fused)}")
    return [o / f for o, f in zip(other, fused) if f > 0]


@dataclass
class GroupSummary:
    group: str
    medians_s: dict[str, float] = field(default_factory=dict)  # variant -> median seconds
    minimums_s: dict[str, float] = field(default_factory=dict)  # variant -> fastest round, seconds
    rounds_s: dict[str, list[float]] = field(default_factory=dict)  # variant -> interleaved rounds, seconds
    extra_info: dict[str, dict] = field(default_factory=dict)  # variant -> its extra_info

    def _aligned(self, variant: str) -> bool:
        fused, other = self.rounds_s.get(FUSED), self.rounds_s.get(variant)
        return bool(fused) and other is not None and len(other) == len(fused)

    def rounds(self) -> int | None:
        """The number of interleaved rounds, None when the group was not interleaved."""
        return len(self.rounds_s[FUSED]) if self._aligned(FUSED) else None

    def ratio(self, variant: str) -> float | None:
        """time(variant) / time(fused): how many times faster the fused variant is (median of per-round ratios)."""
        if self._aligned(variant):
            ratios = round_ratios(self.rounds_s[variant], self.rounds_s[FUSED])
            return statistics.median(ratios) if ratios else None
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

    def spreads(self) -> dict[str, float]:
        """Relative IQR of each variant's interleaved times and of each per-round ratio ("<variant>/fused")."""
        out = {variant: relative_iqr(times) for variant, times in self.rounds_s.items()}
        for variant in self.rounds_s:
            if variant != FUSED and self._aligned(variant):
                out[f"{SHORT.get(variant, variant)}/fused"] = relative_iqr(
                    round_ratios(self.rounds_s[variant], self.rounds_s[FUSED]))
        return out

    def spread(self) -> float | None:
        """The widest relative IQR of the group (None without interleaved rounds)."""
        spreads = self.spreads()
        return max(spreads.values()) if spreads else None

    def noise(self, threshold: float = NOISE_THRESHOLD) -> str | None:
        """Why the group's ratios cannot be read (its widest spread above `threshold`), or None."""
        spreads = self.spreads()
        if not spreads:
            return None
        what, worst = max(spreads.items(), key=lambda item: item[1])
        if worst <= threshold:
            return None
        return (f"{what}: interquartile range {worst:.0%} of the median over {self.rounds() or '?'} rounds "
                f"(> {threshold:.0%})")

    def others(self) -> list[str]:
        return [v for v in self.medians_s if v not in (FUSED, REFERENCE, COMPILE)]


def from_rounds(group: str, rounds_s: Mapping[str, Sequence[float]]) -> GroupSummary:
    """A group from interleaved rounds alone (variant -> seconds per round)."""
    g = GroupSummary(group)
    for variant, times in rounds_s.items():
        g.rounds_s[variant] = [float(t) for t in times]
        g.medians_s[variant], g.minimums_s[variant] = statistics.median(times), min(times)
    return g


def _floats(value) -> list[float] | None:
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
        return [float(v) for v in value]
    return None


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
        rounds = _floats(info.get("interleaved_s"))
        if rounds is not None:
            summary.rounds_s[variant] = rounds
            summary.medians_s[variant], summary.minimums_s[variant] = statistics.median(rounds), min(rounds)
        else:
            summary.medians_s[variant] = float(median)
            if stats.get("min") is not None:
                summary.minimums_s[variant] = float(stats["min"])
        summary.extra_info[variant] = dict(info)
    return list(groups.values())


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.4f}" if ms < 0.1 else f"{ms:.3f}" if ms < 100 else f"{ms:.1f}"


def _time(g: GroupSummary, variant: str) -> str:
    """The median, with the fastest round beside it: "median (min)"."""
    if variant not in g.medians_s:
        return "-"
    fastest = g.minimums_s.get(variant)
    return _ms(g.medians_s[variant]) + ("" if fastest is None else f" ({_ms(fastest)})")


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _spread(g: GroupSummary) -> str:
    spread = g.spread()
    if spread is None:
        return "-"
    return f"{spread:.0%}" + (" noisy" if g.noise() else "")


def rows(groups: Iterable[GroupSummary]) -> list[tuple[str, ...]]:
    """One row per group: name, interleaved rounds, the three "median (min)" in ms, the two ratios, the spread,
    the remaining variants."""
    out = []
    for g in groups:
        other = "; ".join(
            f"{v} {_time(g, v)}" + (f" {_x(g.ratio(v))}" if g.ratio(v) is not None else "") for v in g.others())
        rounds = g.rounds()
        out.append((g.group, "-" if rounds is None else str(rounds), _time(g, FUSED), _time(g, REFERENCE),
                    _time(g, COMPILE), _x(g.ratio(REFERENCE)), _x(g.ratio(COMPILE)), _spread(g), other))
    return out


def notes(groups: Iterable[GroupSummary]) -> list[str]:
    """One line per noisy group: which spread is too wide."""
    return [f"noisy {g.group}: {reason}" for g in groups if (reason := g.noise())]


def format_table(groups: Iterable[GroupSummary]) -> list[str]:
    """The aligned text table (ms): name left-aligned, numbers right-aligned; then a line per noisy group."""
    groups = list(groups)
    body = rows(groups)
    table = [HEADER, *body]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADER) - 1)]
    lines = []
    for r in table:
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:-1], widths[1:])]
        lines.append("  ".join(cells + [r[-1]]).rstrip())
    return lines + notes(groups)
