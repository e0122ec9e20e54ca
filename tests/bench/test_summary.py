"""The per-group benchmark summary: grouping, ratios and the aligned table, on fabricated results."""

from __future__ import annotations

import pytest

from bench import summary


def _bench(group, variant, median, **info):
    return {"group": group, "name": f"test[{variant}]", "extra_info": {"variant": variant, **info},
            "stats": {"median": median}}


def test_groups_and_ratios():
    groups = summary.group_benchmarks([
        _bench("a", "fused", 0.002), _bench("a", "reference", 0.010), _bench("a", "compile", 0.003),
        _bench("b", "reference", 0.5), _bench("a", "triton", 0.001),
        {"group": "c", "name": "unmeasured", "extra_info": {}, "stats": {}},  # --benchmark-disable leaves no stats
    ])
    assert [g.group for g in groups] == ["a", "b"]
    a, b = groups
    assert a.ratios() == pytest.approx({"fused_vs_reference": 5.0, "fused_vs_compile": 1.5, "fused_vs_triton": 0.5})
    assert a.others() == ["triton"]
    assert b.ratio("reference") is None and b.ratios() == {}


def test_benchmark_without_variant_is_its_own_group():
    (g,) = summary.group_benchmarks([{"group": None, "name": "test_x", "extra_info": {}, "stats": {"median": 1.0}}])
    assert g.group == "test_x" and g.medians_s == {"test_x": 1.0}


def test_table_is_aligned_and_in_ms():
    groups = summary.group_benchmarks([
        _bench("adaptive_norm[libero]", "fused", 0.0012345), _bench("adaptive_norm[libero]", "reference", 0.0123),
        _bench("q", "fused", 0.25), _bench("q", "compile", 0.5), _bench("q", "sdpa", 0.125),
    ])
    lines = summary.format_table(groups)
    assert lines[0].split()[:3] == ["group", "fused", "reference"]
    assert len(lines) == 3
    # Right-aligned: every numeric column ends at the same character position in every row.
    for title in summary.HEADER[1:-1]:
        end = lines[0].index(title) + len(title)
        for line in lines[1:]:
            assert line[end - 1] != " " and line[end:end + 1] in ("", " "), (title, line)
    row_a, row_q = lines[1], lines[2]
    assert "1.234" in row_a and "12.300" in row_a and "9.96x" in row_a
    assert "250.0" in row_q and "500.0" in row_q and "2.00x" in row_q and "sdpa 125.0 (0.50x)" in row_q
