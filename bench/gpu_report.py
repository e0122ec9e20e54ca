"""The report of `bench.gpu_suite`, written from its step results (plain dicts) after every step and while one runs:
`gpu_report.json` (everything), `gpu_report.md` (every table) and `gpu_summary.md` (one screen, the card first).

A step result: {"name", "what", "command", "limit_s", "status", "wall_s", "note"} plus, once run, "tail" (the last
lines of its log), "data" (what its JSON file holds) or "tests" (junit counts). Status: pending, running, ok, failed,
timeout (stopped at its limit; what it measured is kept), skipped, or stopped (the suite itself was stopped).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

PROG = "bench.gpu_suite"
SUMMARY_MAX_LINES = 40


def arch_list(capability: tuple[int, int] | list[int] | None) -> str | None:
    """TORCH_CUDA_ARCH_LIST for one card ("9.0a" for Hopper: the kernels use its arch-specific features), None
    without a card."""
    if not capability:
        return None
    major, minor = capability
    return f"{major}.{minor}" + ("a" if major in (9, 10, 12) else "")


def device_info(results: list[dict]) -> dict:
    """What the env step reported (the card, versions), {} before it ran or when it failed."""
    env = next((r for r in results if r["name"] == "env"), {})
    return (env.get("data") or {}).get("env", {})


def card(dev: dict) -> str:
    """The card in one phrase: its name, arch and memory, or "no GPU"."""
    if not dev:
        return "card unknown (the env step reported nothing)"
    if not dev.get("cuda"):
        return "no GPU"
    return f"{dev.get('device_name', '?')} (arch {arch_list(dev.get('capability'))}, {dev.get('memory_gib', '?')} GiB)"


def versions_line(dev: dict) -> str:
    cuda = f" (CUDA {dev['torch_cuda']})" if dev.get("torch_cuda") else ""
    return (f"torch {dev.get('torch', '?')}{cuda}, triton {dev.get('triton', '?')}, python {dev.get('python', '?')}, "
            f"numpy {dev.get('numpy', '?')}")


def junit_counts(path: Path) -> dict:
    """{"tests", "failures", "errors", "skipped", "passed", "failed": [names]} of a junit XML file, {} without one."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in root.iter("testsuite"):
        for key in counts:
            counts[key] += int(suite.get(key, 0))
    failed = [f"{case.get('classname')}::{case.get('name')}" for case in root.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["failed"] = failed
    return counts


def headlines(result: dict) -> list[str]:
    """The step's few summary lines."""
    if result["name"] == "gpu_tests" and result.get("tests"):
        t = result["tests"]
        lines = [f"tests: {t['passed']} passed, {t['failures'] + t['errors']} failed, {t['skipped']} skipped"]
        return lines + [f"  FAILED {name}" for name in t["failed"][:5]]
    data = result.get("data") or {}
    return list(data.get("headline", [])) + [f"note: {n}" for n in data.get("notes", [])]


def summary(results: list[dict], wall_s: float, total_limit_s: float, paths: list[Path] = ()) -> list[str]:
    """One screen: the card and versions first, each step's status and time, then each step's headline numbers."""
    dev = device_info(results)
    lines = [f"{PROG}: {card(dev)}; {versions_line(dev)}; commit {dev.get('commit', '?')}; "
             f"{wall_s:.0f} s of {total_limit_s:.0f} s", ""]
    width = max([len(r["name"]) for r in results] + [4])
    for r in results:
        lines.append(f"{r['name']:<{width}}  {r['status']:<7}  {r['wall_s']:6.1f} s / {r['limit_s']:.0f} s"
                     + (f"  {r['note']}" if r["note"] else ""))
    body = [f"  {line}" for r in results if r["status"] not in ("skipped", "pending") for line in headlines(r)]
    if body:
        lines += ["", *body]
    if paths:
        lines += ["", "report: " + ", ".join(str(p) for p in paths)]
    if len(lines) > SUMMARY_MAX_LINES:  # one screen: the full tables are in gpu_report.md
        lines = lines[:SUMMARY_MAX_LINES - 1] + [f"... ({len(lines) - SUMMARY_MAX_LINES + 1} more lines in "
                                                 "gpu_report.md)"]
    return lines


def markdown(results: list[dict], wall_s: float, total_limit_s: float) -> str:
    dev = device_info(results)
    modules = ", ".join(f"{m} {'yes' if ok else 'no'}" for m, ok in dev.get("modules", {}).items())
    lines = [f"# GPU suite: {card(dev)}", "",
             f"- {versions_line(dev)}",
             f"- commit {dev.get('commit', '?')}; optional modules: {modules or '?'}",
             f"- wall time {wall_s:.0f} s of {total_limit_s:.0f} s of step limits", "",
             "| step | status | time (s) | limit (s) | note |", "|---|---|---:|---:|---|"]
    lines += [f"| {r['name']} | {r['status']} | {r['wall_s']} | {r['limit_s']:.0f} | {r['note']} |" for r in results]
    for r in results:
        lines += ["", f"## {r['name']}: {r['what']}", "", f"`{r['command']}`", ""]
        lines += [f"- {h}" for h in headlines(r)]
        rows = (r.get("data") or {}).get("results", [])
        if rows:
            keys = list(dict.fromkeys(k for row in rows for k in row if not isinstance(row[k], (dict, list))))
            lines += ["", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(_fmt(row.get(k, "")) for k in keys) + " |" for row in rows]
        if r["status"] in ("failed", "timeout") and r.get("tail"):
            lines += ["", "```", *r["tail"], "```"]
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write(out: Path, results: list[dict], wall_s: float, total_limit_s: float) -> list[Path]:
    """(Re)write the three report files; each is replaced whole, so a reader never sees half of one."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "gpu_summary.md", out / "gpu_report.md", out / "gpu_report.json"]
    lines = summary(results, wall_s, total_limit_s)
    texts = [
        "\n".join([lines[0], "", "```text", *lines[2:], "```"]) + "\n",
        markdown(results, wall_s, total_limit_s),
        json.dumps({"device": device_info(results), "wall_s": round(wall_s, 1), "total_limit_s": total_limit_s,
                    "steps": results}, indent=1),
    ]
    for path, text in zip(paths, texts):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return paths
