"""What the command line says: each option's default shown once in `--help`, and a path that is not there named once,
without the Hugging Face Hub's repo-id validation text."""

from __future__ import annotations

import re

import pytest

from cosmos_policy.cli.entry import COMMANDS, flag_error, main
from cosmos_policy.policy.files import is_hub_repo_id


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_shows_each_default_once(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert "(default: None)" not in text
    options = re.split(r" (?=--?[a-z])", text.split(" options: ", 1)[1])
    doubled = [o for o in options if o.lower().count("default") > 1]
    assert not doubled, doubled


def test_demo_checkpoint_help_keeps_its_own_default(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert "(default: random weights of --config)" in text and "(default: 3)" in text  # --chunks keeps its default


@pytest.mark.parametrize("path", ["./no_such_dir", "../no/such/dir", "no_such_dir/", "/no/such/dir"])
def test_a_missing_local_path_is_named_once(path, tmp_path, capsys):
    assert main(["demo", "--checkpoint", path, "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0] == f"cosmos-policy: error: --checkpoint {path}: no such checkpoint directory"


@pytest.mark.parametrize("text, hub", [
    ("nvidia/Cosmos-Policy-LIBERO-Predict2-2B", True), ("org/name.v2", True),
    ("./no_such_dir", False), ("../x", False), ("no_such_dir/", False), ("/abs/path", False), ("a/b/c", False),
    ("org/-name", False), ("org/na..me", False), ("org/na--me", False), ("org/" + "n" * 100, False), ("name", False),
])
def test_hub_repo_ids_and_local_paths(text, hub):
    assert is_hub_repo_id(text) is hub


def test_flag_error_names_the_value_once():
    assert str(flag_error("--checkpoint", "x", FileNotFoundError("x: no such file"))) == "--checkpoint x: no such file"
    assert str(flag_error("--vae", "v.pth", ValueError("corrupt"))) == "--vae v.pth: corrupt"
    assert str(flag_error("--device", "npu", ValueError("'npu' is not a device"))) == "--device npu: not a device"
