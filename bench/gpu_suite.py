"""Everything that needs a GPU, in one command: `python -m bench.gpu_suite [--out DIR] [--dry-run] [--wheels DIR]`.

On a CUDA machine (for an H100 / H200: under 5 minutes) it builds the CUDA extension for that card only, runs the
GPU-marked tests, the op and attention benchmarks at the 2B's shapes, one 2B DiT pass and the 2B LIBERO action chunk
(eager and as a CUDA graph), then writes `gpu_report.md` and `gpu_report.json` into --out and prints a one-screen
summary. Every step is a subprocess with its own time limit (and the whole suite a budget), so one hang costs only
its own step; a missing optional module skips its step with a note; the report is written whatever fails.
`--wheels DIR` first installs the wheel files in DIR offline (`pip install --no-index --find-links DIR`).
`--dry-run` lists the steps, their commands and time limits, and runs nothing.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import REPO

PROG = "bench.gpu_suite"
BUDGET_S = 290.0
MIN_STEP_S = 10.0  # a step that would get less than this is skipped: it could not finish


@dataclass
class Step:
    name: str
    what: str
    argv: list[str]
    limit_s: float
    env: dict[str, str] = field(default_factory=dict)
    needs_cuda: bool = True
    needs_modules: tuple[str, ...] = ()
    skip: str | None = None  # known before running

    def command(self) -> str:
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (prefix + " " if prefix else "") + " ".join(shlex.quote(a) for a in self.argv)


def arch_list(capability: tuple[int, int] | list[int] | None) -> str:
    """TORCH_CUDA_ARCH_LIST for one card: "9.0a" for Hopper (the kernels use its arch-specific features)."""
    if not capability:
        return "<from torch.cuda.get_device_capability(), e.g. 9.0a>"
    major, minor = capability
    return f"{major}.{minor}" + ("a" if major in (9, 10, 12) else "")


def plan(out: Path, *, capability=None, wheels: Path | None = None, build: bool = True) -> list[Step]:
    py = sys.executable
    step = [py, "-m", "bench.gpu_steps"]
    steps = [Step("env", "versions, the card, optional modules", [*step, "env", "--out", str(out / "env.json")], 60,
                  needs_cuda=False)]
    if wheels is not None:
        files = sorted(str(p) for p in wheels.glob("*.whl")) if wheels.is_dir() else []
        steps.append(Step("wheels", f"install the wheels of {wheels} offline",
                          [py, "-m", "pip", "install", "--no-index", "--find-links", str(wheels), *files], 120,
                          needs_cuda=False, skip=None if files else f"--wheels {wheels}: no .whl files there"))
    steps += [
        Step("build", "CUDA extension for this card only", [py, "setup.py", "build_ext", "--inplace"], 200,
             env={"COSMOS_BUILD_CUDA": "1", "TORCH_CUDA_ARCH_LIST": arch_list(capability),
                  "MAX_JOBS": str(os.cpu_count() or 4)}, skip=None if build else "--no-build"),
        Step("gpu_tests", "pytest -m gpu tests/", [py, "-m", "pytest", "-m", "gpu", "tests/", "-q", "-p",
                                                   "no:cacheprovider", f"--junitxml={out / 'gpu_tests.xml'}"], 150,
             needs_modules=("pytest",)),
        Step("ops", "norms + qk_norm_rope (GB/s vs copy bandwidth), linear_gelu (TFLOP/s)", [*step, "ops", "--out",
                                                                           str(out / "ops.json")], 90),
        Step("attention", "TFLOP/s per attention backend", [*step, "attention", "--out", str(out / "attention.json")],
             60),
        Step("dit", "one 2B DiT pass, bf16, 1,764 tokens", [*step, "dit", "--out", str(out / "dit.json")], 90),
        Step("chunk", "2B LIBERO chunk, eager and CUDA graph", [*step, "chunk", "--out", str(out / "chunk.json")],
             120, needs_modules=("diffusers",)),
    ]
    return steps


def _missing(modules: tuple[str, ...]) -> list[str]:
    importlib.invalidate_caches()  # the wheels step may just have installed some
    return [m for m in modules if importlib.util.find_spec(m) is None]


def run_step(step: Step, out: Path, deadline: float, *, cuda: bool = True) -> dict:
    """Run one step as a subprocess group with its time limit; never raises."""
    result = {"name": step.name, "what": step.what, "command": step.command(), "limit_s": step.limit_s,
              "status": "skipped", "wall_s": 0.0, "note": ""}
    missing = _missing(step.needs_modules)
    remaining = deadline - time.monotonic()
    if step.skip:
        result["note"] = step.skip
    elif step.needs_cuda and not cuda:
        result["note"] = "no CUDA device"
    elif missing:
        result["note"] = f"{', '.join(missing)} not installed (pip install {' '.join(missing)}, or --wheels DIR)"
    elif remaining < MIN_STEP_S:
        result["note"] = "the suite's time budget is spent"
    if result["note"]:
        return result
    limit = min(step.limit_s, remaining)
    log = out / "logs" / f"{step.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **step.env, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                                                 os.environ.get("PYTHONPATH")]))}
    start = time.monotonic()
    with log.open("w") as fh:
        try:
            proc = subprocess.Popen(step.argv, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            result.update(status="failed", note=f"could not start: {exc}")
            return result
        try:
            rc = proc.wait(timeout=limit)
            result.update(status="ok" if rc == 0 else "failed", rc=rc)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the step's compilers and workers too
            proc.wait()
            result.update(status="timeout", rc=None, note=f"stopped at its {limit:.0f} s limit")
    result["wall_s"] = round(time.monotonic() - start, 1)
    result["log"] = str(log)
    lines = log.read_text(errors="replace").splitlines()
    result["tail"] = lines[-15:]
    if result["status"] == "failed" and not result["note"]:
        result["note"] = (lines[-1] if lines else f"exit code {result['rc']}")[:160]
    result.update(_step_data(step, out))
    return result


def _step_data(step: Step, out: Path) -> dict:
    """What the step left behind: its JSON (measuring steps) or the test counts (gpu_tests)."""
    if step.name == "gpu_tests":
        return {"tests": _junit_counts(out / "gpu_tests.xml")}
    path = out / f"{step.name}.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {"data": data}


def _junit_counts(path: Path) -> dict:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed = []
    for suite in root.iter("testsuite"):
        for key in counts:
            counts[key] += int(suite.get(key, 0))
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname')}::{case.get('name')}")
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


def _device(results: list[dict]) -> dict:
    env = next((r for r in results if r["name"] == "env"), {}).get("data", {})
    return env.get("env", {})


def summary(results: list[dict], wall_s: float, paths: list[Path] = ()) -> list[str]:
    """One screen: the card, each step's status and time, and each step's headline numbers."""
    dev = _device(results)
    arch = f" ({arch_list(dev['capability'])})" if dev.get("capability") else ""
    lines = [f"{PROG}: {dev.get('device_name', 'no CUDA device')}{arch}, "
             f"torch {dev.get('torch', '?')}, triton {dev.get('triton', '?')}, python {dev.get('python', '?')}, "
             f"commit {dev.get('commit', '?')}; {wall_s:.0f} s", ""]
    width = max([len(r["name"]) for r in results] + [4])
    for r in results:
        lines.append(f"{r['name']:<{width}}  {r['status']:<7}  {r['wall_s']:6.1f} s / {r['limit_s']:.0f} s"
                     + (f"  {r['note']}" if r["note"] else ""))
    body = [f"  {line}" for r in results if r["status"] != "skipped" for line in headlines(r)]
    if body:
        lines += ["", *body]
    if paths:
        lines += ["", "report: " + ", ".join(str(p) for p in paths)]
    return lines


def markdown(results: list[dict], wall_s: float) -> str:
    dev = _device(results)
    lines = [f"# GPU suite: {dev.get('device_name', 'no CUDA device')}", "",
             f"- arch {arch_list(dev.get('capability'))}, {dev.get('memory_gib', '?')} GiB; torch {dev.get('torch')}"
             f" (CUDA {dev.get('torch_cuda')}), triton {dev.get('triton')}, python {dev.get('python')}",
             f"- commit {dev.get('commit', '?')}; optional modules: "
             + ", ".join(f"{m} {'yes' if ok else 'no'}" for m, ok in dev.get("modules", {}).items()),
             f"- wall time {wall_s:.0f} s", "",
             "| step | status | time (s) | limit (s) | note |", "|---|---|---:|---:|---|"]
    lines += [f"| {r['name']} | {r['status']} | {r['wall_s']} | {r['limit_s']:.0f} | {r['note']} |" for r in results]
    for r in results:
        lines += ["", f"## {r['name']}: {r['what']}", "", f"`{r['command']}`", ""]
        lines += [f"- {h}" for h in headlines(r)]
        rows = (r.get("data") or {}).get("results", [])
        if rows:
            keys = list(dict.fromkeys(k for row in rows for k in row if not isinstance(row[k], dict)))
            lines += ["", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(_fmt(row.get(k, "")) for k in keys) + " |" for row in rows]
        if r["status"] in ("failed", "timeout") and r.get("tail"):
            lines += ["", "```", *r["tail"], "```"]
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_report(out: Path, results: list[dict], wall_s: float) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / "gpu_report.md", out / "gpu_report.json"
    md.write_text(markdown(results, wall_s))
    js.write_text(json.dumps({"device": _device(results), "wall_s": wall_s, "steps": results}, indent=1))
    return [md, js]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_results"), help="folder for the report and logs")
    parser.add_argument("--dry-run", action="store_true", help="list the steps and their limits; run nothing")
    parser.add_argument("--wheels", type=Path, default=None, help="install the wheel files in DIR offline first")
    parser.add_argument("--no-build", action="store_true", help="use the CUDA extension already built")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for the whole suite")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    if args.wheels is not None and not args.wheels.is_dir():
        print(f"{PROG}: error: --wheels {args.wheels}: no such folder", file=sys.stderr)
        return 2
    if args.dry_run:
        capability = None
        try:
            import torch

            if torch.cuda.is_available():
                capability = torch.cuda.get_device_capability()
        except ImportError:
            pass
        steps = plan(out, capability=capability, wheels=args.wheels, build=not args.no_build)
        print(f"{PROG} --dry-run: {len(steps)} steps, budget {args.budget:.0f} s, report into {out}")
        for s in steps:
            missing = _missing(s.needs_modules)
            skip = s.skip or (f"would skip: {', '.join(missing)} not installed" if missing else "")
            print(f"  {s.name:<10} {s.limit_s:4.0f} s  {s.what}{f'  [{skip}]' if skip else ''}\n      {s.command()}")
        return 0
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"{PROG}: error: --out {args.out}: cannot write there ({exc.strerror or exc})", file=sys.stderr)
        return 2
    start = time.monotonic()
    deadline = start + args.budget
    steps = plan(out, wheels=args.wheels, build=not args.no_build)
    results = [run_step(steps[0], out, deadline)]
    env = _device(results)
    cuda = bool(env.get("cuda"))
    # the build needs the card's architecture, known only now
    steps = plan(out, capability=env.get("capability"), wheels=args.wheels, build=not args.no_build)[1:]
    for step in steps:
        print(f"{PROG}: {step.name} (limit {step.limit_s:.0f} s) ...", flush=True)
        results.append(run_step(step, out, deadline, cuda=cuda))
    wall = time.monotonic() - start
    paths = write_report(out, results, wall)
    print("\n".join(summary(results, wall, paths)))
    return 0 if all(r["status"] in ("ok", "skipped") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
