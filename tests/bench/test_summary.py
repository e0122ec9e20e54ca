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
    assert lines[0].split()[:4] == ["group", "rounds", "fused", "reference"]
    assert len(lines) == 3
    # Right-aligned: every numeric column ends at the same character position in every row.
    for title in summary.HEADER[1:-1]:
        end = lines[0].index(title) + len(title)
        for line in lines[1:]:
            assert line[end - 1] != " " and line[end:end + 1] in ("", " "), (title, line)
    row_a, row_q = lines[1], lines[2]
    assert "1.234" in row_a and "12.300" in row_a and "9.96x" in row_a
    assert "250.0" in row_q and "500.0" in row_q and "2.00x" in row_q and "sdpa 125.0 0.50x" in row_q


def _interleaved(group, rounds_ms: dict, pytest_benchmark_median=0.5):
    """Benchmarks whose interleaved rounds are `rounds_ms` and whose pytest-benchmark medians say otherwise."""
    return [_bench(group, variant, pytest_benchmark_median, interleaved_s=[t / 1e3 for t in times])
            for variant, times in rounds_ms.items()]


def test_ratio_is_the_median_of_per_round_ratios():
    # per round: 4.0, 1.5, 1.5 -> 1.5; the ratio of the medians would be 4 / 2 = 2
    (g,) = summary.group_benchmarks(_interleaved("g", {"fused": [1, 2, 4], "reference": [4, 3, 6]}))
    assert g.rounds() == 3
    assert g.ratio("reference") == pytest.approx(1.5)
    assert g.medians_s == pytest.approx({"fused": 2e-3, "reference": 4e-3})  # the rounds', not pytest-benchmark's
    assert g.minimums_s == pytest.approx({"fused": 1e-3, "reference": 3e-3})


def test_a_drifting_machine_cancels_out_of_the_ratio():
    # the machine slows 1x, 3x, 8x from round to round; the reference is 3x the fused work in every round
    speed = [1, 1, 3, 3, 8, 8, 1, 3]
    (g,) = summary.group_benchmarks(_interleaved("g", {"fused": [s * 2.0 for s in speed],
                                                       "compile": [s * 6.0 for s in speed]}))
    assert g.ratio("compile") == pytest.approx(3.0)
    assert g.spreads()["compile/fused"] == pytest.approx(0.0)


def test_rounds_of_unequal_length_fall_back_to_the_medians():
    (g,) = summary.group_benchmarks(_interleaved("g", {"fused": [1, 2, 4], "reference": [4, 3]}))
    assert g.rounds() == 3 and g.ratio("reference") == pytest.approx(3.5 / 2)
    with pytest.raises(ValueError, match="rounds"):
        summary.round_ratios([1.0], [1.0, 2.0])


def test_relative_iqr():
    assert summary.relative_iqr([0.9, 0.95, 1.0, 1.05, 1.1]) == pytest.approx(0.1)
    assert summary.relative_iqr([2.0]) == 0.0
    assert summary.relative_iqr([2.0, 2.0, 8.0, 8.0]) == pytest.approx(6.0 / 5.0)


def test_a_quiet_group_is_not_noisy_and_a_time_sliced_one_is():
    steady = {"fused": [1.0, 1.02, 0.98, 1.01, 0.99, 1.0], "reference": [3.0, 3.05, 2.95, 3.02, 2.98, 3.0]}
    # one variant time-sliced: 2 or 8 ms, as a busy scheduler hands out its slices
    sliced = {"fused": [1.0, 1.02, 0.98, 1.01, 0.99, 1.0], "reference": [2.0, 8.0, 2.0, 8.0, 8.0, 2.0]}
    quiet, busy = summary.group_benchmarks(_interleaved("quiet", steady) + _interleaved("busy", sliced))
    assert quiet.noise() is None and quiet.spread() < 0.05
    reason = busy.noise()
    assert reason is not None and reason.startswith("ref") and "> 20%" in reason
    assert quiet.noise(threshold=0.01) is not None  # the threshold is what decides
    table = summary.format_table([quiet, busy])
    assert table[1].startswith("quiet") and "noisy" not in table[1] and table[1].split()[1] == "6"
    assert table[2].startswith("busy") and table[2].endswith("noisy")
    assert table[3:] == [f"noisy busy: {reason}"]


def test_a_wide_variant_alone_makes_the_group_noisy():
    # the per-round ratio is steady but the fused variant's own times spread over 4x
    (g,) = summary.group_benchmarks(_interleaved("g", {"fused": [1, 4, 1, 4], "reference": [2, 8, 2, 8]}))
    assert g.spreads()["ref/fused"] == 0.0
    assert g.noise() is not None and g.noise().startswith("fused")


def test_time_cells_show_the_minimum_beside_the_median():
    (row,) = summary.rows(summary.group_benchmarks(_interleaved("g", {"fused": [1, 2, 4], "reference": [4, 3, 6]})))
    assert row[:6] == ("g", "3", "2.000 (1.000)", "4.000 (3.000)", "-", "1.50x")
