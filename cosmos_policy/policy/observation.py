"""Observations: the checks a query makes before anything in the policy changes, and their preparation
(the official server's image preprocessing, proprio normalisation) into the batch the network reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ..model import layout as L
from .preprocess import prepare_image


@dataclass
class Prepared:
    images: list[torch.Tensor]  # per camera, uint8 (B, 3, size, size) on the policy's device
    proprio: torch.Tensor  # normalised, (B, proprio_dim) float32
    instructions: list[str]


Checked = tuple[list[np.ndarray], np.ndarray, str]


def check_observation(obs, layout: L.SuiteLayout, name: str) -> Checked:
    """(images per camera, proprio float64, instruction) of one observation dict; ValueError naming the key."""
    if not isinstance(obs, Mapping):
        raise ValueError(f"{name}: expected a dict observation, got {type(obs).__name__}")
    images = []
    for camera in layout.cameras:
        if camera not in obs:
            raise ValueError(f"{name}: missing camera {camera!r} (the {layout.name} policy needs "
                             f"{list(layout.cameras)})")
        image = obs[camera]
        shape = getattr(image, "shape", None)
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 \
                or min(image.shape[:2]) < 1:
            kind = f"{image.dtype} {shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"{name}[{camera!r}]: expected a uint8 numpy image (H, W, 3), got {kind}")
        images.append(image)
    if "proprio" not in obs:
        raise ValueError(f"{name}: missing 'proprio' ({layout.proprio_dim} values)")
    try:
        proprio = np.asarray(obs["proprio"], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}['proprio']: expected {layout.proprio_dim} numbers") from None
    if proprio.ndim != 1 or proprio.shape[0] != layout.proprio_dim:
        raise ValueError(f"{name}['proprio']: expected {layout.proprio_dim} values (shape "
                         f"({layout.proprio_dim},)), got shape {proprio.shape}")
    if not np.isfinite(proprio).all():
        raise ValueError(f"{name}['proprio']: has non-finite values")
    if "task_description" not in obs or not isinstance(obs["task_description"], str):
        raise ValueError(f"{name}: missing 'task_description' (the instruction string)")
    return images, proprio, obs["task_description"]


def prepare(checked: list[Checked], layout: L.SuiteLayout, statistics: L.DatasetStatistics, device: torch.device,
            dtype: torch.dtype, *, trained_with_image_aug: bool, image_size: int) -> Prepared:
    per_camera = []
    for c in range(len(layout.cameras)):
        batch = np.stack([prepare_image(images[c], jpeg_compression=layout.jpeg_compression,
                                        trained_with_image_aug=trained_with_image_aug, size=image_size)
                          for images, _, _ in checked])
        per_camera.append(torch.from_numpy(batch).permute(0, 3, 1, 2).to(device))
    proprio = np.stack([statistics.normalize_proprio(p) for _, p, _ in checked])
    # the official batch carries the proprio in the network's dtype: round it the same way
    proprio_t = torch.from_numpy(proprio).to(dtype).to(device=device, dtype=torch.float32)
    return Prepared(per_camera, proprio_t, [instruction for _, _, instruction in checked])


def synthetic_observation(layout: L.SuiteLayout, statistics: L.DatasetStatistics, instruction: str) -> dict:
    """An observation of the suite's shapes: grey images, the proprio at the middle of its range."""
    size = L.IMAGE_SIZE
    obs: dict = {camera: np.full((size, size, 3), 128, dtype=np.uint8) for camera in layout.cameras}
    obs["proprio"] = (np.asarray(statistics.proprio_min) + np.asarray(statistics.proprio_max)) / 2
    obs["task_description"] = instruction
    return obs
