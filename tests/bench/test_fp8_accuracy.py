"""`python -m bench.fp8_accuracy` (a tiny version of it) writes its JSON and chart, with errors in a sane range."""

import json

from bench import fp8_accuracy


def test_writes_json_and_png(tmp_path):
    report = fp8_accuracy.main(["--out", str(tmp_path), "--seeds", "1", "--steps", "3", "--wide-seeds", "1",
                                "--wide-steps", "2", "--wide-side", "4"])
    saved = json.loads((tmp_path / "fp8_accuracy.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert (tmp_path / "fp8_accuracy.png").stat().st_size > 0
    mean = report["network"]["mean"]
    assert 0 < mean["bf16_vs_fp32"] < mean["fp8_vs_fp32"] < 0.10
    wide = report["chain"]["wide"]
    assert (wide["model_channels"], wide["num_blocks"], wide["tokens"], wide["steps"]) == (2048, 1, 9 * 4, 2)
    for chain in report["chain"].values():
        for variant in ("bf16", "fp8"):
            errors = chain["mean"][variant]
            assert set(errors) == {"latents", "actions", "value"}
            # e4m3 keeps 3 mantissa bits, bf16 8: FP8's error is the larger, both well below order 1
            assert all(0 <= e < 0.15 for e in errors.values()), (variant, errors)
        assert chain["mean"]["bf16"]["latents"] < chain["mean"]["fp8"]["latents"]
