"""`load_network`: a network checkpoint file -> `CosmosDiT`, checked against the network on the meta device first."""

from __future__ import annotations

import os

import torch

from .checkpoint import check_fits, load_network_checkpoint
from .dit import CosmosDiT


def load_network(path: str | os.PathLike, config, *, backend: str = "fused"):
    """A `CosmosDiT` of `config` (on the CPU) holding the weights of the checkpoint at `path`.

    The checkpoint is compared with the network built on the meta device first, so weights of another size are
    refused with a short summary (naming the file) before the real network is allocated."""
    state = load_network_checkpoint(path, mmap=True)
    with torch.device("meta"):
        shapes = CosmosDiT(config, backend=backend).state_dict()
    try:
        check_fits(state, shapes)
    except ValueError as err:
        raise ValueError(f"{os.fspath(path)}: {err}") from None
    network = CosmosDiT(config, backend=backend)
    network.load_state_dict(state)
    return network
