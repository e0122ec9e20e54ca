"""`load_network`: a network checkpoint file -> `CosmosDiT`, checked against the network on the meta device first."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from .checkpoint import NET_PREFIX, check_fits, load_network_checkpoint
from .config import DiTConfig
from .dit import CosmosDiT

PREDICT2_5_KEY = "crossattn_proj.0.weight"


def checkpoint_variant(state_dict: Mapping[str, torch.Tensor]) -> str:
    """"predict2.5" when the state dict holds the text projection (`crossattn_proj.*`, `net.` optional), else
    "predict2"."""
    for key in state_dict:
        name = key[len(NET_PREFIX):] if key.startswith(NET_PREFIX) else key
        if name.startswith("crossattn_proj."):
            return "predict2.5"
    return "predict2"


def network_config_for(state_dict: Mapping[str, torch.Tensor], config: DiTConfig | None = None) -> DiTConfig:
    """The config to build for `state_dict`: the 2B preset of its variant when `config` is None; else `config`,
    checked to be of the same variant (ValueError naming the mismatch otherwise)."""
    variant = checkpoint_variant(state_dict)
    if config is None:
        return DiTConfig.cosmos_predict2_5_2b() if variant == "predict2.5" else DiTConfig.cosmos_predict2_2b()
    has_proj = config.crossattn_proj_in_channels is not None
    if has_proj != (variant == "predict2.5"):
        held = f"holds {PREDICT2_5_KEY!r}" if variant == "predict2.5" else "has no 'crossattn_proj' weights"
        raise ValueError(f"the checkpoint {held} (a Cosmos-{variant.capitalize()} network) but the config "
                         f"{'has' if has_proj else 'has no'} text projection (crossattn_proj_in_channels="
                         f"{config.crossattn_proj_in_channels})")
    return config


def load_network(path: str | os.PathLike, config: DiTConfig | None = None, *, backend: str = "fused"):
    """A `CosmosDiT` (on the CPU) holding the weights of the checkpoint at `path`.

    `config` None: the 2B network of the checkpoint's variant (`crossattn_proj` weights mean Cosmos-Predict2.5);
    a given config must be of the checkpoint's variant. The checkpoint is compared with the network built on the
    meta device first, so weights of another size are refused with a short summary (naming the file) before the
    real network is allocated."""
    state = load_network_checkpoint(path, mmap=True)
    try:
        config = network_config_for(state, config)
    except ValueError as err:
        raise ValueError(f"{os.fspath(path)}: {err}") from None
    with torch.device("meta"):
        shapes = CosmosDiT(config, backend=backend).state_dict()
    try:
        check_fits(state, shapes)
    except ValueError as err:
        raise ValueError(f"{os.fspath(path)}: {err}") from None
    network = CosmosDiT(config, backend=backend)
    network.load_state_dict(state)
    return network
