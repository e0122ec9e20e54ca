"""Action queries of Cosmos-Predict2.5 policies: rectified flow sampled with the official UniPC.

The network predicts the velocity `v = eps - x0` of `x_sigma = (1 - sigma) x0 + sigma eps` (no preconditioning);
the sampler (`cosmos_kernels.sampling.flow_unipc`) starts from the unscaled noise `eps` and runs in float32, with the
official shift (5 in the LIBERO and RoboCasa evaluations). At every step the conditional frames enter the network
clean (`gt`, timestep 0) and their velocity is replaced by `eps - gt` (`eps` the initial noise), as the official
`denoise_replace_gt_frames` does; the other frames get the integer timestep `floor(1000 sigma)` as a float32, which
the network scales by 0.001 itself. The condition frames and the proprio injection are those of Predict2.

Each sample is stepped from its own state (the official pipeline steps sample 0 for the whole batch; its
evaluations run one sample at a time, where both agree).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from cosmos_kernels.sampling import sample_flow_unipc

OFFICIAL_SHIFT = 5.0
VARIANTS = ("predict2", "predict2.5")


def network_variant(network) -> str:
    """"predict2.5" for a network with the Reason1 text projection (`crossattn_proj`), else "predict2"."""
    config = getattr(network, "config", None)
    return "predict2.5" if getattr(config, "crossattn_proj_in_channels", None) is not None else "predict2"


def check_variant(network, variant: str | None, path) -> None:
    """ValueError naming `variant` when it is given and the loaded network (from `path`) is of the other one."""
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
    if variant is not None and network_variant(network) != variant:
        raise ValueError(f"variant: {variant!r} given, but {path} holds a {network_variant(network)} network")


def check_shift(shift, variant: str) -> float | None:
    """The sampler's shift: the official 5 by default for Predict2.5; None for Predict2 (which has no shift)."""
    if variant != "predict2.5":
        if shift is not None:
            raise ValueError(f"shift: only Cosmos-Predict2.5 (rectified-flow) policies take a shift; this {variant} "
                             "policy samples with the EDM sampler")
        return None
    if shift is None:
        return OFFICIAL_SHIFT
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not math.isfinite(shift) or shift <= 0:
        raise ValueError(f"shift: expected a finite number > 0, got {shift!r}")
    return float(shift)


def attach_projection(text, network) -> None:
    """Make `text` (a `TextEmbeddings`) keep only projected contexts on the device.

    Each instruction's Reason1 embedding (1, 512, 100352) bf16, about 103 MB, stays on the host; at its first query it
    is copied to the device, projected there by the network's `crossattn_proj` (one (512 x 100352) @ (100352 x 1024)
    GEMM) and dropped, keeping the (1, 512, 1024) context. The projection runs on the device rather than the host
    because its weight (205 MB) lives there with the network, and it is the official computation as one GEMM (a host
    projection would need a second copy of the weight and seconds of CPU time; row chunks on the device would change
    the GEMM's shape and so possibly its rounding)."""
    if text.projection is None:
        text.projection = network.project_context


def flow_velocity_fn(network, gt: torch.Tensor, context: torch.Tensor, noise: torch.Tensor,
                     cond_frames: torch.Tensor, cond_mask: torch.Tensor) -> Callable:
    """`denoise(x, t)` of the Predict2.5 policy (Predict2.5 spec 4.2): `t` float32 (B,) network timesteps,
    `cond_frames` (T,) bool, `cond_mask` its (1, 1, T, 1, 1) float32 form (one tensor across queries)."""
    cond = cond_frames.view(1, 1, -1, 1, 1)
    clean_velocity = noise - gt

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        net_in = torch.where(cond, gt, x)
        timesteps = torch.where(cond_frames, 0.0, t[:, None].to(torch.float32))
        velocity = network(net_in, timesteps, context, cond_mask).float()
        return torch.where(cond, clean_velocity, velocity)

    return denoise


def sample_flow(network, gt: torch.Tensor, context: torch.Tensor, noise: torch.Tensor, cond_frames: torch.Tensor,
                cond_mask: torch.Tensor, num_steps: int, shift: float) -> torch.Tensor:
    """Float32 latents (B, C, T, H, W) sampled from `noise` (float32, unscaled) with the official UniPC."""
    denoise = flow_velocity_fn(network, gt, context, noise, cond_frames, cond_mask)
    return sample_flow_unipc(denoise, noise, num_steps, shift)
