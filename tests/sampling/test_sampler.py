"""`Sampler`: the fused, sync-free loop matches `sample()`, keeps its contract with the network, never syncs."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cosmos_kernels.sampling import MULTISTEP_SOLVERS, Sampler, sample
from tests.numerics import cpu_backends

BACKENDS = cpu_backends()
SHAPE = (2, 3, 4, 3, 5)


class Problem:
    """Gaussian data (mean mu, std 0.7) in the noisy frames, clean latents in the conditional ones."""

    def __init__(self, gen, shape=SHAPE, device="cpu"):
        self.mu = (torch.randn(shape, generator=gen, dtype=torch.float64) * 0.5).to(device)
        self.clean = torch.randn(shape, generator=gen, dtype=torch.float64).to(device)
        b, _, t = shape[:3]
        self.mask = torch.zeros(b, t, device=device)
        self.mask[:, :2] = 1.0
        self.mask[-1, -1] = 1.0
        self.cond = self.mask.bool().view(b, 1, t, 1, 1)
        self.noise = torch.randn(shape, generator=gen, dtype=torch.float64).to(device) * 80.0

    def posterior_mean(self, x, sigma):
        var = 0.7**2
        return self.mu + var / (var + sigma**2) * (x - self.mu)

    def x0_fn(self, x, sigma):  # the denoiser `sample()` sees, conditional frames replaced like the policy does
        return torch.where(self.cond, self.clean, self.posterior_mean(x, sigma.view(-1, 1, 1, 1, 1)))

    def velocity_net(self, net_in, timesteps, k):  # a rectified-flow network: (c_in * x, t) -> v
        b, t = timesteps.shape
        tt = torch.where(self.cond, 0.5, timesteps.double().view(b, 1, t, 1, 1))
        x = net_in.double() / (1 - tt)
        x0 = self.posterior_mean(x, tt / (1 - tt))
        return (((1 - tt) * x - x0) / tt).to(net_in.dtype)

    def x0_net(self, net_in, sigmas, k):  # parametrization="x0": input x, timestep sigma, output x0
        b, t = sigmas.shape
        return self.posterior_mean(net_in.double(), sigmas.double().view(b, 1, t, 1, 1)).to(net_in.dtype)


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("solver", MULTISTEP_SOLVERS)
@pytest.mark.parametrize("num_steps", [1, 2, 3, 5, 10])
def test_matches_sample_in_fp32(backend, solver, num_steps, gen):
    p = Problem(gen)
    kw = dict(num_steps=num_steps, sigma_min=4.0, sigma_max=80.0, solver=solver)
    want = sample(p.x0_fn, p.noise, **kw)
    sampler = Sampler(SHAPE, backend=backend, **kw)
    got = sampler.run(p.velocity_net, p.noise.float(), p.clean.float(), p.mask)
    assert got.dtype == torch.float32 and got.shape == SHAPE
    assert rel_err(got, want) <= 1e-5
    assert torch.equal(got[p.cond.expand(SHAPE)], p.clean.float()[p.cond.expand(SHAPE)])


@pytest.mark.parametrize("backend", BACKENDS)
def test_x0_parametrization_and_other_schedule(backend, gen):
    p = Problem(gen)
    p.mask.zero_()
    p.cond = p.mask.bool().view(SHAPE[0], 1, SHAPE[2], 1, 1)
    kw = dict(num_steps=6, sigma_min=0.1, sigma_max=20.0, rho=5.0, solver="3ab", schedule="exponential")
    want = sample(p.x0_fn, p.noise / 4, **kw)
    got = Sampler(SHAPE, parametrization="x0", backend=backend, **kw).run(p.x0_net, (p.noise / 4).float())
    assert rel_err(got, want) <= 1e-5


def test_contract_with_the_network(gen):
    p = Problem(gen)
    sampler = Sampler(SHAPE, num_steps=5, sigma_min=4.0, sigma_max=80.0, net_dtype=torch.bfloat16)
    seen = []

    def net(net_in, timesteps, k):
        seen.append((net_in.clone(), timesteps.clone(), k))
        return p.velocity_net(net_in, timesteps, k)

    sampler.run(net, p.noise.float(), p.clean.float(), p.mask)
    assert [k for _, _, k in seen] == list(range(5))
    t = sampler.sigmas / (1 + sampler.sigmas)
    assert torch.allclose(sampler.timesteps, t)
    cond = p.cond.expand(SHAPE)
    for net_in, timesteps, k in seen:
        assert net_in.dtype == torch.bfloat16 and net_in.shape == SHAPE
        assert timesteps.dtype == torch.float32 and timesteps.shape == (SHAPE[0], SHAPE[2])
        assert torch.equal(timesteps[p.mask.bool()], torch.zeros(int(p.mask.sum())))
        assert torch.allclose(timesteps[~p.mask.bool()].double(), t[k].expand(int((p.mask == 0).sum())), rtol=1e-6)
        assert torch.equal(net_in[cond], p.clean.to(torch.bfloat16)[cond])
    first = seen[0][0]
    want_first = ((1 - t[0]) * p.noise).to(torch.bfloat16)
    assert torch.equal(first[~cond], want_first[~cond])


class FailOnHostSync(TorchDispatchMode):
    """Fails on `aten._local_scalar_dense` (what `.item()`, `bool(t)`, `.tolist()` call)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            raise AssertionError("host sync: aten._local_scalar_dense was called")
        return func(*args, **(kwargs or {}))


def test_the_dispatch_mode_catches_item():
    with pytest.raises(AssertionError, match="host sync"), FailOnHostSync():
        torch.ones(2).sum().item()


@pytest.mark.parametrize("backend", BACKENDS)
def test_loop_never_syncs_the_host(backend, gen):
    p = Problem(gen)
    noise, clean = p.noise.float(), p.clean.float()

    def net(net_in, timesteps, k):  # sync-free stand-in for a network
        return net_in * 0.5 - timesteps.mean() + k

    sampler = Sampler(SHAPE, num_steps=5, sigma_min=4.0, sigma_max=80.0, solver="3ab", backend=backend)
    with FailOnHostSync():
        out = sampler.run(net, noise, clean, p.mask)
    assert torch.isfinite(out).all()


def test_bad_arguments(gen):
    with pytest.raises(ValueError, match="solver"):
        Sampler(SHAPE, num_steps=5, sigma_min=4.0, sigma_max=80.0, solver="heun")
    with pytest.raises(ValueError, match="num_steps"):
        Sampler(SHAPE, num_steps=0, sigma_min=4.0, sigma_max=80.0)
    with pytest.raises(ValueError, match="sigma_min"):
        Sampler(SHAPE, num_steps=5, sigma_min=80.0, sigma_max=4.0)
    with pytest.raises(ValueError, match="shape"):
        Sampler(SHAPE[:4], num_steps=5, sigma_min=4.0, sigma_max=80.0)
    with pytest.raises(ValueError, match="parametrization"):
        Sampler(SHAPE, num_steps=5, sigma_min=4.0, sigma_max=80.0, parametrization="eps")
    sampler = Sampler(SHAPE, num_steps=3, sigma_min=4.0, sigma_max=80.0)
    with pytest.raises(ValueError, match="noise"):
        sampler.run(lambda x, t, k: x, torch.randn(2, 3, 4, 3, 4))
    with pytest.raises(ValueError, match="cond_mask"):
        sampler.run(lambda x, t, k: x, torch.randn(SHAPE), torch.randn(SHAPE), torch.ones(2, 3))
    with pytest.raises(ValueError, match="x's shape"):
        sampler.run(lambda x, t, k: x[..., :-1], torch.randn(SHAPE))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton", "reference"])
def test_gpu_no_sync_and_cuda_graph_replay(backend, gen):
    p = Problem(gen, device="cuda")
    noise, clean = p.noise.float(), p.clean.float()
    kw = dict(num_steps=5, sigma_min=4.0, sigma_max=80.0)
    sampler = Sampler(SHAPE, device="cuda", backend=backend, **kw)
    want = sample(p.x0_fn, p.noise, **kw)
    eager = sampler.run(p.velocity_net, noise, clean, p.mask)  # warm-up: probes, Triton compilation
    assert rel_err(eager, want) <= 1e-5
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with FailOnHostSync():
            sampler.run(p.velocity_net, noise, clean, p.mask)
        static_noise = noise.clone()
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            sampler.run(p.velocity_net, static_noise, clean, p.mask)
            with torch.cuda.graph(graph, stream=stream):
                static_out = sampler.run(p.velocity_net, static_noise)
        torch.cuda.current_stream().wait_stream(stream)
        static_noise.copy_(noise * 0.5)
        graph.replay()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    again = sampler.run(p.velocity_net, noise * 0.5, clean, p.mask)
    torch.testing.assert_close(static_out, again)
