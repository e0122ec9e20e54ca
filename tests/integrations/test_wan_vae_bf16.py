"""The patched Wan VAE in bf16: its error against a float64 run of diffusers' VAE is at most twice diffusers' own
bf16 error, for encode and decode, on odd sizes (T = 1, 5, 9; H, W not multiples of 16; batch 2)."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import AutoencoderKLWan  # noqa: E402

from cosmos_kernels.integrations.diffusers import apply_cosmos_kernels  # noqa: E402


def _vae() -> AutoencoderKLWan:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        model = AutoencoderKLWan(base_dim=12, z_dim=4, num_res_blocks=1)
        for name, param in model.named_parameters():
            if name.endswith("gamma"):
                param.data.uniform_(0.5, 1.5)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def models():
    base = _vae()
    fused = copy.deepcopy(base).to(torch.bfloat16)
    apply_cosmos_kernels(fused)
    return {"float64": copy.deepcopy(base).double(), "diffusers": copy.deepcopy(base).to(torch.bfloat16),
            "fused": fused}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b).norm() / b.norm()).item()


@pytest.mark.parametrize("t,h,w", [(1, 24, 40), (5, 18, 26), (9, 40, 24)])
def test_bf16_error_at_most_twice_diffusers(models, t, h, w, gen):
    x = torch.rand(2, 3, t, h, w, generator=gen, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        mu = {k: m.encode(x.to(next(m.parameters()).dtype)).latent_dist.mean for k, m in models.items()}
        z = mu["float64"]
        pixels = {k: m.decode(z.to(next(m.parameters()).dtype)).sample for k, m in models.items()}
    for name, out in (("encode", mu), ("decode", pixels)):
        truth = out["float64"]
        assert out["fused"].dtype == torch.bfloat16 and out["fused"].shape == truth.shape
        diffusers_err, fused_err = _rel(out["diffusers"], truth), _rel(out["fused"], truth)
        assert 0 < diffusers_err < 0.1, (name, diffusers_err)  # bf16 rounding, not a broken reference
        assert fused_err <= 2 * diffusers_err, (name, fused_err, diffusers_err)
