"""The measuring steps of `bench.gpu_suite` on the CPU at toy sizes (their code paths, not their numbers), the
chunk with the fixed-latent stand-in for the VAE, and the attention headline's look-up of the automatic choice."""

from __future__ import annotations

import json

import pytest
import torch

from bench import gpu_chunk, gpu_steps
from cosmos_kernels import picker


@pytest.mark.parametrize("step", ["ops", "attention"])
def test_measuring_steps_run_on_cpu_at_toy_sizes(tmp_path, step):
    out = tmp_path / f"{step}.json"
    assert gpu_steps.main([step, "--out", str(out), "--smoke"]) == 0
    data = json.loads(out.read_text())
    assert data["done"] and data["results"] and data["headline"]
    assert all(r["ms"] > 0 for r in data["results"])


def test_env_step_names_the_versions(tmp_path):
    out = tmp_path / "env.json"
    assert gpu_steps.main(["env", "--out", str(out)]) == 0
    env = json.loads(out.read_text())["env"]
    assert {"torch", "triton", "python", "numpy", "commit", "cuda", "modules"} <= set(env)


def test_chunk_times_every_call_with_the_stand_in_for_the_vae(tmp_path):
    out = tmp_path / "chunk.json"
    assert gpu_steps.main(["chunk", "--out", str(out), "--smoke"]) == 0
    data = json.loads(out.read_text())
    row, fp8 = data["results"]  # the CPU runs the FP8 GEMMs too: its mode follows the bf16 one
    assert data["done"] and row["mode"] == "eager" and row["calls"] == 2 and row["vae_encode_measured"] is False
    assert (row["fp8"], fp8["mode"], fp8["fp8"], fp8["calls"]) == (False, "eager_fp8", True, 2)
    assert 0 < fp8["p50_ms"] <= fp8["p95_ms"] <= fp8["p99_ms"]
    assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
    assert row["stages_ms"]["denoise"]["p50_ms"] > 0
    assert "without the VAE encode" in data["headline"][0]
    assert any("diffusers is not installed" in n for n in data["notes"])


def test_fixed_prefix_encoder_shapes():
    enc = gpu_chunk.FixedPrefixEncoder(frames=4, device="cpu")
    images = [torch.zeros(2, 3, 224, 224, dtype=torch.uint8)] * 2
    latents = enc.encode_prefix(images)
    assert latents.shape == (1, 16, 4, 28, 28) and enc.encode_prefix(images) is latents
    with pytest.raises(ValueError, match="no encoder state"):
        enc.encode_prefix(images, keep_state=True)


def test_attention_headline_finds_the_automatic_choice(tmp_path, monkeypatch):
    """The choice cache is keyed by the picker's strings: the look-up finds each seeded choice by its own flags."""
    monkeypatch.setenv(picker.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(picker, "gpu_label", lambda device: "Test GPU sm_90")
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)  # no CUDA driver here
    q, k = torch.zeros(1, 196, 16, 128, dtype=torch.bfloat16), torch.zeros(1, 64, 16, 128, dtype=torch.bfloat16)
    w, cos = torch.ones(128), torch.ones(196, 128)
    cases = {"triton": (q, q, {"q_norm_weight": w, "k_norm_weight": w, "rope_cos": cos, "rope_sin": cos}),
             "flash_attn": (q, q, {}),
             "sdpa": (q, k, {"q_norm_weight": w, "k_norm_weight": w})}
    assert all(gpu_steps.auto_choice(qq, kk, extra) is None for qq, kk, extra in cases.values())
    for name, (qq, kk, extra) in cases.items():  # seeded as the picker stores a timed choice
        key = picker.choice_key(qq.device, qq, kk, extra.get("q_norm_weight"), extra.get("k_norm_weight"),
                                extra.get("rope_cos"), 1)
        assert picker.timed_choice(key, lambda name=name: [name], None, (), "sdpa") == name
    for name, (qq, kk, extra) in cases.items():
        assert gpu_steps.auto_choice(qq, kk, extra) == name
