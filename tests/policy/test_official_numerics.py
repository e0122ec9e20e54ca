"""The bf16 chain against an oracle written from the official arithmetic order (NVlabs/cosmos-policy, spec 4.2, 4.5).

The oracle: Karras sigmas and the 2ab update in float64 on a float64 state; each denoiser call rounds the state and
sigma to fp32 and computes `t = sigma / (sigma + 1)`, `c_in = c_skip = 1 - t`, `c_out = -t` in fp32; the network
gets `(c_in x)` and `t` in bf16, conditional frames replaced by their clean latents (t = 0); `x0 = c_skip x + c_out v`
in fp32. Pixels: `uint8 -> bf16, / 127.5, - 1` in bf16. Run with `-s` to print the per-stage ulp table.
"""

import numpy as np
import pytest
import torch

from cosmos_kernels.sampling import Sampler, arch_invariant_noise, sample
from cosmos_policy import CosmosPolicy
from cosmos_policy.model import layout as L
from cosmos_policy.model.vae import to_pixels
from cosmos_policy.testing import LIBERO_SAMPLE_TASK, write_tiny_checkpoint

STEPS, SIGMA_MIN, SIGMA_MAX, RHO = 5, 4.0, 80.0, 7.0


def ulps(a: torch.Tensor, b: torch.Tensor) -> int:
    """Largest distance in units in the last place between same-dtype float tensors (bf16 or fp32)."""
    assert a.dtype == b.dtype and a.shape == b.shape
    bits, width = (torch.int16, 15) if a.dtype == torch.bfloat16 else (torch.int32, 31)

    def ordered(t):
        i = t.contiguous().view(bits).long()
        return torch.where(i < 0, -(i & ((1 << width) - 1)), i)

    return int((ordered(a) - ordered(b)).abs().max())


def official_sigmas() -> torch.Tensor:
    """`get_rev_ts`: float64 torch arange and pow (sample_clean: one interval fewer, then a last x0 at sigma_min)."""
    n = STEPS - 1
    i = torch.arange(n + 1, dtype=torch.float64)
    return (SIGMA_MAX ** (1 / RHO) + i / n * (SIGMA_MIN ** (1 / RHO) - SIGMA_MAX ** (1 / RHO))) ** RHO


def official_update(x, x0, prev, s, t):
    """`order2_fn` on (B,) float64 sigma tensors: `reg_x0_euler_step` first, then `res_x0_rk2_step`, grouped as
    `exp(-dt) x + dt (b1 x0 + b2 x0_prev)` with phi1, phi2 from torch's float64 expm1."""
    col = (-1, 1, 1, 1, 1)
    if prev is None:
        return ((s - t) / s).view(col) * x0 + (t / s).view(col) * x
    x0_prev, s_prev = prev
    ls, lt, lm = -torch.log(s), -torch.log(t), -torch.log(s_prev)
    dt = lt - ls
    c2 = (lm - ls) / dt
    phi1 = torch.expm1(-dt) / -dt
    phi2 = (phi1 - 1.0) / -dt
    b1, b2 = phi1 - 1.0 / c2 * phi2, 1.0 / c2 * phi2
    return torch.exp(-dt).view(col) * x + dt.view(col) * (b1.view(col) * x0 + b2.view(col) * x0_prev)


def official_chain(network, noise, gt, context, cond_frames, record):
    """The oracle; `record` gets (net_in bf16, timesteps bf16, x0 fp32) per network pass."""
    b, _, t_frames = noise.shape[:3]
    mask = cond_frames.float().view(1, 1, -1, 1, 1)
    cond_mask = mask.expand(b, 1, t_frames, 1, 1)

    def x0_fn(x64, sigma64):
        x = x64.float()
        s = sigma64.float().view(b, 1, 1, 1, 1)
        t = s / (s + 1)
        c_skip, c_out, c_in = 1.0 - t, -t, 1.0 - t
        net_in = gt * mask + (x * c_in) * (1 - mask)
        c_noise = torch.zeros_like(t) * mask + t * (1 - mask)  # t(sigma_cond = 0) = 0
        net_in, times = net_in.to(torch.bfloat16), c_noise.view(b, t_frames).to(torch.bfloat16)
        out = network(net_in, times, context, cond_mask).float()
        x0 = c_skip * x + c_out * out
        x0 = gt * mask + x0 * (1 - mask)
        record.append((net_in, times, x0))
        return x0.double()

    sig, ones = official_sigmas(), torch.ones(b, dtype=torch.float64)
    x, prev = noise, None  # the state is the fp32 noise until the first update promotes it to float64
    for i in range(len(sig) - 1):
        s, t = sig[i] * ones, sig[i + 1] * ones
        x0 = x0_fn(x, s)
        x = official_update(x, x0, prev, s, t)
        prev = (x0, s)
    return x0_fn(x, sig[-1] * ones).float()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    directory = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), image_size=64)
    policy = CosmosPolicy.from_pretrained(directory, backend="reference", device="cpu", dtype=torch.bfloat16)
    fused = CosmosPolicy.from_pretrained(directory, backend="fused", device="cpu", dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(0)
    shape = (1, 16, L.LIBERO.state_t, 8, 8)
    gt = torch.zeros(shape)
    gt[:, :, : L.LIBERO.num_conditional_frames] = torch.randn(1, 16, L.LIBERO.num_conditional_frames, 8, 8,
                                                              generator=gen)
    noise = arch_invariant_noise(195, shape) * SIGMA_MAX
    context = policy.text.get(LIBERO_SAMPLE_TASK)
    oracle_record: list = []
    oracle = official_chain(policy.network, noise, gt, context, policy.cond_frames, oracle_record)
    return policy, fused, noise, gt, context, oracle, oracle_record


def test_pixels_are_normalised_in_the_networks_dtype():
    levels = torch.arange(256, dtype=torch.uint8)
    official = levels.to(torch.bfloat16) / 127.5 - 1.0  # bf16 arithmetic: rounds after the cast and after each op
    assert ulps(to_pixels(levels, torch.bfloat16), official) == 0
    once = (levels.float() / 127.5 - 1.0).to(torch.bfloat16)
    # what rounding once gives instead: 128 levels off by one ulp of the quotient (2**-8 in [0.5, 1))
    assert int((once != official).sum()) == 128 and float((once.float() - official.float()).abs().max()) <= 2**-8
    assert torch.equal(to_pixels(levels, torch.float32), levels.float() / 127.5 - 1.0)


def test_sampler_scalings_are_the_official_fp32_ones():
    sampler = Sampler((1, 1, 2, 1, 1), num_steps=STEPS, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, solver="2ab")
    s = sampler.sigmas.float()
    t = s / (s + 1)
    torch.testing.assert_close(sampler.timesteps.float(), t, rtol=0, atol=0)
    torch.testing.assert_close(sampler.coeffs[:, 0].float(), 1.0 - t, rtol=0, atol=0)  # c_skip
    torch.testing.assert_close(sampler.coeffs[:, 1].float(), -t, rtol=0, atol=0)  # c_out
    torch.testing.assert_close(sampler.coeffs[:-1, 6].float(), (1.0 - t)[1:], rtol=0, atol=0)  # next c_in
    double = Sampler((1, 1, 2, 1, 1), num_steps=STEPS, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, solver="2ab",
                     scaling_dtype=torch.float64)
    assert not torch.equal(double.coeffs[:, 0].float(), sampler.coeffs[:, 0].float())  # the once-rounded values


def test_functional_sampler_with_the_reference_network_is_the_official_chain(setup):
    policy, _, noise, gt, context, oracle, _ = setup
    got = sample(policy._x0_fn(gt, context), noise, num_steps=STEPS, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
                 solver="2ab")
    assert got.dtype == oracle.dtype and torch.equal(got, oracle), f"{ulps(got, oracle)} fp32 ulps"


def _sampler_chain(policy, noise, gt, context, step_backend):
    sampler = Sampler(noise.shape, num_steps=STEPS, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, solver="2ab",
                      net_dtype=torch.bfloat16, backend=step_backend)
    record = []
    mask5 = policy.cond_mask

    def net_fn(net_in, timesteps, k):
        record.append((net_in.clone(), timesteps.to(torch.bfloat16)))
        return policy.network(net_in, timesteps, context, mask5)

    cond = policy.cond_frames.float()[None]
    return sampler.run(net_fn, noise, gt, cond), record


@pytest.mark.parametrize("network, step_backend", [("reference", "reference"), ("reference", None),
                                                   ("fused", None)])
def test_sampler_chain_against_the_oracle(setup, network, step_backend):
    policy, fused, noise, gt, context, oracle, oracle_record = setup
    chain_policy = policy if network == "reference" else fused
    got, record = _sampler_chain(chain_policy, noise, gt, context, step_backend)
    rows = [(k, ulps(a[0], b[0]), int((a[0] != b[0]).sum()), ulps(a[1], b[1]))
            for k, (a, b) in enumerate(zip(record, oracle_record))]
    final = ulps(got, oracle)
    rel = float((got - oracle).norm() / oracle.norm())
    print(f"\n{network} network, step backend {step_backend or 'auto'}: pass, net_in ulps (bf16), values off, "
          "timestep ulps")
    for row in rows:
        print("  ", row)
    print(f"   final x0: {final} fp32 ulps, relative {rel:.2e}")
    assert all(times == 0 for *_, times in rows)  # the network sees the official timesteps
    if network == "reference":
        # the Sampler's state is fp32 where the official one is float64: a network input can round the other way
        # (one bf16 ulp, a few values), and the bf16 network output spreads that over the result
        assert all(net_in <= 1 and off <= noise.numel() // 1000 for _, net_in, off, _ in rows)
        assert rows[0][1] == 0 and rel < 1e-2
    assert rel < 2e-2 and np.isfinite(got.numpy()).all()
