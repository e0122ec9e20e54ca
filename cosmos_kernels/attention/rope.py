"""The 3D rotary tables of Cosmos-style video DiTs (`VideoRopePosition3DEmb`), as cos / sin tables.

The head dim is split into temporal / height / width bands (44 / 42 / 42 for head_dim 128): each band
rotates with its own integer position (frame, row, column of the patchified latent grid) and its own
NTK-scaled base. Tables are laid out `[t h w | t h w]` for the non-interleaved rotate-half convention,
one row per token in `(t, h, w)` order.
"""

from __future__ import annotations

import torch


def rope_band_dims(head_dim: int) -> tuple[int, int, int]:
    """(dim_t, dim_h, dim_w): the head-dim width of the temporal, height and width bands."""
    dim_h = head_dim // 6 * 2
    return head_dim - 2 * dim_h, dim_h, dim_h


def _check_args(T: int, H: int, W: int, head_dim: int) -> None:
    for name, value in (("T", T), ("H", H), ("W", W), ("head_dim", head_dim)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"rope_3d_tables: {name} must be an int, got {type(value).__name__}")
    for name, value in (("T", T), ("H", H), ("W", W)):
        if value < 1:
            raise ValueError(f"rope_3d_tables: {name} must be at least 1, got {value}")
    if head_dim < 12 or head_dim % 2:
        raise ValueError(f"rope_3d_tables: head_dim must be even and at least 12 (three bands of at least 4), "
                         f"got {head_dim}")


def rope_3d_angles(
    T: int,
    H: int,
    W: int,
    head_dim: int,
    *,
    h_extrapolation_ratio: float = 1.0,
    w_extrapolation_ratio: float = 1.0,
    t_extrapolation_ratio: float = 1.0,
    base: float = 10000.0,
    ranges_bf16: bool = False,
) -> torch.Tensor:
    """The rotation angles, `(T*H*W, head_dim)` float32, computed in float32 as the official module does."""
    _check_args(T, H, W, head_dim)
    dim_t, dim_h, dim_w = rope_band_dims(head_dim)
    spatial_range = torch.arange(0, dim_h, 2)[: dim_h // 2].float() / dim_h
    temporal_range = torch.arange(0, dim_t, 2)[: dim_t // 2].float() / dim_t
    if ranges_bf16:
        # The official runtime holds these exponent ranges in bf16 buffers (the net is cast before loading).
        spatial_range = spatial_range.to(torch.bfloat16).float()
        temporal_range = temporal_range.to(torch.bfloat16).float()
    # NTK-aware scaling: stretch each band's base by ratio ** (dim / (dim - 2)).
    theta_h = base * h_extrapolation_ratio ** (dim_h / (dim_h - 2))
    theta_w = base * w_extrapolation_ratio ** (dim_w / (dim_w - 2))
    theta_t = base * t_extrapolation_ratio ** (dim_t / (dim_t - 2))
    freqs_h = 1.0 / theta_h**spatial_range
    freqs_w = 1.0 / theta_w**spatial_range
    freqs_t = 1.0 / theta_t**temporal_range
    angle_t = torch.outer(torch.arange(T, dtype=torch.float32), freqs_t)  # (T, dim_t / 2)
    angle_h = torch.outer(torch.arange(H, dtype=torch.float32), freqs_h)  # (H, dim_h / 2)
    angle_w = torch.outer(torch.arange(W, dtype=torch.float32), freqs_w)  # (W, dim_w / 2)
    half = torch.cat(
        [
            angle_t[:, None, None, :].expand(T, H, W, -1),
            angle_h[None, :, None, :].expand(T, H, W, -1),
            angle_w[None, None, :, :].expand(T, H, W, -1),
        ],
        dim=-1,
    ).reshape(T * H * W, head_dim // 2)
    return torch.cat([half, half], dim=-1)


def rope_3d_tables(
    T: int,
    H: int,
    W: int,
    head_dim: int,
    *,
    h_extrapolation_ratio: float = 1.0,
    w_extrapolation_ratio: float = 1.0,
    t_extrapolation_ratio: float = 1.0,
    base: float = 10000.0,
    ranges_bf16: bool = False,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(cos, sin)`, each `(T*H*W, head_dim)` float32: the 3D RoPE of a `T x H x W` latent token grid.

    Matches `VideoRopePosition3DEmb` (no fps modulation): bands of 44 / 42 / 42 dims for head_dim 128,
    base 10000 scaled per band by `ratio ** (dim / (dim - 2))`, layout `[t h w | t h w]`. Cosmos-Predict2
    2B uses ratios h / w / t = 3 / 3 / 1. `ranges_bf16=True` rounds the frequency exponents to bf16, as the
    official runtime does after casting the network (and its buffers) to bf16 before loading weights.
    Use with `qk_norm_rope` / `attention` (rotate-half convention: `x * cos + rotate_half(x) * sin`).
    """
    angles = rope_3d_angles(T, H, W, head_dim, h_extrapolation_ratio=h_extrapolation_ratio,
                            w_extrapolation_ratio=w_extrapolation_ratio, t_extrapolation_ratio=t_extrapolation_ratio,
                            base=base, ranges_bf16=ranges_bf16)
    return angles.cos().to(device), angles.sin().to(device)
