"""Server-side image preprocessing of the official policy (spec 6), in its order.

1. JPEG round trip at quality 95 (LIBERO and RoboCasa were trained on JPEG-compressed frames);
2. PIL resize to 224 x 224 (PIL's default filter, as the official `resize_images`);
3. when the checkpoint was trained with image augmentation: a centre crop to int(224 * sqrt(0.9)) = 212 and a resize
   back to 224 (bilinear with antialiasing, rounded back to uint8, as torchvision's tensor resize does).

Flipping or rotating the simulator's render is the client's job and is not done here. The last step is the VAE's
`to_pixels` (`cosmos_policy/model/vae.py`), on the policy's device: uint8 -> [-1, 1] in the network's dtype, as the
official model normalises its video input.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F

from ..model.layout import IMAGE_SIZE

JPEG_QUALITY = 95


def jpeg_round_trip(image: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return np.array(Image.open(buffer))


def resize_square(image: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """PIL resize with its default filter; an image already at the size is returned as a copy."""
    from PIL import Image

    if image.shape[:2] == (size, size):
        return image.copy()
    return np.array(Image.fromarray(image).resize((size, size)))


def center_crop_and_resize(image: np.ndarray, area_fraction: float = 0.9) -> np.ndarray:
    """The test-time counterpart of the training random-resized-crop: the central `area_fraction` of the image."""
    height, width = image.shape[:2]
    crop = int(height * math.sqrt(area_fraction))
    top = int(round((height - crop) / 2.0))
    left = int(round((width - crop) / 2.0))
    cropped = torch.from_numpy(np.ascontiguousarray(image[top : top + crop, left : left + crop]))
    chw = cropped.permute(2, 0, 1)[None].float()
    resized = F.interpolate(chw, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()


def prepare_image(
    image: np.ndarray, *, jpeg_compression: bool, trained_with_image_aug: bool, size: int = IMAGE_SIZE
) -> np.ndarray:
    """One camera image, uint8 (H, W, 3) -> uint8 (size, size, 3), as the official server prepares it."""
    if jpeg_compression:
        image = jpeg_round_trip(image)
    image = resize_square(image, size)
    if trained_with_image_aug:
        image = center_crop_and_resize(image)
    return image
