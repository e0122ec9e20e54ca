"""Rectified-flow UniPC: the spec's schedule table, float32 parity with an evaluation of the spec's formulas,
the fixed-shape loop equal to the functional form and sync-free, convergence to the exact flow, bad input.

The expected chain is written here from the formulas of the Predict2.5 spec (section 4.5: schedule, steps 1-3),
in float32 0-dim tensors, with no call into the module under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from cosmos_kernels.sampling import FlowUniPCSampler, flow_unipc_coefficients, flow_unipc_schedule, sample_flow_unipc
from cosmos_kernels.sampling import flow_unipc as fu
from tests.sampling.test_sampler import FailOnHostSync

SHAPE = (2, 3, 5, 4, 7)
STEPS = [1, 2, 3, 5, 10]
SHIFTS = [1.0, 5.0]

# The spec's table (shift 5): network timesteps, sigmas to 5 decimals, predictor orders.
SPEC_TABLE = {
    1: ([999], [0.99980, 0.0], [1]),
    2: ([999, 833], [0.99980, 0.83306, 0.0], [1, 1]),
    3: ([999, 908, 713], [0.99980, 0.90884, 0.71398, 0.0], [1, 2, 1]),
    5: ([999, 952, 882, 768, 555], [0.99980, 0.95215, 0.88209, 0.76893, 0.55525, 0.0], [1, 2, 2, 2, 1]),
    10: ([999, 978, 952, 920, 882, 833, 768, 681, 555, 356], None, [1] + [2] * 8 + [1]),
}


# -- the spec's formulas, written out --------------------------------------------------------------------------


def spec_schedule(n: int, shift: float) -> tuple[list[int], list[float]]:
    """t_i = int(1000 sigma_i), sigma_i = shift s_i / (1 + (shift - 1) s_i), s = linspace(float32(0.999), 0, n + 1)."""
    s_max = float(torch.tensor(0.999, dtype=torch.float32))
    step = (0.0 - s_max) / n
    s = [i * step + s_max for i in range(n)]  # the float64 linspace, without its endpoint
    sig = [shift * v / (1 + (shift - 1) * v) for v in s]
    return [int(1000 * v) for v in sig], sig + [0.0]


def spec_sample(denoise, noise: torch.Tensor, n: int, shift: float) -> torch.Tensor:
    t_int, sig64 = spec_schedule(n, shift)
    f32 = [torch.tensor(v, dtype=torch.float32) for v in sig64]
    alpha = [1 - s for s in f32]
    lam = [torch.log(a) - torch.log(s) for a, s in zip(alpha, f32)]
    x, m, x_c, orders = noise, [], [], []
    for i in range(n):
        v = denoise(x, torch.full((noise.shape[0],), float(t_int[i]), dtype=torch.float32))
        m.append(x - f32[i] * v)  # step 1: from the uncorrected x_i
        if i >= 1:  # step 2: the corrector, with the previous step's order
            h = lam[i] - lam[i - 1]
            big_b = torch.expm1(-h)
            base = (f32[i] / f32[i - 1]) * x_c[i - 1] - (alpha[i] * big_b) * m[i - 1]
            if orders[i - 1] == 1:
                x = base - (alpha[i] * big_b) * (0.5 * (m[i] - m[i - 1]))
            else:
                r = (lam[i - 2] - lam[i - 1]) / h
                d = (m[i - 2] - m[i - 1]) / r
                k1 = big_b / (-h) - 1
                b1, b2 = k1 / big_b, 2 * (k1 / (-h) - 0.5) / big_b
                rho = torch.linalg.solve(torch.tensor([[1.0, 1.0], [float(r), 1.0]]), torch.stack([b1, b2]))
                x = base - (alpha[i] * big_b) * (rho[0] * d + rho[1] * (m[i] - m[i - 1]))
        x_c.append(x)
        orders.append(min(2, n - i, i + 1))  # step 3: the predictor
        h = lam[i + 1] - lam[i]
        big_b = torch.expm1(-h)
        x = (f32[i + 1] / f32[i]) * x_c[i] - (alpha[i + 1] * big_b) * m[i]
        if orders[i] == 2:
            r = (lam[i - 1] - lam[i]) / h
            x = x - (alpha[i + 1] * big_b) * 0.5 * (m[i - 1] - m[i]) / r
    return x


# -- toy networks ----------------------------------------------------------------------------------------------


class GaussianFlow:
    """Data x0 ~ N(mu, s**2) per element: the exact velocity E[eps - x0 | x_sigma] of x = (1 - sigma) x0 + sigma eps."""

    def __init__(self, gen, shape=SHAPE, scale_time=True):
        self.mu = torch.randn(shape, generator=gen, dtype=torch.float64)
        self.s = torch.rand(shape, generator=gen, dtype=torch.float64) + 0.3
        self.scale_time = scale_time  # True: the network's sigma is t * float32(0.001), as Cosmos-Predict2.5's

    def sigma(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.scale_time:
            t = t * torch.tensor(0.001, dtype=torch.float32)
        return t.double().view(-1, *[1] * (x.dim() - 1))

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sig = self.sigma(t, x)
        a = 1 - sig
        var = a * a * self.s**2 + sig * sig
        centred = x.double() - a * self.mu
        x0 = self.mu + a * self.s**2 / var * centred
        eps = sig / var * centred
        return (eps - x0).float()

    def exact_flow(self, noise: torch.Tensor, sigma0: float) -> torch.Tensor:
        """The probability-flow ODE maps x at sigma0 to mu + s z, z = (x - (1 - sigma0) mu) / std(sigma0)."""
        a = 1 - sigma0
        z = (noise.double() - a * self.mu) / (a * a * self.s**2 + sigma0**2).sqrt()
        return self.mu + self.s * z


def wavy(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A nonlinear stand-in network."""
    return torch.sin(3 * x) * (1 + t.view(-1, *[1] * (x.dim() - 1)) / 700) - 0.25 * x


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# -- schedule ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", STEPS)
def test_schedule_matches_the_spec_table(n):
    t_int, sigmas, orders = SPEC_TABLE[n]
    sch = flow_unipc_schedule(n, 5)
    assert sch.timesteps.dtype == torch.int64 and sch.timesteps.tolist() == t_int
    assert sch.sigmas.dtype == torch.float32 and sch.sigmas.shape == (n + 1,)
    assert list(sch.orders) == orders
    assert sch.sigmas[-1].item() == 0.0
    if sigmas is not None:
        assert sch.sigmas.tolist() == pytest.approx(sigmas, abs=5e-6)
    assert sch.sigmas[0].item() == pytest.approx(0.99980, abs=5e-6)


@pytest.mark.parametrize("shift", SHIFTS + [2.5])
@pytest.mark.parametrize("n", STEPS + [50])
def test_schedule_matches_the_spec_formulas(n, shift):
    t_int, sig64 = spec_schedule(n, shift)
    sch = flow_unipc_schedule(n, shift)
    assert sch.timesteps.tolist() == t_int
    assert torch.equal(sch.sigmas, torch.tensor(sig64, dtype=torch.float32))
    assert sch.orders == tuple(min(2, n - i, i + 1) for i in range(n))


def test_schedule_literals():
    assert flow_unipc_schedule(1, 1).sigmas[0].item() == 0.9990000128746033  # float32(0.999), unshifted
    assert flow_unipc_schedule(5, 1).timesteps.tolist() == [999, 799, 599, 399, 199]  # truncated, not rounded
    assert flow_unipc_schedule(2, 1).timesteps.tolist() == [999, 499]


def test_spec_coefficients_for_five_steps():
    table = flow_unipc_coefficients(flow_unipc_schedule(5, 5))
    assert table[:, fu.P_RATIO].tolist() == pytest.approx([0.95234, 0.92642, 0.87172, 0.72210, 0.0], abs=5e-6)
    assert (-table[:, fu.P_AB]).tolist() == pytest.approx([0.04766, 0.07358, 0.12828, 0.27790, 1.0], abs=5e-6)
    pair_term = (-table[1:4, fu.P_AB] * 0.5 / table[1:4, fu.P_R]).tolist()  # coefficient of (m_{i-1} - m_i)
    assert pair_term == pytest.approx([-0.00651, -0.05311, -0.16816], abs=5e-6)
    rho = table[2:5, fu.C_RHO0:fu.C_RHO1 + 1].tolist()
    want = [[0.02468, 0.55558], [0.07468, 0.49210], [0.08983, 0.49059]]
    assert [v for row in rho for v in row] == pytest.approx([v for row in want for v in row], abs=5e-6)


# -- sampling ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("n", STEPS)
@pytest.mark.parametrize("net", ["gaussian", "wavy"])
def test_matches_the_spec_chain_in_float32(net, n, shift, gen):
    denoise = GaussianFlow(gen) if net == "gaussian" else wavy
    noise = torch.randn(SHAPE, generator=gen)
    want = spec_sample(denoise, noise, n, shift)
    got = sample_flow_unipc(denoise, noise, n, shift=shift)
    assert got.dtype == torch.float32 and got.shape == SHAPE
    assert torch.isfinite(got).all()
    scale = want.abs().max().item()
    assert (got - want).abs().max().item() <= 8 * torch.finfo(torch.float32).eps * max(1.0, scale)


@pytest.mark.parametrize("n", STEPS)
def test_contract_with_the_network(n, gen):
    denoise = GaussianFlow(gen)
    seen = []

    def net(x, t):
        seen.append((x.clone(), t.clone()))
        return denoise(x, t)

    noise = torch.randn(SHAPE, generator=gen)
    out = sample_flow_unipc(net, noise, n, shift=5)
    sch = flow_unipc_schedule(n, 5)
    assert len(seen) == n  # one network pass per step
    assert torch.equal(seen[0][0], noise)  # the noise is not scaled by sigma_max
    for (x, t), t_int in zip(seen, sch.timesteps.tolist()):
        assert x.dtype == torch.float32 and x.shape == SHAPE
        assert t.dtype == torch.float32 and torch.equal(t, torch.full((SHAPE[0],), float(t_int)))
    x_last, t_last = seen[-1]
    assert torch.equal(out, x_last - sch.sigmas[n - 1] * denoise(x_last, t_last))  # the last x0 prediction, exactly


def test_net_time_sigma_passes_sigmas(gen):
    seen = []
    sample_flow_unipc(lambda x, t: seen.append(t.clone()) or wavy(x, t), torch.randn(SHAPE, generator=gen), 3,
                      shift=5, net_time="sigma")
    sch = flow_unipc_schedule(3, 5)
    assert [t[0].item() for t in seen] == sch.sigmas[:3].tolist()


@pytest.mark.parametrize("shift", SHIFTS)
def test_converges_to_the_exact_flow(shift, gen):
    flow = GaussianFlow(gen, scale_time=False)
    noise = torch.randn(SHAPE, generator=gen)
    sigma0 = flow_unipc_schedule(40, shift).sigmas[0].item()
    exact = flow.exact_flow(noise, sigma0)
    errs = [rel_err(sample_flow_unipc(flow, noise, n, shift=shift, net_time="sigma"), exact) for n in (10, 20, 40, 80)]
    assert all(b < a for a, b in zip(errs, errs[1:])), errs
    if shift == 1.0:  # second order: each doubling of the steps divides the error by about 4
        assert all(b < 0.35 * a for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < (3e-4 if shift == 1.0 else 3e-3), errs


def test_batch_samples_are_independent(gen):
    noise = torch.randn(SHAPE, generator=gen)
    both = sample_flow_unipc(wavy, noise, 5)
    assert torch.equal(both[1:], sample_flow_unipc(wavy, noise[1:].clone(), 5))


# -- fixed-shape loop ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("n", STEPS)
def test_fixed_loop_equals_the_functional_form(n, shift, gen):
    denoise = GaussianFlow(gen)
    noise = torch.randn(SHAPE, generator=gen)
    sampler = FlowUniPCSampler(SHAPE, num_steps=n, shift=shift)
    steps = []

    def net(x, t, k):
        steps.append(k)
        return denoise(x, t)

    got = sampler.run(net, noise)
    assert steps == list(range(n))
    assert torch.equal(got, sample_flow_unipc(denoise, noise, n, shift=shift))
    assert torch.equal(sampler.run(net, noise), got)  # a second run starts afresh


def test_fixed_loop_never_syncs_the_host(gen):
    sampler = FlowUniPCSampler(SHAPE, num_steps=5)
    noise = torch.randn(SHAPE, generator=gen)
    with FailOnHostSync():
        out = sampler.run(lambda x, t, k: wavy(x, t), noise)
    assert torch.isfinite(out).all()


@pytest.mark.gpu
def test_gpu_cuda_graph_replay_equals_functional(gen):
    denoise = GaussianFlow(gen)
    denoise.mu, denoise.s = denoise.mu.cuda(), denoise.s.cuda()
    noise = torch.randn(SHAPE, generator=gen).cuda()
    sampler = FlowUniPCSampler(SHAPE, num_steps=5, device="cuda")
    want = sample_flow_unipc(denoise, noise, 5)
    assert torch.equal(sampler.run(lambda x, t, k: denoise(x, t), noise), want)
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        sampler.run(lambda x, t, k: denoise(x, t), noise)
        with torch.cuda.graph(graph, stream=stream):
            static_out = sampler.run(lambda x, t, k: denoise(x, t))
    torch.cuda.current_stream().wait_stream(stream)
    sampler.state.copy_(noise * 0.5)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_out, sample_flow_unipc(denoise, noise * 0.5, 5))


# -- bad input -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_steps", [0, -1, 2.0, True, "5"])
def test_bad_num_steps(num_steps):
    with pytest.raises(ValueError, match="num_steps"):
        flow_unipc_schedule(num_steps)
    with pytest.raises(ValueError, match="num_steps"):
        sample_flow_unipc(wavy, torch.zeros(SHAPE), num_steps)
    with pytest.raises(ValueError, match="num_steps"):
        FlowUniPCSampler(SHAPE, num_steps=num_steps)


@pytest.mark.parametrize("shift", [0, -5.0, math.nan, math.inf, None, "5"])
def test_bad_shift(shift):
    with pytest.raises(ValueError, match="shift"):
        flow_unipc_schedule(5, shift)
    with pytest.raises(ValueError, match="shift"):
        sample_flow_unipc(wavy, torch.zeros(SHAPE), 5, shift=shift)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16, torch.int32])
def test_bad_noise_dtype(dtype):
    with pytest.raises(TypeError, match="noise"):
        sample_flow_unipc(wavy, torch.zeros(SHAPE, dtype=dtype), 5)
    with pytest.raises(TypeError, match="noise"):
        FlowUniPCSampler(SHAPE, num_steps=5).run(lambda x, t, k: x, torch.zeros(SHAPE, dtype=dtype))


def test_other_bad_arguments():
    noise = torch.zeros(SHAPE)
    with pytest.raises(TypeError, match="noise"):
        sample_flow_unipc(wavy, noise.numpy(), 5)
    with pytest.raises(TypeError, match="denoise"):
        sample_flow_unipc(None, noise, 5)
    with pytest.raises(ValueError, match="net_time"):
        sample_flow_unipc(wavy, noise, 5, net_time="t")
    with pytest.raises(ValueError, match="denoise returned shape"):
        sample_flow_unipc(lambda x, t: x[..., :-1], noise, 5)
    with pytest.raises(TypeError, match="denoise must return"):
        sample_flow_unipc(lambda x, t: x.long(), noise, 5)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        flow_unipc_schedule(5, 5, num_train_timesteps=1)
    with pytest.raises(ValueError, match="repeats the first timestep"):  # the official lookup would fail
        flow_unipc_schedule(300, 5)
    with pytest.raises(ValueError, match="noise has shape"):
        FlowUniPCSampler(SHAPE, num_steps=5).run(lambda x, t, k: x, torch.zeros(2, 3, 5, 4, 6))
    with pytest.raises(ValueError, match="shape"):
        FlowUniPCSampler((2, 0, 3), num_steps=5)
