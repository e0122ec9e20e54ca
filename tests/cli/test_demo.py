"""`cosmos-policy demo`: the report, its files, the observation it names, and the NVTX ranges."""

import json
from pathlib import Path

import numpy as np
import pytest

from cosmos_policy import profiling
from cosmos_policy.cli import demo
from cosmos_policy.cli import entry as cli
from cosmos_policy.errors import UsageError
from cosmos_policy.testing import write_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), image_size=32)


@pytest.fixture
def ranges(monkeypatch):
    """NVTX switched on, recorded by a fake backend: [("push", name) | ("pop", None)]."""
    events = []
    monkeypatch.setattr(profiling, "_backend", (lambda name: events.append(("push", name)),
                                                lambda: events.append(("pop", None))))
    profiling.set_enabled(True)
    yield events
    profiling.set_enabled(False)


def test_demo_report_files_and_text(capsys, tiny, tmp_path):
    out, trace = tmp_path / "out", tmp_path / "trace.json"
    rc = cli.main(["demo", "--checkpoint", str(tiny), "--chunks", "2", "--backend", "both", "--out", str(out),
                   "--trace", str(trace), "--seed", "7"])
    text = capsys.readouterr().out
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "cosmos-policy-demo/1" and report["config"] == "tiny" and report["chunks"] == 2
    assert report["observation"]["source"] in ("real", "synthetic")
    assert set(report["backends"]) == {"fused", "reference"}
    for result in report["backends"].values():
        stages = list(result["stages_ms"])
        assert stages == ["preprocess", "text", "vae_encode", *(f"dit_pass_{k}" for k in range(1, 6)), "sampler",
                          "decode"]
        for s in result["stages_ms"].values():
            assert s["n"] == 2 and 0 <= s["p50"] <= s["p95"] <= s["p99"]
        assert result["chunk_ms"]["n"] == 2 and len(result["chunk_ms"]["samples"]) == 2
        assert result["warmup_ms"] > 0 and result["chunk_path"] == "eager"
    assert report["ratio"]["chunk_p50"] > 0 and set(report["ratio"]["stages_p50"]) == set(stages)
    assert [t["status"] for t in report["targets"]] == ["not measured"] * 5
    assert all(t["note"] == "no GPU" for t in report["targets"])
    assert np.asarray(report["actions"]).shape == (16, 7)
    assert (out / "stages.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for path in (trace, tmp_path / "trace.reference.json"):
        assert "traceEvents" in json.loads(path.read_text())
    # the printed report: aligned tables, the ratio, the targets, the files
    assert "per-stage latency, instrumented eager run (2 chunks)" in text
    assert "ref/fused" in text and "reference / fused chunk p50" in text
    assert "not measured: no GPU" in text and "actions (16, 7) (seed 7)" in text
    assert str(out / "report.json") in text
    widths = {len(line) for line in text.splitlines() if line.startswith(("dit_pass_", "vae_encode", "sampler"))}
    assert len(widths) == 1


def test_observation_named_and_explicit_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("COSMOS_POLICY_DATA", str(tmp_path / "absent"))
    obs, info = demo.load_observation("libero", "task", None)
    assert info["source"] == "synthetic" and "synthetic" in info["description"]
    assert obs["primary_image"].shape == (256, 256, 3) and obs["task_description"] == "task"
    with pytest.raises(UsageError, match="--data-dir .*: no such directory"):
        demo.load_observation("libero", "task", tmp_path / "absent")
    with pytest.raises(UsageError, match="no libero_sample_observation.npz there"):
        demo.load_observation("libero", "task", tmp_path)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "libero_sample_observation.npz", primary_image=rng.integers(0, 255, (8, 8, 3), np.uint8),
             wrist_image=rng.integers(0, 255, (8, 8, 3), np.uint8), proprio=np.zeros(9))
    obs, info = demo.load_observation("libero", "task", tmp_path)
    assert info["source"] == "real" and info["path"] == str(tmp_path / "libero_sample_observation.npz")
    (tmp_path / "libero_sample_observation.npz").write_bytes(b"not a zip")
    with pytest.raises(UsageError, match="corrupt"):
        demo.load_observation("libero", "task", tmp_path)


def test_real_sample_is_found_beside_the_repository(monkeypatch):
    monkeypatch.delenv("COSMOS_POLICY_DATA", raising=False)
    if not (cli.default_data_dir() / cli.SAMPLE_NAME).is_file():
        pytest.skip("the shared LIBERO sample is not beside this checkout")
    _, info = demo.load_observation("libero", "task", None)
    assert info["source"] == "real"


def test_percentiles():
    from cosmos_policy.cli.demo_report import percentiles

    p = percentiles([float(v) for v in range(1, 101)])
    assert p["n"] == 100 and p["p50"] == pytest.approx(50.5) and p["p95"] == pytest.approx(95.05)
    assert percentiles([])["p50"] is None


def test_ranges_cost_nothing_when_off():
    profiling.set_enabled(False)
    assert profiling.nvtx_range("a") is profiling.nvtx_range("b", 3)
    items = ["x", "y"]
    assert isinstance(profiling.nvtx_enumerate(items, "blk"), enumerate)

    def f():
        return 1

    assert profiling.nvtx_range("f")(f) is f


def test_ranges_when_on(ranges):
    with profiling.nvtx_range("stage"):
        ranges.append(("body", None))

    @profiling.nvtx_range("decorated")
    def f(x):
        return x + 1

    assert f(1) == 2
    for _ in profiling.nvtx_enumerate(["a", "b"], "blk"):
        ranges.append(("body", None))
    assert ranges == [("push", "stage"), ("body", None), ("pop", None), ("push", "decorated"), ("pop", None),
                      ("push", "blk0"), ("body", None), ("pop", None), ("push", "blk1"), ("body", None),
                      ("pop", None)]


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_policy_stages_and_every_dit_block_are_ranged(ranges, tiny, backend):
    from cosmos_policy.policy import CosmosPolicy

    policy = CosmosPolicy.from_pretrained(tiny, device="cpu", backend=backend)
    obs, _ = demo.load_observation("libero", next(iter(policy.text.instructions())), None)
    ranges.clear()
    policy.infer(obs, seed=0)
    pushed = [name for kind, name in ranges if kind == "push"]
    assert sum(kind == "pop" for kind, _ in ranges) == len(pushed)
    for stage in ("preprocess", "text", "vae_encode", "denoise", "postprocess"):
        assert pushed.count(stage) == 1, stage
    blocks = policy.network.config.num_blocks
    passes = 5
    for i in range(blocks):
        assert pushed.count(f"dit.block{i}") == passes


def test_demo_steps_flag(capsys, tiny, tmp_path):
    """`--steps 2`: one network pass per chunk (the official one-prediction path), recorded in the report, and the
    chunk-latency target not judged (it speaks of the official 5 passes)."""
    out = tmp_path / "out"
    assert cli.main(["demo", "--checkpoint", str(tiny), "--chunks", "1", "--out", str(out), "--steps", "2"]) == 0
    capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 2
    stages = list(report["backends"]["fused"]["stages_ms"])
    assert [s for s in stages if s.startswith("dit_pass_")] == ["dit_pass_1"]
    assert np.asarray(report["actions"]).shape == (16, 7)
