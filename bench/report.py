"""A markdown table and a PNG chart of a pytest-benchmark JSON file.

    python -m pytest bench/ --benchmark-only --benchmark-json=out.json
    python -m bench.report out.json [--out DIR]

Writes `DIR/<name>.md` (the per-group summary, then one table per group: variants, medians, ratios, device,
commit) and `DIR/<name>.png` (a dot plot, one row per group: each variant's median relative to the fused one);
DIR defaults to the JSON file's folder. Bad input is one line `bench.report: error: ...` and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import summary

PROG = "bench.report"


class ReportError(Exception):
    """A user error: reported as one line, exit code 2."""


def load(path: Path) -> dict:
    """The parsed JSON, checked to be pytest-benchmark's output with at least one measured benchmark."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file") from None
    except OSError as exc:
        raise ReportError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: not JSON ({exc})") from None
    benchmarks = data.get("benchmarks") if isinstance(data, dict) else None
    if not isinstance(benchmarks, list):
        raise ReportError(f"{path}: not a pytest-benchmark JSON (no 'benchmarks' list); "
                          "write one with `pytest bench/ --benchmark-only --benchmark-json=FILE`")
    if not any(isinstance(b, dict) and isinstance(b.get("stats"), dict) and "median" in b["stats"]
               for b in benchmarks):
        raise ReportError(f"{path}: a pytest-benchmark JSON without any measured benchmark")
    return data


def _commit(data: dict) -> str:
    info = data.get("commit_info") or {}
    sha = str(info.get("id") or "unknown")[:12]
    return sha + ("+dirty" if info.get("dirty") else "")


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def markdown(data: dict, source: str = "") -> str:
    """The report: a header, the per-group summary table, then each group's variants."""
    groups = summary.group_benchmarks(data["benchmarks"])
    machine = data.get("machine_info") or {}
    cpu = (machine.get("cpu") or {}).get("brand_raw", machine.get("processor", "?"))
    lines = [f"# Benchmarks{f': {source}' if source else ''}", "",
             f"- date: {data.get('datetime', '?')}",
             f"- commit: {_commit(data)}",
             f"- machine: {machine.get('node', '?')}, {cpu}, Python {machine.get('python_version', '?')}",
             "- times are \"median (min)\" in ms over the variants' interleaved rounds (pytest-benchmark's own "
             "where a group was not interleaved); a ratio is the median over the rounds of the variant's time over "
             "the fused one's (above 1: the fused variant is faster); spread is the widest interquartile range over "
             f"the median, and a group above {summary.NOISE_THRESHOLD:.0%} is marked noisy: do not read its ratios",
             "",
             "| " + " | ".join(summary.HEADER) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(summary.HEADER) - 2) + ["---"]) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in summary.rows(groups)]
    notes = summary.notes(groups)
    lines += [""] * bool(notes) + [f"- {_cell(note)}" for note in notes]
    for g in groups:
        lines += ["", f"## {g.group}", "",
                  "| variant | median (ms) | min (ms) | vs fused | device | commit | torch | triton |",
                  "|---|---:|---:|---:|---|---|---|---|"]
        for variant, median in g.medians_s.items():
            info = g.extra_info[variant]
            ratio = g.ratio(variant)
            fastest = g.minimums_s.get(variant)
            fastest_ms = "-" if fastest is None else f"{fastest * 1e3:.4g}"
            device = info.get("device_name") or info.get("device", "?")
            lines.append(f"| {_cell(variant)} | {median * 1e3:.4g} | {fastest_ms} | "
                         f"{'-' if ratio is None else f'{ratio:.2f}x'} | "
                         f"{_cell(device)} | {_cell(info.get('commit', _commit(data)))} | "
                         f"{_cell(info.get('torch', '?'))} | {_cell(info.get('triton', '?'))} |")
        if g.noise():
            lines += ["", f"Noisy: {_cell(g.noise())}."]
    return "\n".join(lines) + "\n"


MARKERS = "osD^v<>Ph*X"


def chart(data: dict, path: Path) -> None:
    """A dot plot, one row per group: each variant's median relative to the fused one (log scale; fused at 1).

    A group without a fused variant is drawn relative to its first variant (named in the row's label). The figure
    grows by a fixed height per row, so labels stay readable at any number of groups."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = summary.group_benchmarks(data["benchmarks"])
    variants = list(dict.fromkeys(v for g in groups for v in g.medians_s))
    colors = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(11, 1.6 + 0.3 * len(groups)))
    labels, lowest, highest = [], 1.0, 1.0
    for row, g in enumerate(groups):
        base_name = summary.FUSED if summary.FUSED in g.medians_s else next(iter(g.medians_s))
        base = g.medians_s[base_name]
        labels.append(g.group if base_name == summary.FUSED else f"{g.group} (vs {base_name})")
        for i, variant in enumerate(variants):
            if variant in g.medians_s and base > 0 and g.medians_s[variant] > 0:
                ratio = g.ratio(variant) if base_name == summary.FUSED else None  # per-round ratios when timed so
                ratio = ratio if ratio is not None else g.medians_s[variant] / base
                lowest, highest = min(lowest, ratio), max(highest, ratio)
                ax.plot(ratio, row, linestyle="none", marker=MARKERS[i % len(MARKERS)], markersize=7,
                        color=colors(i % 10), alpha=0.9, label=variant)
    ax.set_xscale("log")
    ax.set_xlim(lowest / 1.5, highest * 1.5)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(groups)), labels, fontsize=9)
    ax.set_ylim(len(groups) - 0.5, -0.5)
    ax.grid(axis="y", color="0.9", linewidth=0.8)
    ax.grid(axis="x", which="both", color="0.93", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.set_xlabel("median relative to fused (log scale; right of 1: fused is faster)", fontsize=10)
    handles, names = ax.get_legend_handles_labels()
    unique = dict(zip(names, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=9, ncol=min(len(unique), 4), loc="lower right",
              bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")  # "tight": the legend above the axes is kept whole
    plt.close(fig)


def write(json_path: Path, out_dir: Path | None = None) -> dict[str, Path]:
    """Write the markdown (and the PNG when matplotlib is installed); returns what was written, by kind."""
    data = load(json_path)
    out_dir = out_dir if out_dir is not None else json_path.parent
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        md = out_dir / f"{json_path.stem}.md"
        md.write_text(markdown(data, json_path.name))
    except OSError as exc:
        raise ReportError(f"--out {out_dir}: cannot write there ({exc.strerror or exc})") from None
    written = {"markdown": md}
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(f"{PROG}: note: no PNG, matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return written
    png = out_dir / f"{json_path.stem}.png"
    try:
        chart(data, png)
    except OSError as exc:
        raise ReportError(f"--out {out_dir}: cannot write {png.name} ({exc.strerror or exc})") from None
    written["chart"] = png
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Markdown table and PNG of a pytest-benchmark JSON.")
    parser.add_argument("json", type=Path, help="output of pytest --benchmark-json")
    parser.add_argument("--out", type=Path, default=None, help="folder for the report (default: the JSON's folder)")
    args = parser.parse_args(argv)
    try:
        written = write(args.json, args.out)
    except ReportError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
