"""What the diffusers tests share: diffusers resizes Cosmos' padding mask with torchvision, which the test
environment need not have."""

from __future__ import annotations

import types

import torch.nn.functional as F


def patch_nearest_resize(monkeypatch, transformer_module) -> None:
    """Without torchvision, give `transformer_module` the same NEAREST resize through `F.interpolate`."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        def resize(img, size, interpolation=None):
            return F.interpolate(img, size=list(size), mode="nearest")

        shim = types.SimpleNamespace(functional=types.SimpleNamespace(resize=resize),
                                     InterpolationMode=types.SimpleNamespace(NEAREST="nearest"))
        monkeypatch.setattr(transformer_module, "transforms", shim, raising=False)
