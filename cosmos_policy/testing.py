"""Tiny random-weight checkpoints in the official file formats, for tests, demos and benchmarks.

`write_tiny_checkpoint(directory, suite="libero")` writes what the official policy repositories hold (the network `.pt`
with `net.` keys, `<suite>_t5_embeddings.pkl`, `<suite>_dataset_statistics.json`), the Wan2.1 VAE as the official
`tokenizer/tokenizer.pth` (Wan2.1 key names), and `network_config.json`, the one extra file our loader needs for a
network of a non-official size. The T5 embeddings are like real ones: non-zero only for the instruction's tokens.

`variant="predict2.5"` writes a Cosmos-Predict2.5 policy as published: `model.pt` (the network with `crossattn_proj`,
as in the `robot/policy/<suite>` folder of nvidia/Cosmos-Predict2.5-2B) and `reason1_embeddings.pkl` (bf16 Reason1-like
text, non-zero at every position, padding included, 96 wide in the tiny config instead of 100352) instead of the T5
pickle; the statistics, VAE and `network_config.json` as for Predict2.

Without diffusers (the Wan2.1 VAE is its `AutoencoderKLWan`), `write_tiny_checkpoint(..., vae=False)` and
`tiny_policy` give a policy on `StandInVAE`: the network, the sampler and CUDA graphs run as they do for real.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import torch

from .model.layout import IMAGE_SIZE, TEMPORAL_COMPRESSION, get_layout
from .model.text import TEXT_TOKENS
from .model.vae import to_pixels
from .policy.files import NETWORK_CONFIG_FILE

LIBERO_SAMPLE_TASK = "put both the alphabet soup and the tomato sauce in the basket"
TINY_VAE_BASE_DIM = 16

CHECKPOINT_NAMES = {
    "libero": "Cosmos-Policy-LIBERO-Predict2-2B.pt",
    "robocasa": "Cosmos-Policy-RoboCasa-Predict2-2B.pt",
    "aloha": "Cosmos-Policy-ALOHA-Predict2-2B.pt",
}
PREDICT2_5_NAMES = ("model.pt", "reason1_embeddings.pkl")  # the network, the text pickle of a Predict2.5 policy
PLANNING_CHECKPOINT_NAME = "Cosmos-Policy-ALOHA-Planning-Model-Predict2-2B.pt"

_RESIDUAL_NAMES = (
    ("norm1.", "residual.0."),
    ("conv1.", "residual.2."),
    ("norm2.", "residual.3."),
    ("conv2.", "residual.6."),
    ("conv_shortcut.", "shortcut."),
)


def _wan_residual(tail: str) -> str:
    for ours, theirs in _RESIDUAL_NAMES:
        if tail.startswith(ours):
            return theirs + tail[len(ours) :]
    return tail


def _wan_key(key: str) -> str:
    """A diffusers `AutoencoderKLWan` key -> the Wan2.1 (official `tokenizer.pth`) key."""
    if key.startswith("quant_conv."):
        return "conv1." + key[len("quant_conv.") :]
    if key.startswith("post_quant_conv."):
        return "conv2." + key[len("post_quant_conv.") :]
    side, rest = key.split(".", 1)
    for ours, theirs in (("conv_in.", "conv1."), ("norm_out.", "head.0."), ("conv_out.", "head.2.")):
        if rest.startswith(ours):
            return f"{side}.{theirs}{rest[len(ours):]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d)\.(.*)", rest):
        return f"{side}.middle.{2 * int(m[1])}.{_wan_residual(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.*)", rest):
        return f"{side}.middle.1.{m[1]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(.*)", rest):
        return f"{side}.downsamples.{m[1]}.{_wan_residual(m[2])}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", rest):
        return f"{side}.upsamples.{4 * int(m[1]) + int(m[2])}.{_wan_residual(m[3])}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)", rest):
        return f"{side}.upsamples.{4 * int(m[1]) + 3}.{m[2]}"
    raise ValueError(f"no Wan2.1 name for VAE key {key!r}")


def to_wan_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official Wan2.1 layout of a diffusers VAE state dict, checked against diffusers' own converter."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    wan = {_wan_key(k): v for k, v in state_dict.items()}
    back = convert_wan_vae_to_diffusers(dict(wan))
    if set(back) != set(state_dict) or any(back[k] is not state_dict[k] for k in state_dict):
        raise RuntimeError("Wan2.1 key names do not convert back to the diffusers ones")
    return wan


def tiny_autoencoder(seed: int = 0, base_dim: int = TINY_VAE_BASE_DIM):
    """A random `AutoencoderKLWan` with the real structure (8x spatial, 4x causal temporal, 16 latent channels)."""
    from diffusers import AutoencoderKLWan

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoencoderKLWan(base_dim=base_dim, z_dim=16)
        for name, param in model.named_parameters():
            if name.endswith("gamma"):  # RMS-norm scales away from 1, so every weight matters
                param.data.uniform_(0.5, 1.5)
    return model.eval()


def instruction_tokens(instruction: str) -> int:
    """About the T5 token count of an instruction: ~1.3 pieces per word, plus the end-of-sequence token."""
    return min(TEXT_TOKENS, max(1, round(1.3 * len(instruction.split()))) + 1)


def t5_like_embedding(instruction: str, dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(1, 512, dim) random text embedding shaped like a real T5 one: non-zero for the instruction's tokens (tens),
    zero from there up to 512, as the official embeddings are padded."""
    embedding = torch.zeros(1, TEXT_TOKENS, dim)
    tokens = instruction_tokens(instruction)
    embedding[:, :tokens] = torch.randn(1, tokens, dim, generator=generator)
    return embedding


def reason1_like_embedding(dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(1, 512, dim) bf16 random text embedding shaped like a Reason1 one: every position non-zero (the padding
    tokens' hidden states are not zeroed), each row normalised to mean 0, standard deviation 1 as the official
    per-layer normalisation leaves it."""
    rows = torch.randn(1, TEXT_TOKENS, dim, generator=generator)
    rows = (rows - rows.mean(-1, keepdim=True)) / (rows.std(-1, keepdim=True) + 1e-8)
    return rows.to(torch.bfloat16)


def tiny_statistics(suite: str, seed: int = 0) -> dict:
    layout = get_layout(suite)
    rng = np.random.default_rng(seed)
    actions_min = -rng.uniform(0.5, 1.5, layout.action_dim)
    proprio_min = -rng.uniform(0.5, 1.5, layout.proprio_dim)
    return {
        "actions_min": actions_min.tolist(),
        "actions_max": (actions_min + rng.uniform(1.0, 3.0, layout.action_dim)).tolist(),
        "proprio_min": proprio_min.tolist(),
        "proprio_max": (proprio_min + rng.uniform(1.0, 3.0, layout.proprio_dim)).tolist(),
    }


def write_tiny_checkpoint(
    directory: str | os.PathLike,
    suite: str = "libero",
    instructions: tuple[str, ...] = (LIBERO_SAMPLE_TASK,),
    seed: int = 0,
    network_config=None,
    image_size: int = IMAGE_SIZE,
    vae: bool = True,
    variant: str = "predict2",
) -> Path:
    """Write a random tiny checkpoint for `suite` into `directory` (created if needed); returns the directory.

    `image_size` other than 224 (a multiple of 16) makes a smaller latent video, for quick CPU tests. `vae=False`
    leaves the VAE out (it needs diffusers): load the directory with `tiny_policy`. `variant="predict2.5"`: a
    Predict2.5 policy (default network `DiTConfig.tiny_predict2_5()`)."""
    from .model.checkpoint import save_network_checkpoint
    from .model.config import DiTConfig

    get_layout(suite)  # validates the suite name
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if variant not in ("predict2", "predict2.5"):
        raise ValueError(f"variant: expected 'predict2' or 'predict2.5', got {variant!r}")
    flow = variant == "predict2.5"
    default = DiTConfig.tiny_predict2_5() if flow else DiTConfig.tiny()
    config = network_config if network_config is not None else default

    with torch.random.fork_rng(devices=[]):
        network = _tiny_network(config, seed)
        embeddings = {instruction: reason1_like_embedding(config.text_channels) if flow else
                      t5_like_embedding(instruction, config.crossattn_emb_channels) for instruction in instructions}
    network_name, text_name = PREDICT2_5_NAMES if flow else (CHECKPOINT_NAMES[suite], f"{suite}_t5_embeddings.pkl")
    save_network_checkpoint(network.state_dict(), directory / network_name)
    extra = {"suite": suite, "image_size": image_size, "network": config.to_dict()}
    (directory / NETWORK_CONFIG_FILE).write_text(json.dumps(extra, indent=2))
    with open(directory / text_name, "wb") as f:
        pickle.dump(embeddings, f)
    (directory / f"{suite}_dataset_statistics.json").write_text(json.dumps(tiny_statistics(suite, seed), indent=2))

    if vae:
        (directory / "tokenizer").mkdir(exist_ok=True)
        torch.save(to_wan_state_dict(tiny_autoencoder(seed).state_dict()), directory / "tokenizer" / "tokenizer.pth")
    return directory


class StandInVAE:
    """What `CosmosPolicy` asks of its `PolicyVAE` (`encode_prefix`, `encode_zero_chunks`, `decode`, the cache calls),
    without diffusers: latents of the real shapes (16 channels, 8x smaller images, the blank and proprio frames first)
    made from the images by 8 x 8 average pooling and a fixed random 3 -> 16 channel map, so the actions depend on
    what the cameras see. For tests of the network, sampler and CUDA graphs; its latents are not Wan2.1's."""

    z_dim = 16

    def __init__(self, *, device=None, dtype: torch.dtype = torch.float32, seed: int = 0):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        weight = torch.randn(self.z_dim, 3, generator=torch.Generator().manual_seed(seed)) / 3**0.5
        self.weight = weight.to(self.device)

    def for_backend(self, backend: str) -> StandInVAE:
        return self  # one implementation serves both network backends

    def _latent(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 -> (B, z, H/8, W/8) float32."""
        pooled = torch.nn.functional.avg_pool2d(to_pixels(images_uint8, torch.float32, self.device), 8)
        return torch.einsum("zc,bchw->bzhw", self.weight, pooled)

    def encode_prefix(self, images: list[torch.Tensor], *, keep_state: bool = False):
        """(B, z, 2 + len(images), H/8, W/8): the blank and proprio frames (zeros), then one latent per image."""
        batch, _, height, width = images[0].shape
        constant = torch.zeros(batch, self.z_dim, 2, height // 8, width // 8, device=self.device)
        latents = torch.cat([constant, torch.stack([self._latent(image) for image in images], dim=2)], dim=2)
        return (latents, len(images)) if keep_state else latents

    def encode_zero_chunks(self, count: int, state, batch: int, height: int, width: int) -> torch.Tensor:
        zeros = torch.zeros(batch, 3, height, width, dtype=torch.uint8)
        return self._latent(zeros)[:, :, None].expand(-1, -1, count, -1, -1).contiguous()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, z, T, h, w) -> uint8 frames (B, 1 + 4 (T - 1), 8h, 8w, 3), as the causal Wan2.1 decoder shapes them."""
        pixels = torch.einsum("zc,bzthw->bcthw", self.weight, latents.float()) / self.z_dim
        pixels = pixels.repeat_interleave(8, dim=-2).repeat_interleave(8, dim=-1)
        pixels = torch.cat([pixels[:, :, :1], pixels[:, :, 1:].repeat_interleave(TEMPORAL_COMPRESSION, dim=2)], dim=2)
        return ((pixels + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 4, 1)

    def clear_cache(self) -> None:
        pass  # nothing cached

    def cache_info(self) -> dict:
        return {"constant_prefix_states": 0}


def tiny_policy(directory: str | os.PathLike, suite: str = "libero", *, device=None, dtype: torch.dtype | None = None,
                backend: str = "fused", **policy_kwargs):
    """A `CosmosPolicy` on a directory of `write_tiny_checkpoint` (its VAE file, if any, unused) with `StandInVAE`:
    needs no diffusers. `policy_kwargs` go to `CosmosPolicy` (`cuda_graph`, `seed`, ...)."""
    from .model.config import DiTConfig
    from .model.layout import DatasetStatistics
    from .model.loading import load_network
    from .model.text import TextEmbeddings
    from .policy import CosmosPolicy, resolve_device

    directory = Path(directory)
    layout = get_layout(suite)
    device = resolve_device(device)
    dtype = dtype if dtype is not None else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    extra = json.loads((directory / NETWORK_CONFIG_FILE).read_text(encoding="utf-8"))
    config = DiTConfig.from_dict(extra["network"])
    names = PREDICT2_5_NAMES if config.crossattn_proj_in_channels else (CHECKPOINT_NAMES[suite],
                                                                        f"{suite}_t5_embeddings.pkl")
    network = load_network(directory / names[0], config, backend=backend).to(device=device, dtype=dtype)
    text = TextEmbeddings.from_file(directory / names[1], device=device, dtype=dtype)
    statistics = DatasetStatistics.from_json(directory / f"{suite}_dataset_statistics.json")
    return CosmosPolicy(network, StandInVAE(device=device, dtype=dtype), text, statistics, layout,
                        image_size=int(extra.get("image_size", IMAGE_SIZE)), **policy_kwargs)


def write_tiny_planning_checkpoint(directory: str | os.PathLike, seed: int = 1, network_config=None,
                                   suite: str = "aloha") -> Path:
    """A random planning checkpoint as nvidia/Cosmos-Policy-ALOHA-Planning-Model-Predict2-2B ships one: the network
    `.pt` alone (text, statistics and VAE are the policy's), plus `network_config.json` for its tiny size."""
    from .model.checkpoint import save_network_checkpoint
    from .model.config import DiTConfig

    get_layout(suite)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = network_config if network_config is not None else DiTConfig.tiny()
    with torch.random.fork_rng(devices=[]):
        network = _tiny_network(config, seed)
    save_network_checkpoint(network.state_dict(), directory / PLANNING_CHECKPOINT_NAME)
    extra = {"suite": suite, "network": config.to_dict()}
    (directory / NETWORK_CONFIG_FILE).write_text(json.dumps(extra, indent=2))
    return directory


def _tiny_network(config, seed: int):
    from .model import CosmosDiT

    torch.manual_seed(seed)
    network = CosmosDiT(config, backend="reference")
    _randomize(network, seed)
    return network


@torch.no_grad()
def _randomize(network: torch.nn.Module, seed: int) -> None:
    """Zero-initialised output layers would make every sample equal: give all weights small random values."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in network.named_parameters():
        if param.dim() >= 2:
            param.copy_(torch.randn(param.shape, generator=gen) / param.shape[-1] ** 0.5)
        elif "norm" in name:
            param.copy_(1 + 0.1 * torch.randn(param.shape, generator=gen))
        else:
            param.copy_(0.02 * torch.randn(param.shape, generator=gen))
