"""`sample()`: float64 parity with the official Cosmos Policy 2ab sampler, the other solvers, bad input.

The expected results are computed here independently, element by element in Python floats, from the
description of the official sampler (spec section 4.5), with an analytic Gaussian denoiser.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cosmos_kernels.sampling import (
    SCHEDULES,
    SOLVERS,
    arch_invariant_noise,
    get_sigmas,
    multistep_coefficients,
    sample,
)

# -- analytic denoiser: data ~ N(mu, s_b**2) per element, s_b per batch sample ---------------------------


def make_gaussian_denoiser(mu: torch.Tensor, s_b: torch.Tensor, calls: list | None = None):
    def x0_fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        assert sigma.shape == (x.shape[0],) and sigma.dtype == x.dtype
        if calls is not None:
            calls.append((x.dtype, sigma.clone()))
        view = (-1,) + (1,) * (x.dim() - 1)
        var = s_b.to(x.dtype).view(view) ** 2
        return mu.to(x.dtype) + var / (var + sigma.view(view) ** 2) * (x - mu.to(x.dtype))
    return x0_fn


def scalar_x0(x: float, sigma: float, mu: float, s: float) -> float:
    return mu + s * s / (s * s + sigma * sigma) * (x - mu)


def official_2ab_scalar(x_T: float, mu: float, s: float, num_steps: int, smin: float, smax: float, rho: float) -> float:
    """The official sampler for one element, in Python floats (spec 4.5)."""
    n = num_steps - 1 if num_steps > 1 else num_steps
    sig = [(smax ** (1 / rho) + i / n * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho for i in range(n + 1)]
    if n == 1:  # num_steps in {1, 2}: one prediction at sigma_max from pure noise
        return scalar_x0(x_T, sig[0], mu, s)
    x, prev = x_T, None
    for i in range(n):
        sc, sn = sig[i], sig[i + 1]
        x0 = scalar_x0(x, sc, mu, s)
        if prev is None:  # DDIM-like Euler first step
            x = (sc - sn) / sc * x0 + sn / sc * x
        else:
            x0_prev, s_prev = prev
            lam_s, lam_t, lam_m = -math.log(sc), -math.log(sn), -math.log(s_prev)
            dt = lam_t - lam_s
            c2 = (lam_m - lam_s) / dt
            phi1 = math.expm1(-dt) / (-dt)
            phi2 = (phi1 - 1) / (-dt)
            b1, b2 = phi1 - phi2 / c2, phi2 / c2
            x = math.exp(-dt) * x + dt * (b1 * x0 + b2 * x0_prev)
        prev = (x0, sc)
    return scalar_x0(x, sig[-1], mu, s)  # the clean prediction at sigma_min


def _case(gen, shape=(2, 3, 4)):
    noise = torch.randn(shape, generator=gen, dtype=torch.float64)
    mu = torch.randn(shape, generator=gen, dtype=torch.float64) * 0.5
    s_b = torch.rand(shape[0], generator=gen, dtype=torch.float64) + 0.5
    return noise, mu, s_b


def _expected(noise, mu, s_b, num_steps, smin, smax, rho):
    out = torch.empty_like(noise)
    flat_n, flat_mu, flat_out = noise.reshape(noise.shape[0], -1), mu.reshape(mu.shape[0], -1), out.view(
        noise.shape[0], -1)
    for b in range(noise.shape[0]):
        for j in range(flat_n.shape[1]):
            flat_out[b, j] = official_2ab_scalar(float(flat_n[b, j]), float(flat_mu[b, j]), float(s_b[b]),
                                                 num_steps, smin, smax, rho)
    return out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("num_steps", [1, 2, 3, 5, 10])
@pytest.mark.parametrize("smin,smax,rho", [(4.0, 80.0, 7.0), (0.002, 80.0, 7.0), (0.5, 20.0, 3.0), (1.0, 5.0, 1.0)])
def test_2ab_float64_parity_with_official(gen, num_steps, smin, smax, rho):
    noise, mu, s_b = _case(gen)
    x_T = noise * smax
    got = sample(make_gaussian_denoiser(mu, s_b), x_T, num_steps=num_steps, sigma_min=smin, sigma_max=smax, rho=rho)
    want = _expected(x_T, mu, s_b, num_steps, smin, smax, rho)
    assert got.dtype == torch.float64
    assert rel_err(got, want) <= 1e-10


@pytest.mark.parametrize("num_steps,nfe", [(1, 1), (2, 1), (3, 3), (4, 4), (5, 5), (10, 10)])
def test_2ab_step_count_rule_and_sigmas(gen, num_steps, nfe):
    noise, mu, s_b = _case(gen, (1, 5))
    calls = []
    sample(make_gaussian_denoiser(mu, s_b, calls), noise * 80, num_steps=num_steps, sigma_min=4.0, sigma_max=80.0)
    assert len(calls) == nfe
    sigmas = [c[1][0].item() for c in calls]
    assert sigmas[0] == pytest.approx(80.0, rel=1e-12)
    if nfe > 1:
        assert sigmas[-1] == pytest.approx(4.0, rel=1e-12)
    if num_steps == 5:  # the policy's passes (spec 4.5)
        assert sigmas == pytest.approx([80.0, 42.29, 20.97, 9.62, 4.0], abs=6e-3)
    if num_steps == 10:
        assert sigmas == pytest.approx([80, 60.70, 45.53, 33.73, 24.66, 17.77, 12.60, 8.77, 5.99, 4.0], abs=6e-3)


def test_float32_noise_rounds_network_input_keeps_float64_state(gen):
    noise, mu, s_b = _case(gen)
    calls = []
    x_T = (noise * 80).float()
    got = sample(make_gaussian_denoiser(mu, s_b, calls), x_T, num_steps=5, sigma_min=4.0, sigma_max=80.0)
    assert got.dtype == torch.float32 and all(c[0] == torch.float32 for c in calls)
    want = _expected(x_T.double(), mu, s_b, 5, 4.0, 80.0, 7.0)
    assert rel_err(got, want) <= 1e-6


def _official_sampler_tensor_ops(x0_fn, x_T: torch.Tensor, num_steps: int, smin: float, smax: float, rho: float,
                                 *, fold_dt: bool = False) -> torch.Tensor:
    """The official `CosmosPolicySampler` (2ab, S_churn = 0) in its own tensor arithmetic: `get_rev_ts` sigmas,
    (B,) float64 sigma tensors, float64 state, `x0_fn` fed in the noise's dtype. `fold_dt` is the rejected
    regrouping `(dt b1) x0 + (dt b2) x0_prev`."""
    in_dtype, b = x_T.dtype, x_T.shape[0]
    n = num_steps - 1 if num_steps > 1 else 1
    i = torch.arange(n + 1, dtype=torch.float64)
    sig = (smax ** (1 / rho) + i / n * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    ones = torch.ones(b, dtype=torch.float64)
    col = (-1,) + (1,) * (x_T.dim() - 1)

    def f64_x0(x, sigma):
        return x0_fn(x.to(in_dtype), sigma.to(in_dtype)).to(torch.float64)

    if num_steps <= 2:
        return f64_x0(x_T, sig[0] * ones).to(in_dtype)
    x, prev = x_T, None
    for k in range(n):
        s, t = sig[k] * ones, sig[k + 1] * ones
        x0 = f64_x0(x, s)
        if prev is None:
            x = ((s - t) / s).view(col) * x0 + (t / s).view(col) * x
        else:
            ls, lt, lm = -torch.log(s), -torch.log(t), -torch.log(prev[1])
            dt = lt - ls
            c2 = (lm - ls) / dt
            phi1 = torch.expm1(-dt) / -dt
            phi2 = (phi1 - 1.0) / -dt
            b1, b2 = phi1 - 1.0 / c2 * phi2, 1.0 / c2 * phi2
            if fold_dt:
                x = torch.exp(-dt).view(col) * x + (dt * b1).view(col) * x0 + (dt * b2).view(col) * prev[0]
            else:
                x = torch.exp(-dt).view(col) * x + dt.view(col) * (b1.view(col) * x0 + b2.view(col) * prev[0])
        prev = (x0, s)
    return f64_x0(x, sig[-1] * ones).to(in_dtype)


def _nonlinear_x0(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    view = (-1,) + (1,) * (x.dim() - 1)
    return torch.tanh(x / (1 + sigma.view(view))) * 1.7 + 0.1 * torch.sin(3 * x)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("num_steps", [1, 2, 3, 5, 10])
@pytest.mark.parametrize("smin,smax,rho", [(4.0, 80.0, 7.0), (0.002, 80.0, 7.0), (0.5, 20.0, 3.0)])
def test_2ab_is_bit_identical_to_the_official_arithmetic(gen, dtype, num_steps, smin, smax, rho):
    x_T = (torch.randn(3, 4, 5, 6, generator=gen, dtype=torch.float64) * smax).to(dtype)
    got = sample(_nonlinear_x0, x_T, num_steps=num_steps, sigma_min=smin, sigma_max=smax, rho=rho)
    want = _official_sampler_tensor_ops(_nonlinear_x0, x_T, num_steps, smin, smax, rho)
    assert got.dtype == dtype and torch.equal(got, want)


def test_2ab_grouping_of_dt_is_visible():
    # the bit-identity test above can fail: folding dt into b1, b2 changes float64 results
    gen = torch.Generator().manual_seed(3)
    x_T = torch.randn(4, 4096, generator=gen, dtype=torch.float64) * 80
    grouped = _official_sampler_tensor_ops(_nonlinear_x0, x_T, 10, 0.002, 80.0, 7.0)
    folded = _official_sampler_tensor_ops(_nonlinear_x0, x_T, 10, 0.002, 80.0, 7.0, fold_dt=True)
    assert not torch.equal(grouped, folded)
    assert torch.equal(sample(_nonlinear_x0, x_T, num_steps=10, sigma_min=0.002, sigma_max=80.0), grouped)


def test_arch_invariant_noise_is_numpy_randomstate():
    got = arch_invariant_noise(195, (1, 16, 9, 3, 2))
    want = np.random.RandomState(195).standard_normal((1, 16, 9, 3, 2)).astype(np.float32)
    assert got.dtype == torch.float32 and got.shape == (1, 16, 9, 3, 2)
    assert torch.equal(got, torch.from_numpy(want))
    assert not torch.equal(got, arch_invariant_noise(196, (1, 16, 9, 3, 2)))


# -- the other solvers -----------------------------------------------------------------------------------


def exact_solution(x_T, mu, s_b, smin, smax):
    """Exact probability-flow ODE solution for Gaussian data, then its x0 at sigma_min."""
    view = (-1,) + (1,) * (x_T.dim() - 1)
    s2 = s_b.view(view) ** 2
    x_min = mu + (x_T - mu) * torch.sqrt((s2 + smin**2) / (s2 + smax**2))
    return mu + s2 / (s2 + smin**2) * (x_min - mu)


@pytest.mark.parametrize("solver", SOLVERS)
def test_every_solver_spends_num_steps_passes(gen, solver):
    noise, mu, s_b = _case(gen, (1, 3))
    for num_steps in range(1, 8):
        calls = []
        sample(make_gaussian_denoiser(mu, s_b, calls), noise * 80, num_steps=num_steps, sigma_min=4.0,
               sigma_max=80.0, solver=solver)
        expected = 1 if (solver == "2ab" and num_steps == 2) else num_steps
        assert len(calls) == expected, (solver, num_steps)
        if num_steps > 2:
            assert calls[-1][1][0].item() == pytest.approx(4.0, rel=1e-12)


def _convergence(gen, solver, passes=(33, 65, 129)):
    noise, mu, s_b = _case(gen, (2, 6))
    smin, smax = 0.05, 10.0
    want = exact_solution(noise * smax, mu, s_b, smin, smax)
    return [rel_err(sample(make_gaussian_denoiser(mu, s_b), noise * smax, num_steps=p, sigma_min=smin,
                           sigma_max=smax, solver=solver, schedule="exponential"), want) for p in passes]


# 3ab is third order per step, but its Euler start-up step (local error O(h^2)) caps the global order at 2.
@pytest.mark.parametrize("solver,order", [("euler", 1), ("heun", 2), ("2ab", 2), ("dpmpp_2m", 2), ("3ab", 2)])
def test_solvers_converge_to_the_exact_ode_solution_at_their_order(gen, solver, order):
    errs = _convergence(gen, solver)
    observed = math.log2(errs[1] / errs[2])
    assert errs[2] < errs[1] < errs[0]
    assert observed > order - 0.35, (errs, observed)


def test_3ab_is_more_accurate_than_2ab_at_many_passes(gen):
    seed = int(torch.randint(0, 2**31, (1,), generator=gen))
    err_2ab = _convergence(torch.Generator().manual_seed(seed), "2ab")
    err_3ab = _convergence(torch.Generator().manual_seed(seed), "3ab")
    assert all(e3 < e2 / 5 for e2, e3 in zip(err_2ab, err_3ab)), (err_2ab, err_3ab)


def _lagrange_quadrature_weights(lambdas, lam_t):
    """Exponential-integrator weights by Gauss-Legendre quadrature (independent of the phi functions)."""
    lam_s = lambdas[0]
    h = lam_t - lam_s
    nodes, wq = np.polynomial.legendre.leggauss(30)
    u = 0.5 * h * (nodes + 1)
    kernel = np.exp(-(h - u)) * 0.5 * h
    out = []
    for j, lj in enumerate(lambdas):
        basis = np.ones_like(u)
        for m, lm in enumerate(lambdas):
            if m != j:
                basis *= (u - (lm - lam_s)) / ((lj - lam_s) - (lm - lam_s))
        out.append(float(np.sum(wq * kernel * basis)))
    return out


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_multistep_coefficients_match_quadrature(schedule):
    sig = get_sigmas(schedule, 6, 0.3, 60.0, 7.0)
    lam = [-math.log(v) for v in sig.tolist()]
    for solver, order in (("2ab", 2), ("3ab", 3)):
        table = multistep_coefficients(solver, sig)
        for i in range(6):
            k = min(order, i + 1)
            w = _lagrange_quadrature_weights([lam[i - j] for j in range(k)], lam[i + 1])
            row = table[i].tolist()
            assert row[0] == pytest.approx(sig[i + 1].item() / sig[i].item(), rel=1e-13)
            assert row[1:1 + k] == pytest.approx(w, rel=1e-9, abs=1e-12)
            assert all(v == 0.0 for v in row[1 + k:])
    dpm = multistep_coefficients("dpmpp_2m", sig)
    for i in range(1, 6):  # DPM-Solver++(2M) as written in its paper
        s, t, sp = sig[i].item(), sig[i + 1].item(), sig[i - 1].item()
        h, r = math.log(s / t), math.log(sp / s) / math.log(s / t)
        a = -math.expm1(-h)
        assert dpm[i].tolist() == pytest.approx([t / s, a * (1 + 0.5 / r), -a * 0.5 / r, 0.0], rel=1e-12)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_schedules_are_decreasing_from_sigma_max_to_sigma_min(schedule):
    sig = get_sigmas(schedule, 7, 0.5, 50.0, 5.0)
    assert sig.dtype == torch.float64 and sig.numel() == 8
    assert sig[0].item() == pytest.approx(50.0, rel=1e-12) and sig[-1].item() == pytest.approx(0.5, rel=1e-12)
    assert bool((sig[1:] < sig[:-1]).all())


# -- bad input ---------------------------------------------------------------------------------------------


def _identity_x0(x, sigma):
    return x * 0.5


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_steps=0), "num_steps"),
    (dict(num_steps=-3), "num_steps"),
    (dict(num_steps=2.0), "num_steps"),
    (dict(sigma_min=80.0, sigma_max=80.0), "sigma_min"),
    (dict(sigma_min=10.0, sigma_max=4.0), "sigma_min"),
    (dict(sigma_min=0.0), "sigma_min"),
    (dict(rho=0.0), "rho"),
    (dict(rho=-7.0), "rho"),
    (dict(sigma_max=float("inf")), "sigma_max"),
    (dict(solver="dpm_fancy"), "solver"),
    (dict(schedule="cosine_fancy"), "schedule"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    args = dict(num_steps=5, sigma_min=4.0, sigma_max=80.0) | kwargs
    with pytest.raises(ValueError, match=match):
        sample(_identity_x0, torch.randn(1, 4, dtype=torch.float64), **args)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_noise_raises(bad):
    noise = torch.randn(2, 3, 4)
    noise[1, 2, 3] = bad
    with pytest.raises(ValueError, match="non-finite"):
        sample(_identity_x0, noise, num_steps=5, sigma_min=4.0, sigma_max=80.0)


@pytest.mark.parametrize("solver", SOLVERS)
def test_x0_fn_wrong_shape_raises(solver):
    with pytest.raises(ValueError, match="shape"):
        sample(lambda x, s: x[..., :-1], torch.randn(2, 3, 4), num_steps=3, sigma_min=4.0, sigma_max=80.0,
               solver=solver)
