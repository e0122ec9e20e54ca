"""bench/bench_vae.py's command-line report: the policy's per-query encode (the cached constant prefix, then the
two camera images) fused against diffusers, with the convolutions' work it divides by."""

import math

import pytest

pytest.importorskip("diffusers")


def test_query_encode_report_has_parity_ratio_and_convolution_rate():
    from bench import bench_vae

    report = bench_vae.run(rounds=1, variants=("fused", "reference"), workloads=("query",),
                           directions=("encode", "decode"), base_dim=16)
    assert list(report["results"]) == ["query_encode"]  # a query only encodes
    entry = report["results"]["query_encode"]
    assert entry["relative_difference_vs_reference"]["fused"] < 1e-5
    assert entry["median_ratio_over_fused"]["reference"] > 0
    assert entry["conv_gflop"] > 0 and not math.isnan(entry["conv_gflop"])
    rates = entry["conv_gflop_per_s_at_median"]
    assert set(rates) == {"fused", "reference"} and all(r > 0 for r in rates.values())
