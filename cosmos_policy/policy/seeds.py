"""The seed rule of action queries.

The official LIBERO evaluation and ALOHA deployment seed every action query of a run with `cfg.seed` (published
runs: 195, 196 or 197, one per run); the `query_idx` of their `cfg.seed + query_idx` counts the N candidates of a
best-of-N search within one chunk (`num_queries_best_of_n`, 1 by default), not the chunks of an episode. So the
default step is 0: the k-th query uses `seed + 0 * k`, and a plan's candidate i uses `base + i`. `step=1` gives a
different seed to every query of an episode (`seed + k`, k counted since `reset()`), which the official code never
does. Explicit seeds bypass the rule.
"""

from __future__ import annotations

import numpy as np

SEED_LIMIT = 2**32


def check_seed(seed, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < SEED_LIMIT:
        raise ValueError(f"{name}: expected an int in [0, 2**32), got {seed!r}")
    return int(seed)


class SeedCounter:
    """`base + step * k` for the k-th value taken since creation or `reset()` (wrapping at 2**32)."""

    def __init__(self, base: int = 0, step: int = 0) -> None:
        self.base = check_seed(base)
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"seed_step: expected an int >= 0, got {step!r}")
        self.step = int(step)
        self.index = 0

    @property
    def next(self) -> int:
        """The value the next query gets (nothing moves)."""
        return (self.base + self.step * self.index) % SEED_LIMIT

    def take(self, count: int = 1) -> list[int]:
        seeds = [(self.base + self.step * (self.index + i)) % SEED_LIMIT for i in range(count)]
        self.index += count
        return seeds

    def reset(self, base: int | None = None) -> None:
        if base is not None:
            self.base = check_seed(base)
        self.index = 0
