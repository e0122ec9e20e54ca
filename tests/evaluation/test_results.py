"""episodes.jsonl, resuming, Wilson intervals and the summary (no simulator needed)."""

from __future__ import annotations

import json
import math

import pytest

from cosmos_policy.errors import CorruptFileError, UsageError
from cosmos_policy.evaluation.results import ResultStore, format_summary, summarize, wilson_interval

RUN = {"suite": "libero_10", "seed": 195, "max_steps": 48}


def record(task_id, trial, success=False, steps=48):
    return {"task_id": task_id, "trial": trial, "success": success, "steps": steps, "seed": 195, "task": f"t{task_id}"}


def test_wilson_interval_known_values():
    # 0 of 2: the upper end is z^2 / (n + z^2)
    z2 = 1.959963984540054 ** 2
    lo, hi = wilson_interval(0, 2)
    assert lo == 0.0 and hi == pytest.approx(z2 / (2 + z2))
    # 5 of 10 is symmetric around 0.5; published value [0.2366, 0.7634]
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.23659, abs=1e-4) and hi == pytest.approx(0.76341, abs=1e-4)
    # 49 of 50 (a typical LIBERO task)
    lo, hi = wilson_interval(49, 50)
    assert lo == pytest.approx(0.8950, abs=1e-3) and hi == pytest.approx(0.9965, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_append_resume_and_torn_last_line(tmp_path):
    store = ResultStore(tmp_path, RUN)
    store.append(record(0, 0, True, 30))
    store.append(record(0, 1))
    with open(store.episodes_path, "a") as f:
        f.write('{"task_id": 0, "trial": 2, "succ')  # an interrupted write
    again = ResultStore(tmp_path, RUN)
    assert again.done(0, 0) and again.done(0, 1) and not again.done(0, 2)
    again.append(record(0, 2))
    lines = store.episodes_path.read_text().splitlines()
    assert [json.loads(line)["trial"] for line in lines] == [0, 1, 2]  # the torn fragment is gone


def test_other_settings_are_refused(tmp_path):
    store = ResultStore(tmp_path, RUN)
    store.claim()
    store.append(record(0, 0))
    with pytest.raises(UsageError, match="seed 195 -> 196"):
        ResultStore(tmp_path, {**RUN, "seed": 196})


def test_the_folder_is_claimed_only_when_an_episode_starts(tmp_path):
    out = tmp_path / "out"
    store = ResultStore(out, RUN)
    assert not out.exists()  # opening the store (a run that then fails to start) leaves nothing behind
    store.claim()
    assert json.loads((out / "run.json").read_text()) == RUN
    # a folder that holds no episode takes the settings of the next run
    other = {**RUN, "seed": 196}
    again = ResultStore(out, other)
    assert json.loads((out / "run.json").read_text()) == RUN  # not yet: only when its first episode starts
    again.claim()
    assert json.loads((out / "run.json").read_text()) == other
    again.append(record(0, 0))
    with pytest.raises(UsageError, match="holds episodes"):
        ResultStore(out, RUN)


def test_corrupt_line_in_the_middle(tmp_path):
    (tmp_path / "episodes.jsonl").write_text("not json\n" + json.dumps(record(0, 0)) + "\n")
    with pytest.raises(CorruptFileError, match="episodes.jsonl:1"):
        ResultStore(tmp_path, RUN)


def test_record_needs_the_keys(tmp_path):
    with pytest.raises(ValueError, match="success"):
        ResultStore(tmp_path, RUN).append({"task_id": 0, "trial": 0})


def test_summary_per_task_and_suite():
    records = [record(0, 0, True), record(0, 1, True), record(0, 2), record(3, 0)]
    summary = summarize(records, {0: "t0", 3: "t3", 5: "t5"}, {"suite": "libero_10"})
    tasks = {t["task_id"]: t for t in summary["tasks"]}
    assert tasks[0]["successes"] == 2 and tasks[0]["episodes"] == 3
    assert math.isclose(tasks[0]["success_rate"], 2 / 3)
    assert tasks[0]["wilson95"] == list(wilson_interval(2, 3))
    assert tasks[5]["episodes"] == 0 and tasks[5]["success_rate"] is None
    assert summary["suite_result"]["episodes"] == 4 and summary["suite_result"]["successes"] == 2
    text = format_summary(summary)
    assert "2/3" in text and "2/4" in text and "50.0%" in text
