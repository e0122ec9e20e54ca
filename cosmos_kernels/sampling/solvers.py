"""Few-step ODE solvers in x0 (data-prediction) form, and the functional `sample()`.

The probability-flow ODE of an EDM-parametrised model, written with lambda = -log(sigma), is
`dx/dlambda = x0(x, sigma) - x`. Its exact solution over one interval [s -> t] (h = lambda_t - lambda_s) is

    x_t = (sigma_t / sigma_s) x_s + integral_0^h exp(-(h - u)) x0(lambda_s + u) du,

and the multistep solvers here integrate a polynomial through the latest x0 predictions exactly
(exponential Adams-Bashforth: "2ab" is the official Cosmos solver, "3ab" its third-order sibling;
"dpmpp_2m" is DPM-Solver++(2M)'s midpoint-style variant). Every multistep update is linear,

    x_{k+1} = a_k x_k + b0_k x0_k + b1_k x0_{k-1} + b2_k x0_{k-2},

so a schedule's coefficients are computed once, in float64, as a `(passes - 1, 4)` table that the fused
step of `Sampler` and `sample()` consume. `sample()` runs "2ab" in the official grouping instead,
`exp(-dt) x + dt (b1 x0 + b2 x0_prev)` with per-sample coefficients from torch's float64 ops, so it is
bit-for-bit the official chain.

Cost rule: `num_steps` is the total number of network passes, the final clean x0 prediction at
sigma_min included. Multistep solvers run `num_steps - 1` intervals; Heun spends two passes per interval
(one when the budget is odd: its last interval is then an Euler step). `num_steps = 1` is a single
prediction at sigma_max. "2ab" also maps `num_steps = 2` to that single prediction, as the official
sampler does (its step-count rule; 1 and 2 passes give the same sample there).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cosmos_kernels.sampling.schedules import check_sigma_range, get_sigmas

SOLVERS = ("euler", "heun", "2ab", "dpmpp_2m", "3ab")
MULTISTEP_SOLVERS = ("euler", "2ab", "dpmpp_2m", "3ab")


# -- phi functions of exponential integrators ------------------------------------------------------------

def phi(k: int, z: float) -> float:
    """phi_k(z) = sum_j z**j / (j + k)!  (phi_0 = exp, phi_1 = expm1(z)/z, phi_{k+1} = (phi_k - 1/k!) / z)."""
    if abs(z) < 0.5:  # the recurrence cancels catastrophically near 0; the series converges fast there
        term, total = 1.0 / math.factorial(k), 0.0
        for j in range(40):
            total += term
            term *= z / (j + k + 1)
            if abs(term) < 1e-18 * abs(total):
                break
        return total + term
    value = math.exp(z)
    for j in range(k):
        value = (value - 1.0 / math.factorial(j)) / z
    return value


def _exp_ab_weights(lambdas: list[float], lam_s: float, lam_t: float) -> list[float]:
    """Weights of x0 at `lambdas` (newest first, lambdas[0] == lam_s) in the exponential AB update.

    integral_0^h exp(-(h-u)) P(u) du for the Lagrange polynomial P through the points, using
    integral_0^h exp(-(h-u)) u**m du = m! h**(m+1) phi_{m+1}(-h).
    """
    h = lam_t - lam_s
    nodes = [lam - lam_s for lam in lambdas]
    moments = [math.factorial(m) * h ** (m + 1) * phi(m + 1, -h) for m in range(len(nodes))]
    weights = []
    for j, uj in enumerate(nodes):
        poly = [1.0]  # coefficients of prod_{m != j} (u - u_m) / (u_j - u_m), lowest power first
        for m, um in enumerate(nodes):
            if m == j:
                continue
            scale = uj - um
            poly = [(c_lo - um * c) / scale for c, c_lo in zip(poly + [0.0], [0.0] + poly)]
        weights.append(sum(c * mom for c, mom in zip(poly, moments)))
    return weights


# -- per-interval coefficients -------------------------------------------------------------------------

def _euler(s: float, t: float) -> tuple[float, ...]:
    # The official first step: x_t = ((s - t) / s) x0 + (t / s) x.
    return t / s, (s - t) / s, 0.0, 0.0


def official_2ab_terms(
    s: torch.Tensor, t: torch.Tensor, s_prev: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(exp(-dt), dt, b1, b2)` of the official `res_x0_rk2_step`: torch float64 ops in its order.

    The update is then `exp(-dt) x + dt (b1 x0 + b2 x0_prev)`. torch's float64 `expm1` differs from
    `math.expm1` in the last bit for some steps, so the official tensor ops are used, not Python floats.
    """
    lam_s, lam_t, lam_prev = -torch.log(s), -torch.log(t), -torch.log(s_prev)
    dt = lam_t - lam_s
    c2 = (lam_prev - lam_s) / dt
    phi1 = torch.expm1(-dt) / -dt
    phi2 = (phi1 - 1.0) / -dt
    b1 = phi1 - 1.0 / c2 * phi2
    b2 = 1.0 / c2 * phi2
    return torch.exp(-dt), dt, b1, b2


def _official_2ab(s: float, t: float, s_prev: float) -> tuple[float, ...]:
    """`res_x0_rk2_step` as one linear row; dt folded into b1, b2 (the fused step's form)."""
    decay, dt, b1, b2 = official_2ab_terms(*(torch.tensor(v, dtype=torch.float64) for v in (s, t, s_prev)))
    return float(decay), float(dt * b1), float(dt * b2), 0.0


def _dpmpp_2m(s: float, t: float, s_prev: float) -> tuple[float, ...]:
    h = math.log(s) - math.log(t)
    r = (math.log(s_prev) - math.log(s)) / h
    em = -math.expm1(-h)
    return t / s, em * (1 + 1 / (2 * r)), -em / (2 * r), 0.0


def _exp_ab(order: int, sigmas: list[float], i: int) -> tuple[float, ...]:
    """Exponential Adams-Bashforth of `order` over interval i, using passes i, i-1, ... (newest first)."""
    lambdas = [-math.log(sigmas[i - j]) for j in range(order)]
    w = _exp_ab_weights(lambdas, lambdas[0], -math.log(sigmas[i + 1]))
    return (sigmas[i + 1] / sigmas[i], *w, *([0.0] * (3 - order)))


def multistep_coefficients(solver: str, sigmas: torch.Tensor) -> torch.Tensor:
    """float64 `(len(sigmas) - 1, 4)` table of `(a, b0, b1, b2)` for the intervals of `sigmas`."""
    if solver not in MULTISTEP_SOLVERS:
        raise ValueError(f"solver must be one of {MULTISTEP_SOLVERS} for a coefficient table, got {solver!r}")
    sig = [float(v) for v in sigmas.tolist()]
    rows = []
    for i in range(len(sig) - 1):
        s, t = sig[i], sig[i + 1]
        if i == 0 or solver == "euler":
            rows.append(_euler(s, t))
        elif solver == "2ab":
            rows.append(_official_2ab(s, t, sig[i - 1]))
        elif solver == "dpmpp_2m":
            rows.append(_dpmpp_2m(s, t, sig[i - 1]))
        else:  # 3ab: warm-up at order 2 on its second interval
            rows.append(_exp_ab(min(3, i + 1), sig, i))
    return torch.tensor(rows, dtype=torch.float64).reshape(len(rows), 4)


@dataclass(frozen=True)
class MultistepPlan:
    """Network passes of a multistep solve: `sigmas[k]` is the noise level of pass k (the last one is the
    clean prediction whose x0 is the sample); `coeffs[k]` updates the state after pass k."""

    sigmas: torch.Tensor  # float64 (passes,)
    coeffs: torch.Tensor  # float64 (passes - 1, 4)

    @property
    def num_passes(self) -> int:
        return self.sigmas.numel()


def check_solver(solver: str, *, allowed: tuple[str, ...] = SOLVERS) -> None:
    if solver not in allowed:
        raise ValueError(f"solver must be one of {allowed}, got {solver!r}")


def check_num_steps(num_steps: int) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int):
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")


def multistep_plan(
    solver: str, num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0, schedule: str = "karras"
) -> MultistepPlan:
    """The passes and the coefficient table of a multistep solver under the cost rule of this module."""
    check_solver(solver, allowed=MULTISTEP_SOLVERS)
    check_num_steps(num_steps)
    check_sigma_range(sigma_min, sigma_max, rho)
    if num_steps == 1 or (solver == "2ab" and num_steps == 2):
        sigmas = get_sigmas(schedule, 1, sigma_min, sigma_max, rho)[:1]
        return MultistepPlan(sigmas, torch.zeros(0, 4, dtype=torch.float64))
    sigmas = get_sigmas(schedule, num_steps - 1, sigma_min, sigma_max, rho)
    return MultistepPlan(sigmas, multistep_coefficients(solver, sigmas))


# -- the functional sampler ------------------------------------------------------------------------------

X0Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sample(
    x0_fn: X0Fn,
    noise: torch.Tensor,
    *,
    num_steps: int,
    sigma_min: float,
    sigma_max: float,
    rho: float = 7.0,
    solver: str = "2ab",
    schedule: str = "karras",
) -> torch.Tensor:
    """Solve the probability-flow ODE from `noise` (the state at sigma_max, already scaled) and return x0.

    `x0_fn(x, sigma)` receives `x` with `noise`'s shape, dtype and device, and `sigma` of shape `(B,)`
    (B = noise.shape[0]) in `noise`'s dtype; it returns the x0 (clean data) prediction of x's shape.
    The solver state and arithmetic are float64 (x0_fn's output is promoted, its input rounded to noise's
    dtype), as in the official sampler; the result has noise's dtype.

    `num_steps` counts network passes including the final clean prediction at sigma_min (see the module
    docstring). With `solver="2ab", schedule="karras"` this is the official Cosmos Policy sampler
    (`CosmosPolicySampler`, S_churn = 0), including its step-count rule.
    """
    if not callable(x0_fn):
        raise TypeError(f"x0_fn must be callable, got {type(x0_fn).__name__}")
    check_num_steps(num_steps)
    check_sigma_range(sigma_min, sigma_max, rho)
    check_solver(solver)
    if not isinstance(noise, torch.Tensor) or not noise.is_floating_point():
        raise TypeError(f"noise must be a floating-point torch.Tensor, got {getattr(noise, 'dtype', type(noise))}")
    if noise.dim() < 1 or noise.shape[0] < 1:
        raise ValueError(f"noise must have a non-empty batch dimension, got shape {tuple(noise.shape)}")
    if not bool(torch.isfinite(noise).all()):
        raise ValueError("noise has non-finite values (NaN or inf)")
    get_sigmas(schedule, 1, sigma_min, sigma_max, rho)  # validates the schedule name

    in_dtype, batch = noise.dtype, noise.shape[0]

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        sigma_b = torch.full((batch,), sigma, dtype=torch.float64, device=noise.device).to(in_dtype)
        x0 = x0_fn(x.to(in_dtype), sigma_b)
        if not isinstance(x0, torch.Tensor):
            raise TypeError(f"x0_fn must return a torch.Tensor, got {type(x0).__name__}")
        if x0.shape != noise.shape:
            raise ValueError(f"x0_fn returned shape {tuple(x0.shape)}, expected {tuple(noise.shape)} (noise's shape)")
        return x0.to(torch.float64)

    x = noise.to(torch.float64)
    if solver == "heun":
        return _heun(denoise, x, num_steps, sigma_min, sigma_max, rho, schedule).to(in_dtype)

    plan = multistep_plan(solver, num_steps, sigma_min, sigma_max, rho, schedule)
    sigmas, coeffs = plan.sigmas.tolist(), plan.coeffs.tolist()
    history: list[torch.Tensor] = []  # newest last
    for k, sigma in enumerate(sigmas):
        x0 = denoise(x, sigma)
        if k == len(sigmas) - 1:
            return x0.to(in_dtype)
        if solver == "2ab":
            x = _official_2ab_update(x, x0, history[-1] if history else None, sigmas, k)
            history.append(x0)
            continue
        a, *b = coeffs[k]
        terms = [x0, *reversed(history[-2:])]
        x = a * x
        for weight, term in zip(b, terms):
            if weight != 0.0:
                x = x + weight * term
        history.append(x0)
    raise AssertionError("unreachable")


def _official_2ab_update(x: torch.Tensor, x0: torch.Tensor, x0_prev: torch.Tensor | None, sigmas: list[float],
                         k: int) -> torch.Tensor:
    """One official 2ab update after pass k: per-sample float64 coefficients on x's device, grouped as the
    official `reg_x0_euler_step` / `res_x0_rk2_step` group them (bit-for-bit with that chain)."""
    ones = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
    view = (-1,) + (1,) * (x.dim() - 1)
    s, t = sigmas[k] * ones, sigmas[k + 1] * ones
    if x0_prev is None:  # the first interval: x0 Euler
        return ((s - t) / s).view(view) * x0 + (t / s).view(view) * x
    decay, dt, b1, b2 = official_2ab_terms(s, t, sigmas[k - 1] * ones)
    return decay.view(view) * x + dt.view(view) * (b1.view(view) * x0 + b2.view(view) * x0_prev)


def _heun(denoise, x: torch.Tensor, num_steps: int, sigma_min: float, sigma_max: float, rho: float,
          schedule: str) -> torch.Tensor:
    """EDM's Heun (2nd-order trapezoid in sigma); an odd pass budget makes its last interval an Euler step."""
    if num_steps == 1:
        return denoise(x, float(get_sigmas(schedule, 1, sigma_min, sigma_max, rho)[0]))
    budget = num_steps - 1
    intervals = (budget + 1) // 2
    sigmas = get_sigmas(schedule, intervals, sigma_min, sigma_max, rho).tolist()
    for i in range(intervals):
        s, t = sigmas[i], sigmas[i + 1]
        d = (x - denoise(x, s)) / s
        x_euler = x + (t - s) * d
        if i == intervals - 1 and budget % 2 == 1:
            x = x_euler
            continue
        d_next = (x_euler - denoise(x_euler, t)) / t
        x = x + (t - s) * 0.5 * (d + d_next)
    return denoise(x, sigmas[-1])
