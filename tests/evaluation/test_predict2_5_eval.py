"""`cosmos-policy eval libero` on a tiny Cosmos-Predict2.5 checkpoint (rectified flow, Reason1 text), and the
`--variant` / `--shift` flags' errors."""

from __future__ import annotations

import json

import pytest

from cosmos_policy.cli import main

from .conftest import TASK0, needs_libero


def _args(checkpoint, out, *extra):
    return ["eval", "libero", "--checkpoint", str(checkpoint), "--task-suite", "libero_10", "--tasks", "0",
            "--trials", "2", "--max-steps", "32", "--out", str(out), "--no-progress", *extra]


@pytest.fixture(scope="module")
def p25_checkpoint(tmp_path_factory):
    from cosmos_policy.testing import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("p25"), suite="libero", instructions=(TASK0,),
                                 image_size=64, variant="predict2.5")


@needs_libero
def test_eval_runs_a_predict2_5_checkpoint_and_writes_its_summary(p25_checkpoint, tmp_path):
    out = tmp_path / "out"
    assert main(_args(p25_checkpoint, out, "--shift", "3")) == 0
    lines = (out / "episodes.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 2 and {r["trial"] for r in records} == {0, 1}
    assert all(r["task"] == TASK0 and r["queries"] == 2 and r["steps"] == 32 for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["suite_result"]["episodes"] == 2 and summary["this_run"]["queries"] == 4
    run = json.loads((out / "run.json").read_text())
    assert run["shift"] == 3.0


@pytest.mark.parametrize("extra, expected", [
    (["--variant", "predict2", "--shift", "5"], "--shift 5: predict2 policies sample with the EDM sampler"),
    (["--shift", "0"], "argument --shift: expected a number > 0, got 0"),
    (["--variant", "predict3"], "argument --variant: invalid choice: 'predict3'"),
])
def test_variant_and_shift_errors_are_one_line(extra, expected, tmp_path, capsys):
    assert main(["eval", "libero", "--task-suite", "libero_10", "--out", str(tmp_path / "o"),
                 "--checkpoint", str(tmp_path), *extra]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cosmos-policy: error: "), lines
    assert expected in lines[0], lines


@needs_libero
def test_shift_on_a_predict2_checkpoint_names_the_flag(tiny_checkpoint, tmp_path, capsys):
    assert main(_args(tiny_checkpoint, tmp_path / "o", "--shift", "5")) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("cosmos-policy: error: --shift 5: only Cosmos-Predict2.5") and "\n" not in line
    assert not (tmp_path / "o").exists()
