"""`python -m bench.gpu_suite`: the dry run, the step runner (time limits, failures, skips), the report and the
summary on fabricated step results, and the measuring steps' code paths on the CPU at toy sizes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench import gpu_steps, gpu_suite
from bench.common import REPO


def test_arch_list_is_the_card_only():
    assert gpu_suite.arch_list((9, 0)) == "9.0a"
    assert gpu_suite.arch_list([10, 0]) == "10.0a"
    assert gpu_suite.arch_list((8, 6)) == "8.6"


def test_dry_run_lists_every_step_with_command_and_limit(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_suite", "--dry-run", "--out", str(tmp_path / "r")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in ("env", "build", "gpu_tests", "ops", "attention", "dit", "chunk"):
        assert f"  {name} " in proc.stdout
    assert "COSMOS_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST=" in proc.stdout and "build_ext --inplace" in proc.stdout
    assert "-m pytest -m gpu tests/" in proc.stdout
    assert not (tmp_path / "r").exists()  # nothing run, nothing written


def test_plan_uses_the_capability():
    build = next(s for s in gpu_suite.plan(REPO / "x", capability=(9, 0)) if s.name == "build")
    assert build.env["TORCH_CUDA_ARCH_LIST"] == "9.0a" and build.env["COSMOS_BUILD_CUDA"] == "1"


def _step(name, code, limit=60.0, **kw):
    return gpu_suite.Step(name, "a test step", [sys.executable, "-c", code], limit, needs_cuda=False, **kw)


def test_run_step_outcomes(tmp_path):
    deadline = gpu_suite.time.monotonic() + 600
    ok = gpu_suite.run_step(_step("good", "print('hello')"), tmp_path, deadline)
    assert ok["status"] == "ok" and ok["tail"] == ["hello"]
    bad = gpu_suite.run_step(_step("bad", "raise SystemExit('broken here')"), tmp_path, deadline)
    assert bad["status"] == "failed" and bad["rc"] == 1 and "broken here" in bad["note"]
    slow = gpu_suite.run_step(_step("slow", "import time; time.sleep(60)", limit=1.0), tmp_path, deadline)
    assert slow["status"] == "timeout" and slow["wall_s"] < 30
    missing = gpu_suite.run_step(_step("vae", "print(1)", needs_modules=("no_such_module_xyz",)), tmp_path, deadline)
    assert missing["status"] == "skipped" and "no_such_module_xyz not installed" in missing["note"]
    gpu = gpu_suite.run_step(gpu_suite.Step("g", "x", ["true"], 5.0), tmp_path, deadline, cuda=False)
    assert gpu["status"] == "skipped" and gpu["note"] == "no CUDA device"
    spent = gpu_suite.run_step(_step("late", "print(1)"), tmp_path, gpu_suite.time.monotonic() + 1)
    assert spent["status"] == "skipped" and "budget" in spent["note"]


def _fabricated_results() -> list[dict]:
    env = {"env": {"device_name": "NVIDIA H200", "capability": [9, 0], "torch": "2.11.0", "triton": "3.6.0",
                   "python": "3.12.3", "commit": "abc123", "memory_gib": 139.8, "modules": {"diffusers": False}},
           "headline": ["NVIDIA H200; torch 2.11.0"]}
    base = {"what": "w", "command": "cmd", "limit_s": 60, "note": "", "wall_s": 1.5}
    return [
        {**base, "name": "env", "status": "ok", "data": env},
        {**base, "name": "gpu_tests", "status": "failed", "note": "1 failed", "tail": ["E assert 0"],
         "tests": {"tests": 10, "failures": 1, "errors": 0, "skipped": 2, "passed": 7,
                   "failed": ["tests.ops.test_x::test_y"]}},
        {**base, "name": "dit", "status": "timeout", "note": "stopped at its 90 s limit",
         "data": {"headline": ["DiT pass: fused 21.50 ms"], "notes": [],
                  "results": [{"backend": "fused", "ms": 21.5, "TFLOP/s": 650.25}]}},
        {**base, "name": "chunk", "status": "skipped", "note": "diffusers not installed"},
    ]


def test_report_and_summary_on_fabricated_results(tmp_path):
    results = _fabricated_results()
    md_path, json_path = gpu_suite.write_report(tmp_path / "out", results, 123.4)
    md = md_path.read_text()
    assert md.startswith("# GPU suite: NVIDIA H200")
    assert "| dit | timeout | 1.5 | 60 | stopped at its 90 s limit |" in md
    assert "| fused | 21.5 | 650.2 |" in md and "E assert 0" in md
    assert "- tests: 7 passed, 1 failed, 2 skipped" in md
    saved = json.loads(json_path.read_text())
    assert saved["device"]["device_name"] == "NVIDIA H200" and [s["name"] for s in saved["steps"]][-1] == "chunk"
    lines = gpu_suite.summary(results, 123.4, [md_path, json_path])
    text = "\n".join(lines)
    assert lines[0].startswith("bench.gpu_suite: NVIDIA H200 (9.0a), torch 2.11.0")
    assert "FAILED tests.ops.test_x::test_y" in text and "DiT pass: fused 21.50 ms" in text
    assert "chunk      skipped" in text and str(md_path) in text
    assert len(lines) <= 40


def test_suite_on_a_machine_without_gpu_writes_its_report(tmp_path, capsys):
    rc = gpu_suite.main(["--out", str(tmp_path), "--budget", "120"])
    assert rc == 0
    saved = json.loads((tmp_path / "gpu_report.json").read_text())
    status = {s["name"]: (s["status"], s["note"]) for s in saved["steps"]}
    assert status["env"][0] == "ok"
    assert all(v == ("skipped", "no CUDA device") for k, v in status.items() if k != "env")
    assert "report:" in capsys.readouterr().out


@pytest.mark.parametrize("step", ["ops", "attention"])
def test_measuring_steps_run_on_cpu_at_toy_sizes(tmp_path, step):
    out = tmp_path / f"{step}.json"
    assert gpu_steps.main([step, "--out", str(out), "--smoke"]) == 0
    data = json.loads(out.read_text())
    assert data["done"] and data["results"] and data["headline"]
    assert all(r["ms"] > 0 for r in data["results"])
