"""`cosmos-policy backends`: build info, backends per op and device, attention backends, the picker's disk cache."""

import json

import pytest
import torch

from cosmos_kernels import picker
from cosmos_kernels._ext import build_info, cuda_kernels_note
from cosmos_policy.cli import entry as cli

KEYS = {"torch", "environment", "build_info", "cuda_kernels_note", "devices", "ops", "attention_backends",
        "attention_choices"}
OPS = {"layer_norm_modulate", "gated_residual_layer_norm_modulate", "rms_norm", "qk_norm_rope", "sampler_step",
       "attention", "linear_gelu", "layer_norm_modulate_fp8", "gated_residual_layer_norm_modulate_fp8",
       "quantize_rowwise", "gelu_quantize_rowwise", "fp8_linear_gated_residual", "fp8_linear_qk_norm_rope",
       "fp8_linear_head_norm", "attention_fp8", "channel_rms_norm_silu", "residual_channel_rms_norm_silu",
       "causal_channel_rms_norm_silu", "residual_causal_channel_rms_norm_silu"}


def _json(capsys, argv: list[str]) -> dict:
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out)  # the whole of stdout is one JSON object


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(picker.CACHE_ENV, str(tmp_path))
    return tmp_path


def test_json_keys_and_contents(capsys, cache_dir):
    report = _json(capsys, ["backends", "--json"])
    assert set(report) == KEYS
    assert report["build_info"] == build_info()
    assert report["cuda_kernels_note"] == cuda_kernels_note()
    assert report["devices"][0] == "cpu"
    assert len(report["devices"]) == 1 + (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert set(report["ops"]) == OPS
    for op, per_device in report["ops"].items():
        assert set(per_device) == set(report["devices"])
        assert "reference" in per_device["cpu"]["available"], op
        assert "cuda" not in per_device["cpu"]["available"], op  # a CPU tensor never runs the CUDA kernels
    assert "sdpa" in report["ops"]["attention"]["cpu"]["available"]
    assert "flash_attn" not in report["ops"]["attention"]["cpu"]["available"]
    attn = report["attention_backends"]
    assert set(attn) == {"sdpa", "triton", "flash_attn"}
    assert set(attn["flash_attn"]) == {"FA3", "FA4", "FA2", "used"}
    assert attn["flash_attn"]["FA3"]["module"] == "flash_attn_interface"
    assert report["environment"]["COSMOS_KERNELS_CACHE_DIR"] == str(cache_dir)  # the pins this run sees
    choices = report["attention_choices"]
    assert choices == {"path": str(cache_dir / "attention_choices.json"), "exists": False, "entries": {}}


def test_fabricated_cache_file_shows_up(capsys, cache_dir):
    entries = {"NVIDIA H100 sm_90 | torch 2.x | q(1, 1764, 16, 128) k(1, 1764, 16, 128) bfloat16 | qkr": "triton",
               "NVIDIA H100 sm_90 | torch 2.x | q(1, 1764, 16, 128) k(1, 512, 16, 128) bfloat16 | qn": "sdpa"}
    (cache_dir / "attention_choices.json").write_text(json.dumps({**entries, "bad": 3}))
    choices = _json(capsys, ["backends", "--json"])["attention_choices"]
    assert choices["path"] == str(cache_dir / "attention_choices.json") and choices["exists"]
    assert choices["entries"] == entries  # the non-string value is not a choice
    assert cli.main(["backends"]) == 0
    text = capsys.readouterr().out
    assert str(cache_dir / "attention_choices.json") in text
    assert all(key in text for key in entries) and "triton" in text


def test_corrupt_cache_file_is_reported_not_fatal(capsys, cache_dir):
    (cache_dir / "attention_choices.json").write_text("{not json")
    choices = _json(capsys, ["backends", "--json"])["attention_choices"]
    assert choices["exists"] and choices["entries"] == {} and "cannot read" in choices["error"]


@pytest.mark.parametrize("argv", [["backends", "--bogus"], ["backends", "--json=yes"]])
def test_bad_flag_is_one_line_exit_2(capsys, argv):
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cosmos-policy: error: ") and out == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_probe_without_gpu_is_a_usage_error(capsys):
    assert cli.main(["backends", "--probe"]) == 2
    assert "--probe" in capsys.readouterr().err
