"""The official seed rule: the k-th query of an episode uses `seed + k` (spec 4.5, 4.8).

The official LIBERO evaluation seeds query `k` (counted from 0 since the episode began) with `cfg.seed + k`
(published runs use 195, 196, 197). `SeedCounter` hands out those values; explicit seeds bypass it.
"""

from __future__ import annotations

import numpy as np

SEED_LIMIT = 2**32


def check_seed(seed, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < SEED_LIMIT:
        raise ValueError(f"{name}: expected an int in [0, 2**32), got {seed!r}")
    return int(seed)


class SeedCounter:
    """`base + k` for the k-th value taken since creation or `reset()` (wrapping at 2**32)."""

    def __init__(self, base: int = 0) -> None:
        self.base = check_seed(base)
        self.index = 0

    @property
    def next(self) -> int:
        """The value the next query gets (nothing moves)."""
        return (self.base + self.index) % SEED_LIMIT

    def take(self, count: int = 1) -> list[int]:
        seeds = [(self.base + self.index + i) % SEED_LIMIT for i in range(count)]
        self.index += count
        return seeds

    def reset(self, base: int | None = None) -> None:
        if base is not None:
            self.base = check_seed(base)
        self.index = 0
