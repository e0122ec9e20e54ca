"""The sampler at the LIBERO latent shape (1, 16, 9, 28, 28): fused step vs the eager step, and the solver study.

Each variant is one pytest-benchmark measurement of its group (see bench/conftest.py).

- `test_sampler_step`: what runs between two network passes. "fused" is one `sampler_step` call
  ("fused_op_only": the op without the public function's Python checks, as `Sampler` calls it);
  "eager_official" is the official chain of element-wise ops (fp32 preconditioning, clean-frame replacement,
  float64 2ab update with its per-step scalar math on (B,) tensors, the next input); "reference" our
  plain-PyTorch spec of the fused step; "compile" torch.compile of that spec.
- `test_sampler_loop`: the 5-pass loop around a trivial network: `Sampler.run` vs `sample()` with the
  official preconditioning in x0_fn, i.e. the non-network overhead of one action chunk.
- `test_solver_accuracy`: the Gaussian-mixture study of `bench/sampler_accuracy.py` (smaller), errors in
  extra_info; the full study with plot is `python -m bench.sampler_accuracy`.
"""

from __future__ import annotations

import pytest
import torch

from bench.conftest import DEVICES, VARIANTS, compiled, measure
from cosmos_kernels.sampling import Sampler, multistep_plan, sample, sampler_step
from cosmos_kernels.sampling.step import ops as step_ops
from cosmos_kernels.sampling.step import reference

SHAPE = (1, 16, 9, 28, 28)
NUM_COND = 4  # LIBERO: the first 4 latent frames are clean
SIGMA_MIN, SIGMA_MAX, PASSES = 4.0, 80.0, 5


def _inputs(device: str, net_dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    v = torch.randn(SHAPE, generator=g).to(device, net_dtype)
    x, x0_prev, x0_prev2, clean = (torch.randn(SHAPE, generator=g).to(device) for _ in range(4))
    mask = torch.zeros(1, SHAPE[2], device=device)
    mask[:, :NUM_COND] = 1.0
    return v, x, x0_prev, x0_prev2, clean, mask


def _official_eager_step(v, x64, x0_prev64, clean, mask5, sigma_b, sigma_next_b, sigma_prev_b, net_dtype):
    """The official chain between two passes (denoise -> replace gt -> float64 2ab -> next net input)."""
    xt = x64.float()
    sig = sigma_b.float()
    t = sig / (1 + sig)
    c_skip, c_out = (1 - t).view(-1, 1, 1, 1, 1), (-t).view(-1, 1, 1, 1, 1)
    x0 = c_skip * xt + c_out * v.float()
    x0 = clean * mask5 + x0 * (1 - mask5)
    x0 = x0.double()
    s, tt, m = -torch.log(sigma_b), -torch.log(sigma_next_b), -torch.log(sigma_prev_b)
    dt = tt - s
    c2 = (m - s) / dt
    phi1 = torch.expm1(-dt) / -dt
    phi2 = (phi1 - 1.0) / -dt
    b1 = torch.nan_to_num(phi1 - 1.0 / c2 * phi2, nan=0.0)
    b2 = torch.nan_to_num(1.0 / c2 * phi2, nan=0.0)
    view = (-1, 1, 1, 1, 1)
    x_next = torch.exp(-dt).view(view) * x64 + dt.view(view) * (b1.view(view) * x0 + b2.view(view) * x0_prev64)
    xn = x_next.float()
    sn = sigma_next_b.float()
    c_in = (1 - sn / (1 + sn)).view(view)
    net_in = xn * c_in
    net_in = (clean * mask5 + net_in * (1 - mask5)).to(net_dtype)
    return x0, x_next, net_in


@pytest.mark.parametrize("variant", VARIANTS + ["fused_op_only", "eager_official"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("net_dtype", [torch.float32, torch.bfloat16], ids=["net_fp32", "net_bf16"])
def test_sampler_step(benchmark, device, net_dtype, variant):
    v, x, p1, p2, clean, mask = _inputs(device, net_dtype)
    sampler = Sampler(SHAPE, num_steps=PASSES, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, device=device)
    coeffs, step = sampler.coeffs, sampler.step_index[2:3]  # a 2ab step with history
    ref_args = (v, x, p1, p2, clean, mask, coeffs, step)
    if variant == "eager_official":
        mask5 = mask.view(1, 1, -1, 1, 1)
        sig = multistep_plan("2ab", PASSES, SIGMA_MIN, SIGMA_MAX).sigmas.to(device)
        x64, p64 = x.double(), p1.double()
        ones = torch.ones(1, dtype=torch.float64, device=device)
        fn = lambda: _official_eager_step(v, x64, p64, clean, mask5, sig[2] * ones, sig[3] * ones,  # noqa: E731
                                          sig[1] * ones, net_dtype)
    elif variant == "fused_op_only":  # what Sampler calls: no Python checks
        op = step_ops.kernel_op(sampler.backend) if sampler.backend != "reference" else reference.sampler_step
        op_args = (*[step_ops.frames(t) for t in (v, x, p1, p2, clean)], mask, coeffs, step)
        fn = lambda: op(*op_args)  # noqa: E731
    else:
        step_fn = {"fused": sampler_step, "reference": reference.sampler_step,
                   "compile": compiled(reference.sampler_step)}[variant]
        fn = lambda: step_fn(*ref_args)  # noqa: E731
    dtype = str(net_dtype).removeprefix("torch.")
    measure(benchmark, f"sampler_step[{dtype},{device}]", variant, fn, device=device, net_dtype=dtype,
            elements=v.numel())


@pytest.mark.parametrize("variant", ["fused", "sample_float64"])
@pytest.mark.parametrize("device", DEVICES)
def test_sampler_loop(benchmark, device, variant):
    _, _, _, _, clean, mask = _inputs(device, torch.float32)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)).to(device) * SIGMA_MAX
    mask5 = mask.view(1, 1, -1, 1, 1)
    net = lambda net_in, timesteps, k: net_in * 0.5  # stands in for the DiT: only the sampler's own cost is timed
    sampler = Sampler(SHAPE, num_steps=PASSES, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, device=device)

    def official_x0_fn(x, sigma):  # the official denoise(): preconditioning and clean-frame replacement
        t = (sigma / (1 + sigma)).view(-1, 1, 1, 1, 1)
        net_in = clean * mask5 + x * (1 - t) * (1 - mask5)
        x0 = (1 - t) * x - t * net(net_in, None, 0)
        return clean * mask5 + x0 * (1 - mask5)

    kw = dict(num_steps=PASSES, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    fn = {"fused": lambda: sampler.run(net, noise, clean, mask),
          "sample_float64": lambda: sample(official_x0_fn, noise, **kw)}[variant]
    measure(benchmark, f"sampler_loop[{PASSES} passes,{device}]", variant, fn, device=device)


def test_solver_accuracy(benchmark):
    from bench.sampler_accuracy import PASSES as STUDY_PASSES
    from bench.sampler_accuracy import study

    result = {}
    measure(benchmark, "solver_accuracy[gaussian mixture]", "study",
            lambda: result.update(study(samples=64, ref_passes=1001)), rounds=1, warmup=0)
    policy = next(iter(result["settings"].values()))
    for solver, errs in policy["errors"].items():
        benchmark.extra_info[f"policy_{solver}_errors"] = [round(e, 5) for e in errs]
    benchmark.extra_info["passes"] = STUDY_PASSES
