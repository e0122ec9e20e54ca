"""`--fp8` on demo, serve and eval: off by default, reaches the policy, recorded in the report, and where FP8 cannot
run one line naming `--fp8` with exit code 2."""

from __future__ import annotations

import argparse
import json

import pytest

import cosmos_kernels.fp8
from cosmos_policy.cli import entry as cli
from cosmos_policy.testing import write_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), image_size=32)


def _one_line(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cosmos-policy: error: --fp8: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_demo_fp8_is_recorded(capsys, tiny, tmp_path):
    out = tmp_path / "out"
    assert cli.main(["demo", "--checkpoint", str(tiny), "--chunks", "1", "--out", str(out), "--fp8"]) == 0
    capsys.readouterr()
    assert json.loads((out / "report.json").read_text())["fp8"] is True
    assert cli.main(["demo", "--checkpoint", str(tiny), "--chunks", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert json.loads((out / "report.json").read_text())["fp8"] is False


@pytest.mark.parametrize("command", [["demo"], ["serve", "--port", "0", "--no-http"],
                                     ["eval", "libero", "--task-suite", "libero_10"]])
def test_fp8_refusals_name_the_flag(command, capsys, tiny, tmp_path, monkeypatch):
    base = [*command, "--checkpoint", str(tiny), "--out", str(tmp_path / "o")] if command[0] != "serve" else \
        [*command, "--checkpoint", str(tiny)]
    assert cli.main([*base, "--fp8", "--backend", "reference"]) == 2
    _one_line(capsys.readouterr().err, "fused network only")
    monkeypatch.setattr(cosmos_kernels.fp8, "fp8_unsupported_reason",
                        lambda device, dtype: "FP8 needs a GPU with FP8 tensor cores; NVIDIA A100 is sm_80")
    assert cli.main([*base, "--fp8"]) == 2
    _one_line(capsys.readouterr().err, "FP8 tensor cores", "sm_80")


def test_serve_fp8_reaches_the_policy(tmp_path):
    from cosmos_policy.serve import command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    for argv, expected in (([], False), (["--fp8"], True)):
        policy, what = command.load_policy(parser.parse_args(["--device", "cpu", *argv]), str(tmp_path))
        assert policy.network.fp8 is expected and what["fp8"] is expected


def test_eval_records_fp8(capsys, tmp_path):
    from tests.evaluation.conftest import TASK0, needs_libero

    if needs_libero.args[0]:
        pytest.skip(needs_libero.kwargs["reason"])
    checkpoint = write_tiny_checkpoint(tmp_path / "ckpt", suite="libero", instructions=(TASK0,), image_size=64)
    out = tmp_path / "eval"
    assert cli.main(["eval", "libero", "--checkpoint", str(checkpoint), "--task-suite", "libero_10", "--tasks", "0",
                     "--trials", "1", "--max-steps", "16", "--out", str(out), "--no-progress", "--fp8"]) == 0
    capsys.readouterr()
    assert json.loads((out / "run.json").read_text())["fp8"] is True
