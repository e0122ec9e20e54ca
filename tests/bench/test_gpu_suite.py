"""`python -m bench.gpu_suite`: the plan and its dry run, the step runner (limits, interrupts, skips, the time a
step leaves to the next), the report rewritten after every step, and the summary on fabricated step results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from bench import gpu_report, gpu_suite

REPO = gpu_suite.REPO


def test_arch_list_is_the_card_only():
    assert gpu_suite.arch_list((9, 0)) == "9.0a"
    assert gpu_suite.arch_list([10, 0]) == "10.0a"
    assert gpu_suite.arch_list((8, 6)) == "8.6"
    assert gpu_suite.arch_list(None) is None


def test_dry_run_json_is_the_plan(tmp_path):
    argv = [sys.executable, "-m", "bench.gpu_suite", "--dry-run", "--json", "--out", str(tmp_path / "r")]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert set(plan) == {"steps", "total_limit_s"}
    assert all(set(s) == {"name", "limit_s"} and s["limit_s"] > 0 for s in plan["steps"])
    names = [s["name"] for s in plan["steps"]]
    assert names == ["env", "build", "chunk", "dit", "attention", "ops", "gpu_tests"]  # what matters most first
    assert plan["total_limit_s"] == sum(s["limit_s"] for s in plan["steps"]) <= 420
    assert not (tmp_path / "r").exists()  # nothing run, nothing written


def test_dry_run_lists_every_step_with_command_and_limit(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_suite", "--dry-run", "--out", str(tmp_path / "r")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for i, name in enumerate(("env", "build", "chunk", "dit", "attention", "ops", "gpu_tests"), 1):
        assert f"  {i}. {name} " in proc.stdout
    assert "COSMOS_BUILD_CUDA=1" in proc.stdout and "build_ext --inplace" in proc.stdout
    assert "-m pytest -m gpu tests/" in proc.stdout
    assert "<" not in proc.stdout  # no template placeholder where the card's architecture would be
    if "TORCH_CUDA_ARCH_LIST" not in proc.stdout:  # no GPU here
        assert "[would skip: no GPU]" in proc.stdout
    assert not (tmp_path / "r").exists()


def test_json_needs_dry_run():
    with pytest.raises(SystemExit):
        gpu_suite.main(["--json"])


def test_plan_uses_the_capability_and_every_core():
    build = next(s for s in gpu_suite.plan(REPO / "x", capability=(9, 0)) if s.name == "build")
    assert build.env["TORCH_CUDA_ARCH_LIST"] == "9.0a" and build.env["COSMOS_BUILD_CUDA"] == "1"
    assert build.env["MAX_JOBS"] == str(gpu_suite.os.cpu_count()) and build.skip is None
    no_card = next(s for s in gpu_suite.plan(REPO / "x") if s.name == "build")
    assert "TORCH_CUDA_ARCH_LIST" not in no_card.env and no_card.skip == "no GPU"


def test_wheels_step_is_added_to_the_plan(tmp_path):
    steps = gpu_suite.plan(REPO / "x", wheels=tmp_path)
    assert [s.name for s in steps[:2]] == ["env", "wheels"] and "no .whl files" in steps[1].skip
    assert gpu_suite.plan_json(steps)["total_limit_s"] == gpu_suite.TOTAL_LIMIT_S + gpu_suite.WHEELS_LIMIT_S


def _step(name, code, limit=60.0, **kw):
    return gpu_suite.Step(name, "a test step", [sys.executable, "-c", code], limit, needs_cuda=False, **kw)


def _in(seconds):
    return gpu_suite.time.monotonic() + seconds


def test_run_step_outcomes(tmp_path):
    ok = gpu_suite.run_step(_step("good", "print('hello')"), tmp_path, _in(60))
    assert ok["status"] == "ok" and ok["tail"] == ["hello"]
    bad = gpu_suite.run_step(_step("bad", "raise SystemExit('broken here')"), tmp_path, _in(60))
    assert bad["status"] == "failed" and bad["rc"] == 1 and "broken here" in bad["note"]
    missing = gpu_suite.run_step(_step("vae", "print(1)", needs_modules=("no_such_module_xyz",)), tmp_path, _in(60))
    assert missing["status"] == "skipped" and "no_such_module_xyz not installed" in missing["note"]
    gpu = gpu_suite.run_step(gpu_suite.Step("g", "x", ["true"], 5.0), tmp_path, _in(60), cuda=False)
    assert gpu["status"] == "skipped" and gpu["note"] == "no GPU"


def test_a_step_at_its_limit_is_interrupted_and_keeps_its_output(tmp_path):
    code = ("import json, time\n"
            "try:\n"
            "    print('first number', flush=True); time.sleep(60)\n"
            "except KeyboardInterrupt:\n"
            "    open('{}', 'w').write(json.dumps({{'headline': ['kept on interrupt']}}))\n"
            "    raise SystemExit(130)").format(tmp_path / "slow.json")
    start = gpu_suite.time.monotonic()
    slow = gpu_suite.run_step(_step("slow", code), tmp_path, _in(3))
    assert slow["status"] == "timeout" and "stopped at its limit" in slow["note"]
    assert gpu_suite.time.monotonic() - start < 3.5  # never past its deadline
    assert slow["tail"] == ["first number"] and slow["data"]["headline"] == ["kept on interrupt"]
    stubborn = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(60)"
    killed = gpu_suite.run_step(_step("stubborn", stubborn), tmp_path, _in(2))
    assert killed["status"] == "timeout" and "killed" in killed["note"]


def test_the_report_is_rewritten_while_a_step_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_suite, "TICK_S", 0.2)
    code = ("import json, time\n"
            "open('{}', 'w').write(json.dumps({{'headline': ['a number']}}))\n"
            "time.sleep(1.5)").format(tmp_path / "busy.json")
    seen = []
    done = gpu_suite.run_step(_step("busy", code), tmp_path, _in(30), on_tick=lambda r: seen.append(dict(r)))
    assert done["status"] == "ok"
    assert seen and all(r["status"] == "running" for r in seen)
    assert any((r.get("data") or {}).get("headline") == ["a number"] for r in seen)


def _fake_plan(tmp_path):
    env = {"env": {"cuda": True, "device_name": "NVIDIA H200", "capability": [9, 0], "torch": "2.11.0",
                   "torch_cuda": "13.0", "triton": "3.6.0", "python": "3.12.1", "numpy": "2.5.5", "commit": "abc"}}
    write_env = f"import json; open({str(tmp_path / 'env.json')!r}, 'w').write(json.dumps({env!r}))"

    def plan(out, *, capability=None, wheels=None, build=True):
        return [_step("env", write_env, limit=20), _step("quick", "print('fast')", limit=5),
                _step("sleeper", "import time; time.sleep(3); print('woke')", limit=1),
                _step("broken", "raise SystemExit('no luck')", limit=10),
                _step("last", "print('still run')", limit=10)]
    return plan


def test_suite_report_after_every_step_and_exit_status(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_suite, "plan", _fake_plan(tmp_path))
    writes = []
    real_write = gpu_report.write

    def spy(out, results, wall_s, total):
        writes.append([r["status"] for r in results])
        return real_write(out, results, wall_s, total)

    monkeypatch.setattr(gpu_report, "write", spy)
    rc = gpu_suite.run_suite(tmp_path)
    assert rc == 1  # a step failed
    status = {s["name"]: s["status"] for s in json.loads((tmp_path / "gpu_report.json").read_text())["steps"]}
    # the sleeper's own limit is 1 s, but the quick step left it its unused time
    assert status == {"env": "ok", "quick": "ok", "sleeper": "ok", "broken": "failed", "last": "ok"}
    done_after = [w for w in writes if "running" not in w]
    assert done_after[:5] == [["ok"] + ["pending"] * 4, ["ok", "ok"] + ["pending"] * 3,
                              ["ok"] * 3 + ["pending"] * 2, ["ok"] * 3 + ["failed", "pending"],
                              ["ok"] * 3 + ["failed", "ok"]]
    summary = (tmp_path / "gpu_summary.md").read_text().splitlines()
    assert summary[0].startswith("bench.gpu_suite: NVIDIA H200 (arch 9.0a, ? GiB); torch 2.11.0 (CUDA 13.0), "
                                 "triton 3.6.0, python 3.12.1, numpy 2.5.5")
    assert any("broken" in line and "failed" in line and "no luck" in line for line in summary)
    assert capsys.readouterr().out.count("report: ") == 1


def test_a_stopped_suite_stops_its_step_and_still_reports(tmp_path, monkeypatch):
    pid_file = tmp_path / "child.pid"
    sleeper = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    monkeypatch.setattr(gpu_suite, "plan", lambda out, **kw: [_step("first", "print(1)", limit=10),
                                                             _step("long", sleeper, limit=100),
                                                             _step("never", "print(2)", limit=10)])
    def stop_once_the_long_step_runs():
        for _ in range(600):
            if pid_file.exists() and pid_file.read_text():
                os.kill(os.getpid(), signal.SIGTERM)
                return
            gpu_suite.time.sleep(0.1)

    threading.Thread(target=stop_once_the_long_step_runs, daemon=True).start()
    rc = gpu_suite.run_suite(tmp_path)
    assert rc == 1
    status = {s["name"]: s["status"] for s in json.loads((tmp_path / "gpu_report.json").read_text())["steps"]}
    assert status == {"first": "ok", "long": "stopped", "never": "pending"}
    with pytest.raises(ProcessLookupError):  # the step's process went with the suite
        os.kill(int(pid_file.read_text()), 0)


def _fabricated_results() -> list[dict]:
    env = {"env": {"cuda": True, "device_name": "NVIDIA H200", "capability": [9, 0], "torch": "2.11.0",
                   "torch_cuda": "13.0", "triton": "3.6.0", "python": "3.12.3", "numpy": "2.5.5", "commit": "abc123",
                   "memory_gib": 139.8, "modules": {"diffusers": False}},
           "headline": ["NVIDIA H200; torch 2.11.0"]}
    base = {"what": "w", "command": "cmd", "limit_s": 60, "note": "", "wall_s": 1.5}
    return [
        {**base, "name": "env", "status": "ok", "data": env},
        {**base, "name": "gpu_tests", "status": "failed", "note": "1 failed", "tail": ["E assert 0"],
         "tests": {"tests": 10, "failures": 1, "errors": 0, "skipped": 2, "passed": 7,
                   "failed": ["tests.ops.test_x::test_y"]}},
        {**base, "name": "dit", "status": "timeout", "note": "stopped at its limit (90 s)",
         "data": {"headline": ["DiT pass: fused 21.50 ms"], "notes": [],
                  "results": [{"backend": "fused", "ms": 21.5, "TFLOP/s": 650.25}]}},
        {**base, "name": "chunk", "status": "skipped", "note": "no GPU"},
        {**base, "name": "ops", "status": "pending"},
    ]


def test_report_and_summary_on_fabricated_results(tmp_path):
    results = _fabricated_results()
    summary_path, md_path, json_path = gpu_report.write(tmp_path / "out", results, 123.4, 420)
    md = md_path.read_text()
    assert md.startswith("# GPU suite: NVIDIA H200 (arch 9.0a, 139.8 GiB)")
    assert "| dit | timeout | 1.5 | 60 | stopped at its limit (90 s) |" in md
    assert "| fused | 21.5 | 650.2 |" in md and "E assert 0" in md
    assert "- tests: 7 passed, 1 failed, 2 skipped" in md
    saved = json.loads(json_path.read_text())
    assert saved["device"]["device_name"] == "NVIDIA H200" and [s["name"] for s in saved["steps"]][-1] == "ops"
    lines = gpu_report.summary(results, 123.4, 420, [md_path, json_path])
    text = "\n".join(lines)
    assert lines[0] == ("bench.gpu_suite: NVIDIA H200 (arch 9.0a, 139.8 GiB); torch 2.11.0 (CUDA 13.0), triton 3.6.0, "
                        "python 3.12.3, numpy 2.5.5; commit abc123; 123 s of 420 s")
    assert "FAILED tests.ops.test_x::test_y" in text and "DiT pass: fused 21.50 ms" in text
    assert "chunk      skipped" in text and "ops        pending" in text and str(md_path) in text
    assert len(lines) <= gpu_report.SUMMARY_MAX_LINES
    assert summary_path.read_text().splitlines()[0] == lines[0]


def test_summary_stays_on_one_screen():
    results = _fabricated_results()
    results[2]["data"]["headline"] = [f"line {i}" for i in range(100)]
    lines = gpu_report.summary(results, 1.0, 420)
    assert len(lines) == gpu_report.SUMMARY_MAX_LINES and "more lines in gpu_report.md" in lines[-1]


def test_suite_on_a_machine_without_gpu_writes_its_report(tmp_path, capsys):
    if gpu_suite.card_capability() is not None:
        pytest.skip("a GPU is present")
    rc = gpu_suite.main(["--out", str(tmp_path)])
    assert rc == 0
    saved = json.loads((tmp_path / "gpu_report.json").read_text())
    status = {s["name"]: (s["status"], s["note"]) for s in saved["steps"]}
    assert status["env"][0] == "ok"
    assert all(v == ("skipped", "no GPU") for k, v in status.items() if k != "env")
    first = (tmp_path / "gpu_summary.md").read_text().splitlines()[0]
    assert first.startswith("bench.gpu_suite: no GPU; torch ")
    report = (tmp_path / "gpu_report.md").read_text()
    assert report.startswith("# GPU suite: no GPU") and "<" not in report  # no template placeholder
    assert "report:" in capsys.readouterr().out
