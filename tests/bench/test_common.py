"""`bench.common.interleaved_rounds`: every round runs every variant once, in a rotating order."""

from __future__ import annotations

import pytest

from bench.common import interleaved_rounds


def _recorder(names):
    calls: list[str] = []
    return calls, {name: (lambda name=name: calls.append(name)) for name in names}


def test_rounds_interleave_and_rotate():
    calls, fns = _recorder(["fused", "reference", "compile"])
    times = interleaved_rounds(fns, min_rounds=4, max_rounds=4, budget_s=10.0)
    assert {name: len(t) for name, t in times.items()} == {"fused": 4, "reference": 4, "compile": 4}
    rounds = [calls[i:i + 3] for i in range(0, len(calls), 3)]
    assert rounds == [["fused", "reference", "compile"], ["reference", "compile", "fused"],
                      ["compile", "fused", "reference"], ["fused", "reference", "compile"]]
    assert all(t >= 0 for ts in times.values() for t in ts)


def test_the_budget_and_the_bounds_decide_the_count():
    calls, fns = _recorder(["a", "b"])
    assert len(interleaved_rounds(fns, min_rounds=3, max_rounds=50, budget_s=0.0)["a"]) == 3
    assert len(interleaved_rounds(fns, min_rounds=3, max_rounds=7, budget_s=60.0)["b"]) == 7


@pytest.mark.parametrize("kwargs, message", [
    (dict(min_rounds=0), "min_rounds"), (dict(min_rounds=5, max_rounds=4), "max_rounds")])
def test_bad_bounds(kwargs, message):
    with pytest.raises(ValueError, match=message):
        interleaved_rounds({"a": lambda: None}, **kwargs)
    with pytest.raises(ValueError, match="calls"):
        interleaved_rounds({})
