"""Latent-frame layouts of the Cosmos Policy suites, and the injection / extraction of low-dimensional data.

A policy sample is a latent video (B, 16, T, 28, 28). Each latent frame holds one thing: the blank first frame, the
current proprio, the current camera images, the action chunk, the future proprio and images, and the value. Images
come from the VAE; actions, proprio and the value are written straight into their latent frame, tiled to fill it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

TEMPORAL_COMPRESSION = 4  # raw frames per latent frame after the first
SPATIAL_COMPRESSION = 8
IMAGE_SIZE = 224
LATENT_CHANNELS = 16


@dataclass(frozen=True)
class SuiteLayout:
    """Where each modality lives in the latent sequence of one suite (spec 3.1)."""

    name: str
    cameras: tuple[str, ...]  # observation keys of the current images, in latent-frame order (from frame 2 on)
    chunk_size: int
    action_dim: int
    proprio_dim: int
    num_steps: int  # denoising steps of the action query
    jpeg_compression: bool  # server-side JPEG round trip (spec 6)
    sigma_min: float = 4.0
    sigma_max: float = 80.0
    proprio_index: int = 1

    @property
    def num_conditional_frames(self) -> int:
        """Blank + proprio + current images: the clean latent frames of an action query."""
        return 2 + len(self.cameras)

    @property
    def camera_indices(self) -> dict[str, int]:
        return {camera: 2 + i for i, camera in enumerate(self.cameras)}

    @property
    def action_index(self) -> int:
        return self.num_conditional_frames

    @property
    def future_proprio_index(self) -> int:
        return self.action_index + 1

    @property
    def future_camera_indices(self) -> dict[str, int]:
        return {camera: self.future_proprio_index + 1 + i for i, camera in enumerate(self.cameras)}

    @property
    def value_index(self) -> int:
        return self.state_t - 1

    @property
    def state_t(self) -> int:
        """Latent frames: conditional frames, action, future proprio, future images, value."""
        return 2 * self.num_conditional_frames + 1

    @property
    def raw_frames(self) -> int:
        return 1 + TEMPORAL_COMPRESSION * (self.state_t - 1)

    @property
    def prefix_raw_frames(self) -> int:
        """Raw frames whose latents an action query reads: 13 (LIBERO) or 17 (the others)."""
        return 1 + TEMPORAL_COMPRESSION * (self.num_conditional_frames - 1)

    @property
    def placeholder_indices(self) -> tuple[int, ...]:
        """Frames whose content is injected, restored to their VAE latents before decoding future images."""
        return (0, self.proprio_index, self.action_index, self.future_proprio_index)


LIBERO = SuiteLayout(
    name="libero",
    cameras=("wrist_image", "primary_image"),
    chunk_size=16,
    action_dim=7,
    proprio_dim=9,
    num_steps=5,
    jpeg_compression=True,
)
ROBOCASA = SuiteLayout(
    name="robocasa",
    cameras=("wrist_image", "primary_image", "secondary_image"),
    chunk_size=32,
    action_dim=7,
    proprio_dim=9,
    num_steps=5,
    jpeg_compression=True,
)
ALOHA = SuiteLayout(
    name="aloha",
    cameras=("left_wrist_image", "right_wrist_image", "primary_image"),
    chunk_size=50,
    action_dim=14,
    proprio_dim=14,
    num_steps=10,
    jpeg_compression=False,
)
LAYOUTS: dict[str, SuiteLayout] = {layout.name: layout for layout in (LIBERO, ROBOCASA, ALOHA)}


def get_layout(suite: str) -> SuiteLayout:
    if suite not in LAYOUTS:
        raise ValueError(f"suite: expected one of {sorted(LAYOUTS)}, got {suite!r}")
    return LAYOUTS[suite]


# ----------------------------------------------------------------------------------------------------------------------
# Injection and extraction (spec 3.2)


def tile_into_frame(values: torch.Tensor, frame_shape: tuple[int, int, int]) -> torch.Tensor:
    """(B, N) -> (B, C, H, W): repeat the row-major values end to end (ceil division), truncate, reshape C-major."""
    if values.dim() != 2:
        raise ValueError(f"values: expected shape (B, N), got {tuple(values.shape)}")
    batch, count = values.shape
    numel = math.prod(frame_shape)
    if count == 0 or count > numel:
        raise ValueError(f"values: expected 1..{numel} values per sample to fill a {frame_shape} frame, got {count}")
    copies = -(-numel // count)
    return values.repeat(1, copies)[:, :numel].reshape(batch, *frame_shape)


def average_full_copies(frame: torch.Tensor, count: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, count): the mean over the complete copies of a tiled vector (the partial tail is dropped)."""
    batch = frame.shape[0]
    flat = frame.reshape(batch, -1)
    if count == 0 or count > flat.shape[1]:
        raise ValueError(f"count: expected 1..{flat.shape[1]}, got {count}")
    copies = flat.shape[1] // count
    # float64 sums of at most a few hundred copies are exact, so a clean tiling comes back bit for bit
    return flat[:, : copies * count].reshape(batch, copies, count).double().mean(dim=1).to(frame.dtype)


def inject_actions(latents: torch.Tensor, actions: torch.Tensor, index: int) -> torch.Tensor:
    """Write normalised actions (B, chunk, dim) into latent frame `index` of (B, C, T, H, W); returns a new tensor."""
    out = latents.clone()
    out[:, :, index] = tile_into_frame(actions.reshape(actions.shape[0], -1).to(latents.dtype), _frame_shape(latents))
    return out


def extract_actions(latents: torch.Tensor, index: int, chunk_size: int, action_dim: int) -> torch.Tensor:
    """Normalised actions (B, chunk, dim) from latent frame `index`: the average over the full tiled copies."""
    mean = average_full_copies(latents[:, :, index], chunk_size * action_dim)
    return mean.reshape(latents.shape[0], chunk_size, action_dim)


def inject_proprio(latents: torch.Tensor, proprio: torch.Tensor, index: int) -> torch.Tensor:
    """Write normalised proprio (B, dim) into latent frame `index`; returns a new tensor."""
    out = latents.clone()
    out[:, :, index] = tile_into_frame(proprio.to(latents.dtype), _frame_shape(latents))
    return out


def extract_proprio(latents: torch.Tensor, index: int, proprio_dim: int) -> torch.Tensor:
    return average_full_copies(latents[:, :, index], proprio_dim)


def inject_value(latents: torch.Tensor, value: torch.Tensor, index: int) -> torch.Tensor:
    """Broadcast a value in [0, 1] (B,), stored as 2v - 1, over latent frame `index`; returns a new tensor."""
    _frame_shape(latents)
    out = latents.clone()
    out[:, :, index] = (2 * value.to(latents.dtype) - 1).reshape(-1, 1, 1, 1)
    return out


def extract_value(latents: torch.Tensor, index: int) -> torch.Tensor:
    """The mean over the whole value frame, mapped from [-1, 1] to [0, 1] and clipped: (B,)."""
    mean = latents[:, :, index].reshape(latents.shape[0], -1).double().mean(dim=1)
    return ((mean + 1) / 2).clamp(0.0, 1.0).to(latents.dtype)


def _frame_shape(latents: torch.Tensor) -> tuple[int, int, int]:
    if latents.dim() != 5:
        raise ValueError(f"latents: expected shape (B, C, T, H, W), got {tuple(latents.shape)}")
    return (latents.shape[1], latents.shape[3], latents.shape[4])


# ----------------------------------------------------------------------------------------------------------------------
# Dataset statistics (min / max normalisation to [-1, 1])


@dataclass(frozen=True)
class DatasetStatistics:
    actions_min: np.ndarray
    actions_max: np.ndarray
    proprio_min: np.ndarray
    proprio_max: np.ndarray

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> DatasetStatistics:
        """Read `<suite>_dataset_statistics.json`; a damaged file raises `CorruptFileError` naming it."""
        from ..errors import CorruptFileError

        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CorruptFileError(f"{os.fspath(path)}: corrupt dataset statistics, not valid JSON ({err})") from None
        if not isinstance(raw, dict):
            raise CorruptFileError(f"{os.fspath(path)}: dataset statistics must be a JSON object, "
                                   f"got {type(raw).__name__}")
        try:
            return cls.from_dict(raw, source=os.fspath(path))
        except (TypeError, ValueError) as err:  # ragged or non-numeric lists
            raise CorruptFileError(str(err) if os.fspath(path) in str(err) else f"{os.fspath(path)}: {err}") from None

    @classmethod
    def from_dict(cls, raw: dict, source: str = "statistics") -> DatasetStatistics:
        missing = [k for k in ("actions_min", "actions_max", "proprio_min", "proprio_max") if k not in raw]
        if missing:
            raise ValueError(f"{source}: missing keys {missing}")
        arrays = {k: np.asarray(raw[k], dtype=np.float64).reshape(-1) for k in ("actions_min", "actions_max")}
        arrays.update({k: np.asarray(raw[k], dtype=np.float64).reshape(-1) for k in ("proprio_min", "proprio_max")})
        for kind in ("actions", "proprio"):
            if arrays[f"{kind}_min"].shape != arrays[f"{kind}_max"].shape:
                raise ValueError(f"{source}: {kind}_min and {kind}_max differ in length")
        return cls(**arrays)

    def to_dict(self) -> dict:
        return {k: getattr(self, k).tolist() for k in ("actions_min", "actions_max", "proprio_min", "proprio_max")}

    @property
    def action_dim(self) -> int:
        return self.actions_min.shape[0]

    @property
    def proprio_dim(self) -> int:
        return self.proprio_min.shape[0]

    def normalize_proprio(self, proprio: np.ndarray) -> np.ndarray:
        return 2 * ((proprio - self.proprio_min) / (self.proprio_max - self.proprio_min)) - 1

    def normalize_actions(self, actions: np.ndarray) -> np.ndarray:
        return 2 * ((actions - self.actions_min) / (self.actions_max - self.actions_min)) - 1

    def unnormalize_actions(self, actions: np.ndarray) -> np.ndarray:
        return 0.5 * (actions + 1) * (self.actions_max - self.actions_min) + self.actions_min
