"""Episode results: one JSON line per finished episode (`episodes.jsonl`, appended and synced as each finishes),
resuming from them, success rates with 95 % Wilson intervals, and the summary (`summary.json` and a terminal table).

`run.json` records what decides an episode's outcome (suite, seed, step limit, checkpoint...); resuming into a folder
that holds episodes made with other settings is refused, so one file never mixes two evaluations. The folder is
claimed (created, `run.json` written) only when the first episode starts: a run that fails while starting up leaves
nothing behind, and a folder that holds no episode yet takes the settings of the next run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..errors import CorruptFileError, UsageError

EPISODES = "episodes.jsonl"
SUMMARY = "summary.json"
RUN = "run.json"
SCHEMA = "cosmos-policy-eval/1"
Z95 = 1.959963984540054  # two-sided 95 % normal quantile
RECORD_KEYS = ("task_id", "trial", "success", "steps", "seed", "task")


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion ((0, 1) when there are no trials)."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


class ResultStore:
    """The `--out` folder: run.json, episodes.jsonl (the record of truth) and summary.json."""

    def __init__(self, out: Path, run: Mapping):
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise UsageError(f"--out {self.out}: not a directory")
        self.run = dict(run)
        self.episodes_path = self.out / EPISODES
        self.summary_path = self.out / SUMMARY
        self.run_path = self.out / RUN
        self._records = self._load()
        previous = self._previous_run()
        differ = sorted(k for k in self.run if previous is not None and previous.get(k) != self.run[k])
        if differ and self._records:
            shown = ", ".join(f"{k} {previous.get(k)!r} -> {self.run[k]!r}" for k in differ)
            raise UsageError(f"--out {self.out}: holds episodes of an evaluation with other settings ({shown}); "
                             "use another --out to start a new one")
        self._claimed = previous is not None and not differ

    def _previous_run(self) -> dict | None:
        if not self.run_path.exists():
            return None
        try:
            previous = json.loads(self.run_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CorruptFileError(f"{self.run_path}: not JSON ({err})") from None
        if not isinstance(previous, dict):
            raise CorruptFileError(f"{self.run_path}: not a JSON object")
        return previous

    def claim(self) -> None:
        """Create the folder and record this run's settings in run.json (called as the first episode starts)."""
        if self._claimed:
            return
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            _write_atomic(self.run_path, json.dumps(self.run, indent=2) + "\n")
        except OSError as err:
            raise UsageError(f"--out {self.out}: cannot write there ({err.strerror or err})") from None
        self._claimed = True

    def _load(self) -> dict[tuple[int, int], dict]:
        """Finished episodes by (task_id, trial). A last line cut short by an interruption is dropped (that episode
        runs again); a bad line anywhere else means the file is not ours to append to."""
        records: dict[tuple[int, int], dict] = {}
        if not self.episodes_path.exists():
            return records
        data = self.episodes_path.read_bytes()
        if data and not data.endswith(b"\n"):  # torn final write: cut it so the next line starts clean
            data = data[: data.rfind(b"\n") + 1]
            with open(self.episodes_path, "r+b") as f:
                f.truncate(len(data))
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key = (int(record["task_id"]), int(record["trial"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise CorruptFileError(f"{self.episodes_path}:{number}: not an episode record") from None
            records[key] = record
        return records

    @property
    def records(self) -> list[dict]:
        return list(self._records.values())

    def done(self, task_id: int, trial: int) -> bool:
        return (task_id, trial) in self._records

    def append(self, record: Mapping) -> None:
        missing = [k for k in RECORD_KEYS if k not in record]
        if missing:
            raise ValueError(f"episode record lacks {missing}")
        line = json.dumps(dict(record), sort_keys=True) + "\n"
        with open(self.episodes_path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self._records[(int(record["task_id"]), int(record["trial"]))] = dict(record)

    def write_summary(self, summary: Mapping) -> Path:
        self.claim()
        _write_atomic(self.summary_path, json.dumps(summary, indent=2) + "\n")
        return self.summary_path


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _rate(successes: int, n: int) -> dict:
    lo, hi = wilson_interval(successes, n)
    return {"episodes": n, "successes": successes, "success_rate": successes / n if n else None,
            "wilson95": [lo, hi]}


def summarize(records: Iterable[Mapping], tasks: Mapping[int, str], meta: Mapping) -> dict:
    """Per task and for the whole suite: episodes, successes, success rate and its 95 % Wilson interval.

    `tasks` maps the evaluated task ids to their instructions (tasks without episodes yet show 0 episodes)."""
    by_task: dict[int, list[Mapping]] = {t: [] for t in tasks}
    for record in records:
        by_task.setdefault(int(record["task_id"]), []).append(record)
    per_task = []
    for task_id in sorted(by_task):
        rows = by_task[task_id]
        entry = {"task_id": task_id, "task": tasks.get(task_id, rows[0]["task"] if rows else "")}
        entry.update(_rate(sum(bool(r["success"]) for r in rows), len(rows)))
        entry["failed_with_error"] = sum(1 for r in rows if r.get("reason"))
        per_task.append(entry)
    total = sum(t["episodes"] for t in per_task)
    successes = sum(t["successes"] for t in per_task)
    return {"schema": SCHEMA, **meta, "suite_result": _rate(successes, total), "tasks": per_task}


def format_summary(summary: Mapping) -> str:
    """The summary as a plain-text table for the terminal."""
    lines = [f"{'task':>4}  {'success':>9}  {'rate':>6}  {'95% Wilson':>15}  instruction"]
    for t in summary["tasks"]:
        lines.append(_row(str(t["task_id"]), t) + f"  {t['task']}")
    lines.append(_row("all", summary["suite_result"]) + f"  {summary.get('suite', '')}")
    return "\n".join(lines)


def _row(name: str, entry: Mapping) -> str:
    rate = entry["success_rate"]
    lo, hi = entry["wilson95"]
    shown = f"{100 * rate:5.1f}%" if rate is not None else "    -"
    return f"{name:>4}  {entry['successes']:>4}/{entry['episodes']:<4}  {shown:>6}  [{100 * lo:5.1f}, {100 * hi:5.1f}]%"
