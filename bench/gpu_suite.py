"""Everything that needs a GPU, as one short lease: `python -m bench.gpu_suite [--out DIR] [--dry-run [--json]]`.

The steps, in the order of what we most need to know: `env` (the card, versions), `build` (the CUDA extension for
this card's architecture alone, ninja on every core), `chunk` (the 2B LIBERO action chunk, eager and as a CUDA-graph
replay, p50 / p95 / p99 over 200 calls after warm-up), `dit` (one 2B DiT pass), `attention` (TFLOP/s per backend),
`ops` (GB/s against the measured copy bandwidth), `gpu_tests` (pytest -m gpu) last.

Each step is a subprocess with its own time limit; the limits add up to `TOTAL_LIMIT_S` and a step may also use the
time the steps before it left unused. At its limit a step is interrupted (SIGINT: pytest still writes its results),
then killed, and what it measured so far is kept. The report (`gpu_summary.md`, one screen with the card on its first
line; `gpu_report.md`; `gpu_report.json`) is rewritten after every step and every few seconds while one runs, so a
lease cut short still returns every number taken. Exit status 1 when a step failed or ran out of time.
`--wheels DIR` first installs the wheel files in DIR offline (`pip install --no-index --find-links DIR`), a step of
its own added to the plan. `--dry-run` prints the plan (`--json`: `{"steps": [{"name", "limit_s"}, ...],
"total_limit_s"}`) and runs nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import gpu_report
from bench.gpu_report import PROG, arch_list

REPO = Path(__file__).resolve().parent.parent
# seconds per step; their sum is the lease's share for the suite (a machine start and the copies come on top)
LIMITS_S = {"env": 20, "build": 110, "chunk": 110, "dit": 40, "attention": 40, "ops": 50, "gpu_tests": 50}
TOTAL_LIMIT_S = sum(LIMITS_S.values())
WHEELS_LIMIT_S = 60
TICK_S = 5.0  # how often the report is rewritten while a step runs
GRACE_S = 5.0  # between the interrupt and the kill at a step's limit


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


def plan(out: Path, *, capability=None, wheels: Path | None = None, build: bool = True) -> list[Step]:
    """The steps in running order. `capability`: the card's, for the build (None: no GPU seen, the build skips)."""
    py = sys.executable
    step = [py, "-m", "bench.gpu_steps"]

    def measuring(name: str, what: str) -> Step:
        return Step(name, what, [*step, name, "--out", str(out / f"{name}.json")], LIMITS_S[name])

    steps = [Step("env", "versions, the card, optional modules", [*step, "env", "--out", str(out / "env.json")],
                  LIMITS_S["env"], needs_cuda=False)]
    if wheels is not None:
        files = sorted(str(p) for p in wheels.glob("*.whl")) if wheels.is_dir() else []
        steps.append(Step("wheels", f"install the wheels of {wheels} offline",
                          [py, "-m", "pip", "install", "--no-index", "--find-links", str(wheels), *files],
                          WHEELS_LIMIT_S, needs_cuda=False,
                          skip=None if files else f"--wheels {wheels}: no .whl files there"))
    arch = arch_list(capability)
    build_env = {"COSMOS_BUILD_CUDA": "1", **({"TORCH_CUDA_ARCH_LIST": arch} if arch else {}),
                 "MAX_JOBS": str(os.cpu_count() or 4)}
    build_skip = "--no-build" if not build else (None if arch else "no GPU")
    steps += [
        Step("build", f"CUDA extension for the card's architecture alone{f' ({arch})' if arch else ''}, ninja, "
                      f"{build_env['MAX_JOBS']} jobs",
             [py, "setup.py", "build_ext", "--inplace"], LIMITS_S["build"], env=build_env, skip=build_skip),
        measuring("chunk", "2B LIBERO action chunk: CUDA-graph replay and eager, p50 / p95 / p99 of 200 calls; "
                  "FP8 graph replay, 50 calls"),
        measuring("dit", "one 2B DiT pass, bf16, 1,764 tokens"),
        measuring("attention", "TFLOP/s per attention backend"),
        measuring("ops", "norms + qk_norm_rope (GB/s vs copy bandwidth), linear_gelu (TFLOP/s)"),
        Step("gpu_tests", "pytest -m gpu tests/", [py, "-m", "pytest", "-m", "gpu", "tests/", "-q", "-rfE", "-p",
                                                   "no:cacheprovider", f"--junitxml={out / 'gpu_tests.xml'}"],
             LIMITS_S["gpu_tests"], needs_modules=("pytest",)),
    ]
    return steps


def plan_json(steps: list[Step]) -> dict:
    return {"steps": [{"name": s.name, "limit_s": s.limit_s} for s in steps],
            "total_limit_s": sum(s.limit_s for s in steps)}


def _missing(modules: tuple[str, ...]) -> list[str]:
    importlib.invalidate_caches()  # the wheels step may just have installed some
    return [m for m in modules if importlib.util.find_spec(m) is None]


def new_result(step: Step) -> dict:
    return {"name": step.name, "what": step.what, "command": step.command(), "limit_s": step.limit_s,
            "status": "pending", "wall_s": 0.0, "note": ""}


def run_step(step: Step, out: Path, deadline: float, *, cuda: bool = True,
             on_tick: Callable[[dict], None] | None = None) -> dict:
    """Run one step as a subprocess group that must end by `deadline` (monotonic); never raises. `on_tick` gets the
    partial result every few seconds while it runs."""
    result = new_result(step)
    missing = _missing(step.needs_modules)
    if step.skip:
        result["note"] = step.skip
    elif step.needs_cuda and not cuda:
        result["note"] = "no GPU"
    elif missing:
        result["note"] = f"{', '.join(missing)} not installed (pip install {' '.join(missing)}, or --wheels DIR)"
    if result["note"]:
        result["status"] = "skipped"
        return result
    limit = max(1.0, deadline - time.monotonic())
    log = out / "logs" / f"{step.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **step.env, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                                                 os.environ.get("PYTHONPATH")]))}
    start = time.monotonic()
    result.update(status="running", log=str(log))
    with log.open("w") as fh:
        try:
            proc = subprocess.Popen(step.argv, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            result.update(status="failed", note=f"could not start: {exc}")
            return result

        def tick() -> None:
            result["wall_s"] = round(time.monotonic() - start, 1)
            _collect(result, step, out, log)
            if on_tick is not None:
                on_tick(result)

        try:
            ended = _wait(proc, limit, tick)
        except BaseException:  # the suite itself is being stopped: its step goes with it
            _kill(proc)
            raise
    result["wall_s"] = round(time.monotonic() - start, 1)
    if ended == "exited":
        result.update(status="ok" if proc.returncode == 0 else "failed", rc=proc.returncode)
    else:
        result.update(status="timeout", rc=proc.returncode,
                      note=f"stopped at its limit ({limit:.0f} s{', killed' if ended == 'killed' else ''})")
    _collect(result, step, out, log)
    if result["status"] == "failed" and not result["note"]:
        result["note"] = (result["tail"][-1] if result["tail"] else f"exit code {proc.returncode}")[:160]
    return result


def _wait(proc: subprocess.Popen, limit: float, tick: Callable[[], None]) -> str:
    """"exited", or "interrupted" (SIGINT `GRACE_S` before the limit, then it ended) or "killed" (at the limit)."""
    start, grace, interrupted = time.monotonic(), min(GRACE_S, limit / 10), False
    while True:
        stop_at = limit if interrupted else limit - grace
        try:
            proc.wait(timeout=max(0.0, min(TICK_S, stop_at - (time.monotonic() - start))))
            return "interrupted" if interrupted else "exited"
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() - start < stop_at:
            tick()
            continue
        if interrupted:
            _kill(proc)
            return "killed"
        os.killpg(proc.pid, signal.SIGINT)
        interrupted = True


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # the step's compilers and workers too
    proc.wait()


def _collect(result: dict, step: Step, out: Path, log: Path) -> None:
    """What the step left so far: its log's tail, its JSON (measuring steps) or its test counts."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    result["tail"] = lines[-15:]
    if step.name == "gpu_tests":
        result["tests"] = gpu_report.junit_counts(out / "gpu_tests.xml")
    elif step.name == "build":
        info = _read_json(REPO / "cosmos_kernels" / "_build_info.json") if result["status"] == "ok" else None
        if info:
            result["data"] = {"headline": [f"{'built' if info.get('cuda') else 'not built'}: {info.get('note')}"]}
    else:
        data = _read_json(out / f"{step.name}.json")
        if data is not None:
            result["data"] = data


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def card_capability() -> tuple[int, int] | None:
    try:
        import torch

        return torch.cuda.get_device_capability() if torch.cuda.is_available() else None
    except (ImportError, RuntimeError):
        return None


def print_plan(steps: list[Step], out: Path) -> None:
    total = sum(s.limit_s for s in steps)
    print(f"{PROG} --dry-run: {len(steps)} steps, {total:.0f} s of limits in all, report into {out}")
    for i, s in enumerate(steps, 1):
        missing = _missing(s.needs_modules)
        skip = s.skip or (f"{', '.join(missing)} not installed" if missing else "")
        print(f"  {i}. {s.name:<10} {s.limit_s:4.0f} s  {s.what}{f'  [would skip: {skip}]' if skip else ''}\n"
              f"        {s.command()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_results"), help="folder for the report and logs")
    parser.add_argument("--dry-run", action="store_true", help="print the steps and their limits; run nothing")
    parser.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON")
    parser.add_argument("--wheels", type=Path, default=None, help="install the wheel files in DIR offline first")
    parser.add_argument("--no-build", action="store_true", help="use the CUDA extension already built")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    if args.json and not args.dry_run:
        parser.error("--json goes with --dry-run (the report is always written as gpu_report.json too)")
    if args.wheels is not None and not args.wheels.is_dir():
        print(f"{PROG}: error: --wheels {args.wheels}: no such folder", file=sys.stderr)
        return 2
    if args.dry_run:
        steps = plan(out, capability=card_capability(), wheels=args.wheels, build=not args.no_build)
        if args.json:
            print(json.dumps(plan_json(steps)))
        else:
            print_plan(steps, out)
        return 0
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"{PROG}: error: --out {args.out}: cannot write there ({exc.strerror or exc})", file=sys.stderr)
        return 2
    return run_suite(out, wheels=args.wheels, build=not args.no_build)


def run_suite(out: Path, *, wheels: Path | None = None, build: bool = True) -> int:
    start = time.monotonic()
    steps = plan(out, wheels=wheels, build=build)
    total = sum(s.limit_s for s in steps)
    results = [new_result(s) for s in steps]

    def report(partial: dict | None = None, index: int = 0) -> list[Path]:
        if partial is not None:
            results[index] = partial
        return gpu_report.write(out, results, time.monotonic() - start, total)

    deadline, cuda, paths = start, False, []
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        for i in range(len(steps)):
            if i == 1:  # the build needs the card's architecture, known once the env step has run
                dev = gpu_report.device_info(results)
                cuda = bool(dev.get("cuda"))
                steps[1:] = plan(out, capability=dev.get("capability"), wheels=wheels, build=build)[1:]
                results[1:] = [new_result(s) for s in steps[1:]]
            step = steps[i]
            deadline += step.limit_s  # a step may use what the ones before it left unused
            print(f"{PROG}: {step.name} (until +{deadline - start:.0f} s) ...", flush=True)
            results[i] = run_step(step, out, deadline, cuda=cuda, on_tick=lambda partial, i=i: report(partial, i))
            r = results[i]
            print(f"{PROG}: {step.name} {r['status']} in {r['wall_s']:.0f} s {r['note']}".rstrip(), flush=True)
            paths = report()
    except KeyboardInterrupt:  # SIGINT or SIGTERM: the numbers taken so far still make a report
        running = next((i for i, r in enumerate(results) if r["status"] in ("pending", "running")), None)
        if running is not None:
            results[running] = {**results[running], "status": "stopped", "note": "the suite was stopped"}
        paths = report()
    finally:
        signal.signal(signal.SIGTERM, previous)
    print("\n".join(gpu_report.summary(results, time.monotonic() - start, total, paths)))
    return 1 if any(r["status"] in ("failed", "timeout", "stopped") for r in results) else 0


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
