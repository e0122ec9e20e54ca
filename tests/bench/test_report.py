"""`python -m bench.report` on fabricated JSON, bad input, and a real pytest-benchmark run of a toy benchmark
that uses the bench suites' own hooks (ratios in extra_info, the summary, `--benchmark-compare`)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench import report, summary
from bench.common import REPO

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _fabricated() -> dict:
    def bench(group, variant, median, device="cpu", rounds_ms=None):
        info = {"variant": variant, "device": device, "device_name": "Toy CPU 3000", "torch": "2.99", "triton": "9.9",
                "commit": "abc123def456"}
        if rounds_ms is not None:
            info["interleaved_s"] = [t / 1e3 for t in rounds_ms]
        return {"group": group, "name": f"test_{group}[{variant}]", "fullname": f"bench.py::test[{variant}]",
                "extra_info": info, "stats": {"median": median, "min": median, "max": median, "rounds": 5}}

    return {"machine_info": {"node": "toybox", "python_version": "3.12.0", "cpu": {"brand_raw": "Toy CPU 3000"}},
            "commit_info": {"id": "abc123def4567890", "dirty": True}, "datetime": "2026-01-01T00:00:00",
            "benchmarks": [bench("norm[libero]", "fused", 0.002), bench("norm[libero]", "reference", 0.008),
                           bench("norm[libero]", "compile", 0.004), bench("attn[self]", "fused", 0.0005),
                           bench("attn[self]", "sdpa", 0.0006),
                           bench("busy[x]", "fused", 0.1, rounds_ms=[1, 4, 1, 4]),
                           bench("busy[x]", "reference", 0.1, rounds_ms=[3, 3, 12, 12])]}


def test_markdown_and_chart(tmp_path, capsys):
    src = tmp_path / "run.json"
    src.write_text(json.dumps(_fabricated()))
    assert report.main([str(src), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "run.md").read_text()
    assert "commit: abc123def456+dirty" in md
    assert "| norm[libero] | - | 2.000 (2.000) | 8.000 (8.000) | 4.000 (4.000) | 4.00x | 2.00x | - |  |" in md
    assert "| attn[self] | - | 0.500 (0.500) | - | - | - | - | - | sdpa 0.600 (0.600) 1.20x |" in md
    assert "## attn[self]" in md
    assert "| reference | 8 | 8 | 4.00x | Toy CPU 3000 | abc123def456 | 2.99 | 9.9 |" in md
    # interleaved rounds: medians, minimums and the per-round ratio from them, and the noisy mark with its reason
    assert "| busy[x] | 4 | 2.500 (1.000) | 7.500 (3.000) | - | 3.00x | - | 120% noisy |  |" in md
    assert "- noisy busy[x]: reference: interquartile range 120% of the median over 4 rounds (> 20%)" in md
    assert (tmp_path / "out" / "run.png").read_bytes()[:8] == PNG_MAGIC
    out = capsys.readouterr().out
    assert str(tmp_path / "out" / "run.md") in out and str(tmp_path / "out" / "run.png") in out


def _error_line(args: list[str]) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "bench.report", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("not json {", "not JSON"),
    ('{"machine_info": {}}', "not a pytest-benchmark JSON"),
    ('[1, 2]', "not a pytest-benchmark JSON"),
    ('{"benchmarks": [{"name": "x", "stats": {}}]}', "without any measured benchmark"),
])
def test_bad_input_is_one_line(tmp_path, content, message):
    path = tmp_path / "in.json"
    if content is not None:
        path.write_text(content)
    rc, err = _error_line([str(path)])
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("bench.report: error: ") and message in err, err


def test_unwritable_out_dir(tmp_path):
    src = tmp_path / "run.json"
    src.write_text(json.dumps(_fabricated()))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(report.ReportError, match="--out"):
        report.write(src, blocker / "sub")


TOY_CONFTEST = ("from bench.conftest import pytest_runtest_teardown, pytest_sessionfinish, "
                "pytest_terminal_summary  # noqa: F401\n")
TOY_BENCH = """
import pytest
from bench.conftest import measure

WORK = {"fused": 2_000, "reference": 20_000, "compile": 6_000}
STATE = {"inside": False}

@pytest.fixture
def inside():
    STATE["inside"] = True
    yield
    STATE["inside"] = False

def work(variant):
    assert STATE["inside"], "timed outside its test's fixtures"
    return sum(range(WORK[variant]))

@pytest.mark.parametrize("variant", list(WORK))
@pytest.mark.parametrize("size", ["small"])
def test_toy(benchmark, inside, size, variant):
    measure(benchmark, f"toy[{size}]", variant, lambda: work(variant))
"""


def _run_toy(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "test_toy.py",
                           "--benchmark-max-time=0.05", f"--benchmark-storage={tmp_path / 'storage'}", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_real_run_summary_json_compare_and_report(tmp_path):
    (tmp_path / "conftest.py").write_text(TOY_CONFTEST)  # the bench suites' hooks
    (tmp_path / "test_toy.py").write_text(textwrap.dedent(TOY_BENCH))
    first = _run_toy(tmp_path, "--benchmark-json=out.json", "--benchmark-save=first")
    assert first.returncode == 0, first.stdout + first.stderr
    data = json.loads((tmp_path / "out.json").read_text())
    rounds = {b["extra_info"]["variant"]: b["extra_info"]["interleaved_s"] for b in data["benchmarks"]}
    assert len({len(r) for r in rounds.values()}) == 1 and len(rounds["fused"]) >= 5, rounds  # aligned rounds
    for b in data["benchmarks"]:  # every result carries the environment, its rounds and the group's ratios
        info = b["extra_info"]
        assert b["group"] == "toy[small]" and b["stats"]["rounds"] > 1  # pytest-benchmark's own entry stays
        assert {"device_name", "torch", "triton", "python", "commit"} <= info.keys()
        for other in ("reference", "compile"):
            per_round = statistics.median(o / f for o, f in zip(rounds[other], rounds["fused"]))
            assert info[f"fused_vs_{other}"] == pytest.approx(per_round, abs=1e-4)
    # The printed summary shows the interleaved rounds, as the JSON has them.
    (group,) = summary.group_benchmarks(data["benchmarks"])
    (row,) = summary.rows([group])
    lines = [line for line in first.stdout.splitlines() if line.startswith("toy[small]")]
    assert lines and lines[-1].split() == " ".join(row).split(), first.stdout

    second = _run_toy(tmp_path, "--benchmark-compare")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Comparing against benchmarks from" in second.stdout + second.stderr

    assert report.main([str(tmp_path / "out.json")]) == 0
    assert "toy[small]" in (tmp_path / "out.md").read_text()


def test_chart_stays_readable_with_many_groups(tmp_path):
    """One row per group at a fixed height: 40 groups of 8 variants make a page-sized image, not a strip."""
    pytest.importorskip("matplotlib")
    from PIL import Image

    variants = ["fused", "reference", "compile", "triton", "sdpa", "flash_attn", "eager_official", "fused_op_only"]
    benchmarks = [{"group": f"op_{g}[libero,bf16,cpu]", "name": f"test_op[{v}]", "extra_info": {"variant": v},
                   "stats": {"median": 1e-3 * (1 + g) * (1 + i)}}
                  for g in range(40) for i, v in enumerate(variants)]
    report.chart({"benchmarks": benchmarks}, tmp_path / "many.png")
    width, height = Image.open(tmp_path / "many.png").size
    assert 800 <= width <= 1400 and height <= 1600  # about 30 px per row, at 100 dpi
    assert height / 40 >= 25  # and not squeezed below a readable row either
