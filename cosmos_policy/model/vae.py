"""The Wan2.1 VAE of Cosmos-Predict2 (diffusers' `AutoencoderKLWan`), driven the way an action query needs it.

The encoder is causal in time and runs chunk by chunk with a feature cache: the first raw frame alone, then groups of
four. An action query reads only the clean prefix of the latent video (blank, proprio and current image frames), so
only the 13 (LIBERO) or 17 (RoboCasa, ALOHA) prefix frames are encoded. The first two chunks, the blank frame and the
four zero frames of the proprio slot, are the same for every query: their latents and the encoder's feature cache
after them are computed once and reused.

Latents are normalised per channel, `(mu - mean) / std`, with the Wan2.1 constants (spec 2); encode returns the
posterior mean; pixels enter as `uint8 / 127.5 - 1`, computed in the VAE's dtype.

Backends, as the network's: "reference" runs diffusers' modules as they are; "fused" patches them with
`cosmos_kernels.integrations.diffusers.apply_cosmos_kernels` (causal convs, norm + SiLU pairs; same numbers within
fp32 rounding). `for_backend` gives the other backend's VAE over the same parameters: a second module tree built on
the meta device and assigned the first one's tensors, so one tree is never patched for one policy and plain for
another.
"""

from __future__ import annotations

import os
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

from ..errors import missing_extra
from .checkpoint import corrupt_file, is_refusal, mismatch_summary, refusal
from .layout import TEMPORAL_COMPRESSION

LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip

OFFICIAL_VAE_SOURCE = "nvidia/Cosmos-Predict2-2B-Video2World (file tokenizer/tokenizer.pth)"

BACKENDS = ("fused", "reference")
EncoderState = list  # the encoder's causal feature cache: one entry per causal conv (tensor, "Rep" or None)


def to_pixels(frames_uint8: torch.Tensor, dtype: torch.dtype, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 -> [-1, 1] in `dtype` in the official order: cast to `dtype` first, then `/ 127.5` and `- 1` in `dtype`
    (in bf16 that rounds twice, and half of the 256 levels land one ulp away from the once-rounded value)."""
    return frames_uint8.to(device=device, dtype=dtype) / 127.5 - 1.0


def load_autoencoder(path: str | os.PathLike):
    """An `AutoencoderKLWan` from the official `tokenizer.pth` (Wan2.1 key names, converted with diffusers' own
    `convert_wan_vae_to_diffusers`), a diffusers model directory, or a diffusers-format `.safetensors` file.

    A damaged file raises `CorruptFileError` naming it; without diffusers, the error names the `[policy]` extra."""
    AutoencoderKLWan = autoencoder_class()
    path = Path(path)
    if path.is_dir():
        try:
            return AutoencoderKLWan.from_pretrained(path)
        except (OSError, ValueError) as err:
            raise corrupt_file(path, "diffusers AutoencoderKLWan directory", err) from None
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state_dict = load_file(str(path))
        except Exception as err:  # safetensors raises its own SafetensorError for a damaged header
            raise corrupt_file(path, "safetensors VAE file", err) from None
    elif path.suffix in (".pth", ".pt"):
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        except Exception as err:
            if is_refusal(err):
                raise refusal(path, err) from None
            raise corrupt_file(path, "VAE checkpoint (tokenizer.pth)", err) from None
        if isinstance(state_dict, dict) and "state_dict" in state_dict:
            state_dict = state_dict["state_dict"]
    else:
        raise ValueError(f"vae: expected a tokenizer .pth, a .safetensors file or a diffusers directory, got {path}")
    if not isinstance(state_dict, dict) or not state_dict:
        raise ValueError(f"vae: {path} holds no state dict")
    if "encoder.conv1.weight" in state_dict:  # official Wan2.1 key names
        from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

        state_dict = convert_wan_vae_to_diffusers(state_dict)
    if "encoder.conv_in.weight" not in state_dict:
        raise ValueError(f"vae: {path} is neither a Wan2.1 nor a diffusers AutoencoderKLWan state dict")
    base_dim = state_dict["encoder.conv_in.weight"].shape[0]
    z_dim = state_dict["quant_conv.weight"].shape[0] // 2
    model = AutoencoderKLWan(base_dim=base_dim, z_dim=z_dim)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ValueError(f"vae: {path} does not match AutoencoderKLWan: {mismatch_summary(missing, unexpected)}")
    return model


def autoencoder_class():
    """diffusers' `AutoencoderKLWan`, or the error naming the extra that brings diffusers."""
    try:
        from diffusers import AutoencoderKLWan
    except ImportError:
        raise missing_extra("diffusers", "policy") from None
    return AutoencoderKLWan


def _quiet_to(module, dtype):
    # diffusers warns about casting with .to(); every Wan module runs fine in bf16 (the official runtime does so)
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        return module.to(dtype=dtype)
    finally:
        diffusers_logging.set_verbosity(level)


def _sharing_copy(autoencoder):
    """A plain (unpatched) module tree of `autoencoder`'s class and config whose parameters are its tensors."""
    with torch.device("meta"):
        copy = type(autoencoder).from_config(autoencoder.config)
    copy.load_state_dict(autoencoder.state_dict(), assign=True)
    return copy.eval().requires_grad_(False)


def _set_kernels(autoencoder, backend: str) -> None:
    from cosmos_kernels.integrations.diffusers import apply_cosmos_kernels, is_patched

    if backend not in BACKENDS:
        raise ValueError(f"PolicyVAE: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "fused" and not is_patched(autoencoder):
        apply_cosmos_kernels(autoencoder)
    elif backend == "reference" and is_patched(autoencoder):
        raise ValueError("PolicyVAE: backend='reference' needs diffusers' own modules, but the autoencoder is patched "
                         "(remove_cosmos_kernels first, or pass backend='fused')")


class PolicyVAE:
    """Prefix encoding with a reusable encoder state, and decoding, for one `AutoencoderKLWan`; `backend="fused"`
    patches the autoencoder in place with cosmos_kernels (see the module docstring)."""

    def __init__(self, autoencoder, *, device=None, dtype: torch.dtype = torch.float32, max_cached_states: int = 4,
                 backend: str = "reference"):
        _set_kernels(autoencoder, backend)
        self.backend = backend
        if next(autoencoder.parameters()).dtype != dtype:
            autoencoder = _quiet_to(autoencoder, dtype)
        self.autoencoder = autoencoder.to(device=device).eval().requires_grad_(False)
        self.device = next(self.autoencoder.parameters()).device
        self.dtype = dtype
        z_dim = self.autoencoder.config.z_dim
        self.mean = torch.tensor(LATENTS_MEAN[:z_dim], device=self.device).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(LATENTS_STD[:z_dim], device=self.device).view(1, -1, 1, 1, 1)
        self._num_convs = self.autoencoder._cached_conv_counts["encoder"]
        # (batch, height, width) -> (latents of the constant chunks, encoder state after them)
        self._constant_prefix: OrderedDict[tuple, tuple[torch.Tensor, EncoderState]] = OrderedDict()
        self._max_cached_states = max_cached_states

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs) -> PolicyVAE:
        return cls(load_autoencoder(path), **kwargs)

    def for_backend(self, backend: str) -> PolicyVAE:
        """This VAE when it already runs `backend`, else one that does over the same parameters (no second copy
        of the weights; its own constant-prefix cache)."""
        if backend == self.backend:
            return self
        return PolicyVAE(_sharing_copy(self.autoencoder), device=self.device, dtype=self.dtype,
                         max_cached_states=self._max_cached_states, backend=backend)

    # -- encoding -------------------------------------------------------------------------------------------------

    def to_pixels(self, frames_uint8: torch.Tensor) -> torch.Tensor:
        return to_pixels(frames_uint8, self.dtype, self.device)  # in the VAE's dtype, as the official model does

    @torch.no_grad()
    def encode_chunks(self, chunks: list[torch.Tensor], state: EncoderState | None = None):
        """Run the causal encoder over raw-frame chunks (B, 3, t, H, W) in [-1, 1] (the first chunk of a video must be
        a single frame). Returns the normalised posterior means (B, z, len(chunks), H/8, W/8) and the encoder state."""
        state = list(state) if state is not None else [None] * self._num_convs
        outs = []
        for chunk in chunks:
            outs.append(self.autoencoder.encoder(chunk, feat_cache=state, feat_idx=[0]))
        moments = self.autoencoder.quant_conv(torch.cat(outs, dim=2))
        mu = moments[:, : self.autoencoder.config.z_dim].float()
        return (mu - self.mean) / self.std, state

    def _constant_chunks(self, batch: int, height: int, width: int):
        key = (batch, height, width)
        if key in self._constant_prefix:
            self._constant_prefix.move_to_end(key)
            return self._constant_prefix[key]
        zeros = self.to_pixels(torch.zeros(batch, 3, 1 + TEMPORAL_COMPRESSION, height, width, dtype=torch.uint8))
        latents, state = self.encode_chunks([zeros[:, :, :1], zeros[:, :, 1:]])
        self._constant_prefix[key] = (latents, state)
        while len(self._constant_prefix) > self._max_cached_states:
            self._constant_prefix.popitem(last=False)
        return latents, state

    @torch.no_grad()
    def encode_prefix(self, images: list[torch.Tensor], *, keep_state: bool = False):
        """Latents of [blank, zero proprio frames, image_1 x4, ..., image_k x4] for images uint8 (B, 3, H, W).

        Returns (B, z, 2 + k, H/8, W/8) normalised latents, and with `keep_state` the encoder state after the prefix
        (to continue the sequence, e.g. for the placeholder latents needed to decode future images)."""
        batch, _, height, width = images[0].shape
        constant_latents, state = self._constant_chunks(batch, height, width)
        chunks = [self.to_pixels(image)[:, :, None].expand(-1, -1, TEMPORAL_COMPRESSION, -1, -1) for image in images]
        image_latents, state = self.encode_chunks(chunks, state)
        latents = torch.cat([constant_latents, image_latents], dim=2)
        return (latents, state) if keep_state else latents

    @torch.no_grad()
    def encode_zero_chunks(self, count: int, state: EncoderState, batch: int, height: int, width: int):
        """Continue an encoder state with `count` chunks of zero images; returns their latents."""
        zeros = self.to_pixels(torch.zeros(batch, 3, TEMPORAL_COMPRESSION, height, width, dtype=torch.uint8))
        latents, _ = self.encode_chunks([zeros] * count, state)
        return latents

    @torch.no_grad()
    def encode_video(self, video_uint8: torch.Tensor) -> torch.Tensor:
        """A whole (B, 3, T, H, W) uint8 video through diffusers' own `encode` (normalised posterior mean)."""
        mu = self.autoencoder.encode(self.to_pixels(video_uint8)).latent_dist.mean.float()
        return (mu - self.mean) / self.std

    # -- decoding -------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, z, T, h, w) -> uint8 frames (B, 1 + 4 (T - 1), 8h, 8w, 3)."""
        z = (latents.float() * self.std + self.mean).to(self.dtype)
        video = self.autoencoder.decode(z).sample.float()
        frames = ((video + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)
        return frames.permute(0, 2, 3, 4, 1)

    def clear_cache(self) -> None:
        self._constant_prefix.clear()

    def cache_info(self) -> dict:
        return {"constant_prefix_states": len(self._constant_prefix)}
