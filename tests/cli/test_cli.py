"""`cosmos-policy`: every user error is one line `cosmos-policy: error: ...` with exit code 2."""

import os
import pickle
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from cosmos_policy.cli import entry as cli
from cosmos_policy.errors import CorruptFileError
from cosmos_policy.model.checkpoint import load_network_checkpoint, load_t5_embeddings
from cosmos_policy.testing import CHECKPOINT_NAMES, write_tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), image_size=32)


@pytest.fixture
def copy(tiny, tmp_path) -> Path:
    return Path(shutil.copytree(tiny, tmp_path / "ckpt"))


def _error(capsys, argv: list[str]) -> str:
    """Run the CLI expecting a user error; returns its one line."""
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2, (out, err)
    assert len(lines) == 1 and lines[0].startswith("cosmos-policy: error: "), err
    assert "Traceback" not in err
    return lines[0]


def _demo(*flags: str, out: Path) -> list[str]:
    return ["demo", "--chunks", "1", "--out", str(out), *flags]


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("true",))


# -- argparse's own errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, words", [
    (["--config", "huge"], ["--config", "invalid choice: 'huge'"]),
    (["demo", "--suite", "bridge"], ["--suite", "invalid choice: 'bridge'"]),
    (["demo", "--backend", "fast"], ["--backend", "'fast'"]),
    (["demo", "--dtype", "int8"], ["--dtype", "'int8'"]),
    (["demo", "--chunks", "0"], ["--chunks", ">= 1"]),
    (["no-such-command"], ["COMMAND", "invalid choice: 'no-such-command'"]),
    (["demo", "--no-such-flag"], ["unrecognized arguments: --no-such-flag"]),
])
def test_argparse_errors_are_one_line(capsys, argv, words):
    line = _error(capsys, argv)
    for word in words:
        assert word in line


def test_default_subcommand_is_demo():
    assert cli._command_of([]) == ("demo", ["demo"])
    assert cli._command_of(["--chunks", "2"]) == ("demo", ["demo", "--chunks", "2"])
    assert cli._command_of(["--debug", "--chunks", "2"]) == ("demo", ["--debug", "demo", "--chunks", "2"])
    assert cli._command_of(["roofline", "--json"]) == ("roofline", ["roofline", "--json"])
    assert cli._command_of(["--help"])[0] is None


def test_help_documents_the_defaults(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "cosmos_policy_demo" in text and "--trace" in text and "usage: cosmos-policy demo" in text


def test_process_exit_code_and_single_line():
    proc = subprocess.run([sys.executable, "-m", "cosmos_policy", "--config", "huge"], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "cosmos-policy: error: argument --config: invalid choice: 'huge' (choose from 'tiny', '2b')"]


# -- load errors ------------------------------------------------------------------------------------------------

def test_nonexistent_checkpoint(capsys, tmp_path):
    missing = tmp_path / "no" / "such"
    line = _error(capsys, _demo("--checkpoint", str(missing), out=tmp_path / "out"))
    assert f"--checkpoint {missing}: no such checkpoint directory" in line


def test_empty_directory(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    line = _error(capsys, _demo("--checkpoint", str(tmp_path / "empty"), out=tmp_path / "out"))
    assert "--checkpoint" in line and "is empty" in line


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_network_checkpoint_is_reported_as_corrupt(capsys, copy, tmp_path, damage):
    path = copy / CHECKPOINT_NAMES["libero"]
    data = path.read_bytes()
    path.write_bytes({"garbage": b"\x80\x02not a checkpoint" * 50, "truncated": data[: len(data) // 2],
                      "empty": b""}[damage])
    with pytest.raises(CorruptFileError, match="corrupt or not a PyTorch checkpoint"):
        load_network_checkpoint(path)
    line = _error(capsys, _demo("--checkpoint", str(copy), out=tmp_path / "out"))
    assert str(path) in line and "corrupt" in line and "refusing" not in line


def test_pickle_that_would_run_code_is_still_refused(capsys, copy, tmp_path):
    path = copy / CHECKPOINT_NAMES["libero"]
    torch.save({"net.x_embedder.proj.1.weight": _RunsCode()}, path)
    line = _error(capsys, _demo("--checkpoint", str(copy), out=tmp_path / "out"))
    assert "refusing to load" in line and "corrupt" not in line


def test_corrupt_t5_pickle(copy):
    path = copy / "libero_t5_embeddings.pkl"
    path.write_bytes(pickle.dumps({"a": torch.zeros(2)})[:20])
    with pytest.raises(CorruptFileError, match="libero_t5_embeddings.pkl: corrupt"):
        load_t5_embeddings(path)


def test_corrupt_vae_names_the_file(capsys, copy, tmp_path):
    vae = copy / "tokenizer" / "tokenizer.pth"
    vae.write_bytes(vae.read_bytes()[:1000])
    line = _error(capsys, _demo("--checkpoint", str(copy), out=tmp_path / "out"))
    assert str(vae) in line and "corrupt" in line
    # the same file passed with --vae is blamed on --vae
    line = _error(capsys, _demo("--checkpoint", str(copy), "--vae", str(vae), out=tmp_path / "out"))
    assert line.startswith(f"cosmos-policy: error: --vae {vae}")


def test_corrupt_statistics_names_the_file(capsys, copy, tmp_path):
    stats = copy / "libero_dataset_statistics.json"
    stats.write_text('{"actions_min": [1, 2')
    line = _error(capsys, _demo("--checkpoint", str(copy), out=tmp_path / "out"))
    assert str(stats) in line and "corrupt dataset statistics" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_device_without_gpu(capsys, copy, tmp_path):
    line = _error(capsys, _demo("--checkpoint", str(copy), "--device", "cuda", out=tmp_path / "out"))
    assert "--device cuda: " in line and "no CUDA GPU" in line


def test_unknown_device(capsys, tmp_path):
    line = _error(capsys, _demo("--device", "gpu0", out=tmp_path / "out"))
    assert "--device gpu0: " in line


def test_unreachable_hugging_face_id(capsys, tmp_path, monkeypatch):
    def offline(repo_id, **kwargs):
        raise ConnectionError("Failed to resolve 'huggingface.co'\n(caused by NameResolutionError)")

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=offline))
    line = _error(capsys, _demo("--checkpoint", "nvidia/Cosmos-Policy-LIBERO-Predict2-2B", out=tmp_path / "out"))
    assert line == ("cosmos-policy: error: --checkpoint nvidia/Cosmos-Policy-LIBERO-Predict2-2B: not a directory, "
                    "and could not be fetched from the Hugging Face Hub (ConnectionError: Failed to resolve "
                    "'huggingface.co')")


def test_missing_diffusers_names_the_extra(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` now fails
    line = _error(capsys, _demo(out=tmp_path / "out"))
    assert "diffusers is not installed" in line and 'pip install "cosmos-kernels[policy]"' in line
    from cosmos_policy.errors import UsageError
    from cosmos_policy.model.vae import load_autoencoder

    with pytest.raises(UsageError, match=r"\[policy\]"):
        load_autoencoder(tmp_path / "tokenizer.pth")


def test_missing_data_dir(capsys, tmp_path):
    line = _error(capsys, _demo("--data-dir", str(tmp_path / "nowhere"), out=tmp_path / "out"))
    assert line == f"cosmos-policy: error: --data-dir {tmp_path / 'nowhere'}: no such directory"


def test_unwritable_out_folder(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    line = _error(capsys, _demo(out=tmp_path / "file" / "out"))
    assert f"--out {tmp_path / 'file' / 'out'}: cannot write there" in line


def test_wrong_size_checkpoint_is_caught_on_the_meta_device(capsys, tiny, tmp_path, monkeypatch):
    from cosmos_policy.model import dit as model

    devices = []
    init = model.CosmosDiT.__init__

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        devices.append(next(self.parameters()).device.type)

    monkeypatch.setattr(model.CosmosDiT, "__init__", recording_init)
    line = _error(capsys, _demo("--checkpoint", str(tiny), "--config", "2b", out=tmp_path / "out"))
    assert devices == ["meta"]  # compared on meta, never allocated
    assert len(line) < 700, line
    assert "does not fit the network" in line and "keys of the wrong shape" in line
    assert "x_embedder.proj.1.weight" in line and "more" in line


def test_debug_shows_the_traceback(capsys, tmp_path):
    rc = cli.main(["--debug", "demo", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("cosmos-policy: error:")
