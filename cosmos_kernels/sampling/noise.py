"""The official initial-noise draw, so that seeds reproduce the official samples."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def arch_invariant_noise(
    seed: int, shape: Sequence[int], *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Standard normal noise from numpy's `RandomState(seed)`, rounded to float32 (then cast to `dtype`).

    Host-side and independent of the GPU architecture and of torch's RNG, like the official
    `arch_invariant_rand`. Scale it by sigma_max to get the state `sample()` starts from.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must have non-negative sizes, got {shape}")
    array = np.random.RandomState(int(seed)).standard_normal(shape).astype(np.float32)
    return torch.from_numpy(array).to(dtype=dtype, device=device)
