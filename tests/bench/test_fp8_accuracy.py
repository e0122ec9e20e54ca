"""`python -m bench.fp8_accuracy` writes its JSON and chart, with errors in a sane range."""

import json

from bench import fp8_accuracy


def test_writes_json_and_png(tmp_path):
    report = fp8_accuracy.main(["--out", str(tmp_path), "--seeds", "1"])
    saved = json.loads((tmp_path / "fp8_accuracy.json").read_text())
    assert saved["mean"] == report["mean"]
    assert (tmp_path / "fp8_accuracy.png").stat().st_size > 0
    mean = report["mean"]
    assert 0 < mean["bf16_vs_fp32"] < mean["fp8_vs_fp32"] < 0.10
