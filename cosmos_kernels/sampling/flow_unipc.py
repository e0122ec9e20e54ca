"""Rectified-flow UniPC (order 2, bh2, data prediction) as the Cosmos-Predict2.5 models sample with it.

The network predicts the velocity `v = eps - x0` of the flow `x_sigma = (1 - sigma) x0 + sigma eps`, so
`m = x - sigma v` is its x0 prediction. With `alpha = 1 - sigma` and `lambda = ln(alpha) - ln(sigma)`, one
interval [s -> t] of the UniP predictor (B(h) = expm1(-h), h = lambda_t - lambda_s) is

    x_t = (sigma_t / sigma_s) x_s - (alpha_t B) m_s - (alpha_t B) 0.5 (m_prev - m_s) / r,

the last term only at order 2 (r = (lambda_prev - lambda_s) / h). Before each predictor (from the second
step on) the UniC corrector re-solves the previous interval with the new prediction m_s included:

    x_s <- (sigma_s / sigma_prev) x_prev - (alpha_s B) m_prev - (alpha_s B) (rho0 D + rho1 (m_s - m_prev)),

with rho from a 2x2 solve (order 2) or (0, 1/2) (order 1). The schedule is a shifted linspace of
sigma in [float32(1 - 1/T), 0), the network sees the truncated integer timestep floor(T sigma), and all
the arithmetic is float32, in the official grouping (scalar products first), so the chain reproduces the
official scheduler. Orders warm up (1, then 2) and fall back to 1 at the last step; the last step lands
on sigma = 0, where the update returns the last x0 prediction exactly.

Every coefficient depends only on (num_steps, shift), so they form a float32 table computed once (on
the sample's device, the 2x2 solve included, as the official scheduler solves it there); a step is then a
few tensor ops with no host sync. `sample_flow_unipc()` is the checked functional form,
`FlowUniPCSampler` (in `flow_unipc_sampler`) the fixed-shape, graph-capturable loop over the same step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

NET_TIMES = ("timestep", "sigma")

# Columns of the coefficient table (one row per step, float32).
SIGMA = 0  # sigma_i: m_i = x_i - sigma_i v_i
C_RATIO, C_AB, C_R, C_RHO0, C_RHO1 = 1, 2, 3, 4, 5  # corrector at step i (row 0 unused)
P_RATIO, P_AB, P_R, P_HALF = 6, 7, 8, 9  # predictor from step i to i + 1
NUM_COLUMNS = 10

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class FlowUniPCSchedule:
    """The official schedule for `num_steps` steps.

    `sigmas`: float32 `(num_steps + 1,)`, the shifted sigmas, then 0. `timesteps`: int64 `(num_steps,)`, the
    network timesteps `floor(T sigma_i)` (float64 sigma before rounding). `orders`: the predictor order of each
    step; the corrector before step i uses `orders[i - 1]`.
    """

    sigmas: torch.Tensor
    timesteps: torch.Tensor
    orders: tuple[int, ...]

    @property
    def num_steps(self) -> int:
        return len(self.orders)


def check_flow_unipc_args(num_steps: int, shift: float, num_train_timesteps: int) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int):
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not math.isfinite(shift) or shift <= 0:
        raise ValueError(f"shift must be a finite number > 0, got {shift!r}")
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be an int >= 2, got {num_train_timesteps!r}")


def flow_unipc_schedule(num_steps: int, shift: float = 5.0, *, num_train_timesteps: int = 1000) -> FlowUniPCSchedule:
    """Sigmas, network timesteps and step orders of the official `FlowUniPCMultistepScheduler.set_timesteps`.

    `s = linspace(sigma_max, 0, N + 1)[:-1]` in float64 with `sigma_max = float32(1 - 1/T)`, shifted
    `shift s / (1 + (shift - 1) s)`; timesteps are `T sigma` truncated to int64, sigmas rounded to float32 with
    a final 0. Raises ValueError where the official step-index lookup cannot run the schedule (a repeated
    first timestep) or the sigmas are not strictly decreasing in float32.
    """
    check_flow_unipc_args(num_steps, shift, num_train_timesteps)
    sigma_max = float(np.float32(1.0 - 1.0 / num_train_timesteps))  # the scheduler's training table, unshifted
    s = np.linspace(sigma_max, 0.0, num_steps + 1).copy()[:-1]
    s = shift * s / (1 + (shift - 1) * s)
    timesteps = torch.from_numpy(s * num_train_timesteps).to(torch.int64)
    sigmas = torch.from_numpy(np.concatenate([s, [0.0]]).astype(np.float32))
    if int((timesteps == timesteps[0]).sum()) > 1:
        raise ValueError(f"num_steps={num_steps} with shift={shift} repeats the first timestep {int(timesteps[0])}: "
                         "the official step-index lookup would start at the second entry and run past the schedule")
    if not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError(f"num_steps={num_steps} with shift={shift} gives float32 sigmas that are not strictly "
                         "decreasing (too many steps)")
    orders = tuple(min(2, num_steps - i, i + 1) for i in range(num_steps))
    return FlowUniPCSchedule(sigmas=sigmas, timesteps=timesteps, orders=orders)


def _lam(sigma: torch.Tensor) -> torch.Tensor:
    alpha = 1 - sigma
    return torch.log(alpha) - torch.log(sigma)  # +inf at sigma = 0


def _bh2_terms(lam_to: torch.Tensor, lam_from: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(h, B, b1, b2) of one interval, in float32 0-dim tensors, in the official order of operations."""
    h = lam_to - lam_from
    hh = -h
    big_b = torch.expm1(hh)
    h_phi_k = big_b / hh - 1
    b1 = h_phi_k * 1 / big_b
    h_phi_k = h_phi_k / hh - 1 / 2
    b2 = h_phi_k * 2 / big_b
    return h, big_b, b1, b2


def flow_unipc_coefficients(schedule: FlowUniPCSchedule, device: torch.device | str | None = None) -> torch.Tensor:
    """The float32 `(num_steps, NUM_COLUMNS)` coefficient table of `schedule`, on `device`.

    Scalars are float32 0-dim CPU tensors as in the official scheduler; the corrector's 2x2 system is solved
    on `device` (where the official scheduler solves it: the sample's device).
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    sig = [schedule.sigmas[j] for j in range(schedule.num_steps + 1)]
    lam = [_lam(s) for s in sig]
    rows = []
    for i, order in enumerate(schedule.orders):
        row = [torch.zeros((), dtype=torch.float32) for _ in range(NUM_COLUMNS)]
        row[SIGMA] = sig[i]
        row[C_R] = row[P_R] = torch.ones((), dtype=torch.float32)
        if i > 0:
            h, big_b, b1, b2 = _bh2_terms(lam[i], lam[i - 1])
            row[C_RATIO] = sig[i] / sig[i - 1]
            row[C_AB] = (1 - sig[i]) * big_b
            if schedule.orders[i - 1] == 1:
                row[C_RHO1] = torch.tensor(0.5, dtype=torch.float32)
            else:
                r = (lam[i - 2] - lam[i - 1]) / h
                system = torch.tensor([[1.0, 1.0], [r.item(), 1.0]], dtype=torch.float32, device=device)
                rhs = torch.tensor([b1.item(), b2.item()], dtype=torch.float32, device=device)
                rho = torch.linalg.solve(system, rhs).cpu()
                row[C_R], row[C_RHO0], row[C_RHO1] = r, rho[0], rho[1]
        h, big_b, _, _ = _bh2_terms(lam[i + 1], lam[i])
        row[P_RATIO] = sig[i + 1] / sig[i]
        row[P_AB] = (1 - sig[i + 1]) * big_b
        if order == 2:
            row[P_R] = (lam[i - 1] - lam[i]) / h
            row[P_HALF] = torch.tensor(0.5, dtype=torch.float32)
        rows.append(torch.stack(row))
    return torch.stack(rows).to(device)


def flow_unipc_step(
    k: int,
    v: torch.Tensor,
    x: torch.Tensor,
    x_prev: torch.Tensor,
    m_prev: torch.Tensor,
    m_prev2: torch.Tensor,
    row: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One scheduler step k from the network output `v` at the (uncorrected) state `x`.

    `x_prev`, `m_prev`, `m_prev2`: the corrected state and the x0 predictions of the steps before (any finite
    values at k = 0 / 1, where their coefficients are 0). `row`: the step's table row (device tensor).
    Returns (next state, x0 prediction m_k, corrected state x_k); a few tensor ops, no host sync.
    """
    c = row.unbind()
    m = x - c[SIGMA] * v
    if k > 0:  # UniC: re-solve the last interval with m_k
        d = (m_prev2 - m_prev) / c[C_R]
        x = (c[C_RATIO] * x_prev - c[C_AB] * m_prev) - c[C_AB] * (c[C_RHO0] * d + c[C_RHO1] * (m - m_prev))
    d = (m_prev - m) / c[P_R]
    x_next = (c[P_RATIO] * x - c[P_AB] * m) - c[P_AB] * (c[P_HALF] * d)
    return x_next, m, x


def net_times(schedule: FlowUniPCSchedule, net_time: str) -> torch.Tensor:
    """float32 `(num_steps,)`: what the network is conditioned on at each step (integer timesteps or sigmas)."""
    if net_time not in NET_TIMES:
        raise ValueError(f"net_time must be one of {NET_TIMES}, got {net_time!r}")
    if net_time == "timestep":
        return schedule.timesteps.to(torch.float32)
    return schedule.sigmas[:-1].clone()


def check_net_output(name: str, v: object, shape: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(v, torch.Tensor) or not v.is_floating_point():
        raise TypeError(f"{name} must return a floating-point torch.Tensor, got {getattr(v, 'dtype', type(v))}")
    if tuple(v.shape) != shape:
        raise ValueError(f"{name} returned shape {tuple(v.shape)}, expected {shape} (x's shape)")
    return v if v.dtype == torch.float32 else v.float()


def sample_flow_unipc(
    denoise: DenoiseFn,
    noise: torch.Tensor,
    num_steps: int,
    shift: float = 5.0,
    *,
    num_train_timesteps: int = 1000,
    net_time: str = "timestep",
) -> torch.Tensor:
    """Sample with the official rectified-flow UniPC from `noise` (float32, batch first, NOT scaled by sigma_max).

    `denoise(x, t)` is called once per step, `num_steps` times, with the float32 state `x` (noise's shape) and
    `t`, a float32 `(B,)` tensor on x's device: the network timestep `floor(1000 sigma_i)` as a float (999.0, ...)
    for `net_time="timestep"` (the network scales it, x0.001 for Cosmos-Predict2.5), or sigma_i for
    `net_time="sigma"`. It returns the velocity `eps - x0` (any float dtype, converted to float32). The
    result, float32, is the x0 prediction of the last step (the sample at sigma = 0). Each batch sample is
    stepped from its own state (the official pipeline steps sample 0 only; it runs with B = 1).
    """
    if not callable(denoise):
        raise TypeError(f"denoise must be callable, got {type(denoise).__name__}")
    if not isinstance(noise, torch.Tensor) or noise.dtype != torch.float32:
        raise TypeError(f"noise must be a float32 torch.Tensor, got {getattr(noise, 'dtype', type(noise))}")
    if noise.dim() < 1 or noise.shape[0] < 1:
        raise ValueError(f"noise must have a non-empty batch dimension, got shape {tuple(noise.shape)}")
    schedule = flow_unipc_schedule(num_steps, shift, num_train_timesteps=num_train_timesteps)
    times = net_times(schedule, net_time).to(noise.device)
    table = flow_unipc_coefficients(schedule, noise.device)
    shape, batch = tuple(noise.shape), noise.shape[0]
    x = noise
    x_prev = m_prev = m_prev2 = torch.zeros_like(noise)
    for k in range(num_steps):
        v = check_net_output("denoise", denoise(x, times[k].expand(batch)), shape)
        x_next, m, x_c = flow_unipc_step(k, v, x, x_prev, m_prev, m_prev2, table[k])
        x, x_prev, m_prev, m_prev2 = x_next, x_c, m, m_prev
    return x
