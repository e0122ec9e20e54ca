"""Shared helpers for the network tests: a tiny DiT with random weights and matching random inputs."""

from __future__ import annotations

import torch

from cosmos_policy import CosmosDiT, DiTConfig


def random_dit(gen: torch.Generator, backend: str = "reference", **config_overrides) -> CosmosDiT:
    """A tiny DiT whose every weight is random (so no term of the forward is trivially zero)."""
    model = CosmosDiT(DiTConfig.tiny(**config_overrides), backend=backend)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = 0.3 if "norm" in name else 1.0 / p.shape[-1] ** 0.5
            p.copy_(torch.randn(p.shape, generator=gen) * std + (1.0 if "norm" in name else 0.0))
    return model.eval()


def random_inputs(gen: torch.Generator, config: DiTConfig, b: int = 1, t: int = 3, h: int = 8, w: int = 6,
                  n_text: int = 7, n_cond: int = 1) -> dict[str, torch.Tensor]:
    """Inputs as the policy builds them: per-frame times (0 on conditional frames) and a condition mask."""
    times = torch.rand(b, t, generator=gen) * 0.9 + 0.05
    times[:, :n_cond] = 0.0
    cond = torch.zeros(b, 1, t, h, w)
    cond[:, :, :n_cond] = 1.0
    return dict(
        x_B_C_T_H_W=torch.randn(b, config.in_channels, t, h, w, generator=gen),
        timesteps_B_T=times,
        crossattn_emb=torch.randn(b, n_text, config.text_channels, generator=gen),
        condition_video_input_mask_B_C_T_H_W=cond,
    )


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    assert got.shape == want.shape, (got.shape, want.shape)
    assert torch.isfinite(got).all(), "output has non-finite values"
    return ((got.double() - want.double()).norm() / want.double().norm()).item()
