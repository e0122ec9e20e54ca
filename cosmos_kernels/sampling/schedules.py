"""Noise-level (sigma) schedules for EDM / rectified-flow samplers, chosen by name.

Every schedule returns `num_intervals + 1` float64 sigmas, decreasing from `sigma_max` to `sigma_min`
(both included). `karras` reproduces the official Cosmos timestamps operation for operation, so its
first and last entries are `(sigma ** (1 / rho)) ** rho`, which can differ from `sigma` in the last bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def karras(num_intervals: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """EDM (Karras et al. 2022): uniform in `sigma ** (1 / rho)`; rho = 7 spends the steps at low noise."""
    i = torch.arange(num_intervals + 1, dtype=torch.float64)
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (hi + i / num_intervals * (lo - hi)) ** rho


def exponential(num_intervals: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Uniform in log sigma (the natural grid of exponential integrators); `rho` is unused."""
    return torch.linspace(math.log(sigma_max), math.log(sigma_min), num_intervals + 1, dtype=torch.float64).exp()


def polyexponential(num_intervals: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Log sigma follows `(1 - i/n) ** rho` (rho = 1 is `exponential`; larger rho spends steps at low noise)."""
    ramp = torch.linspace(1.0, 0.0, num_intervals + 1, dtype=torch.float64) ** rho
    return (ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)).exp()


def linear(num_intervals: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Uniform in sigma; `rho` is unused."""
    return torch.linspace(sigma_max, sigma_min, num_intervals + 1, dtype=torch.float64)


def flow(num_intervals: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Uniform in the rectified-flow time `t = sigma / (1 + sigma)`; `rho` is unused."""
    t_hi, t_lo = sigma_max / (1 + sigma_max), sigma_min / (1 + sigma_min)
    t = torch.linspace(t_hi, t_lo, num_intervals + 1, dtype=torch.float64)
    return t / (1 - t)


SCHEDULES: dict[str, Callable[..., torch.Tensor]] = {
    "karras": karras,
    "exponential": exponential,
    "polyexponential": polyexponential,
    "linear": linear,
    "flow": flow,
}


def get_sigmas(name: str, num_intervals: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """`num_intervals + 1` float64 sigmas of the schedule `name`, from `sigma_max` down to `sigma_min`."""
    if name not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {name!r}")
    if not isinstance(num_intervals, int) or num_intervals < 1:
        raise ValueError(f"num_intervals must be an int >= 1, got {num_intervals!r}")
    check_sigma_range(sigma_min, sigma_max, rho)
    return SCHEDULES[name](num_intervals, float(sigma_min), float(sigma_max), float(rho))


def check_sigma_range(sigma_min: float, sigma_max: float, rho: float) -> None:
    for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max), ("rho", rho)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if sigma_min <= 0:
        raise ValueError(f"sigma_min must be > 0, got {sigma_min}")
    if sigma_min >= sigma_max:
        raise ValueError(f"sigma_min must be < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if rho <= 0:
        raise ValueError(f"rho must be > 0, got {rho}")
