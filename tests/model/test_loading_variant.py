"""Variant detection when loading a network checkpoint: `crossattn_proj` weights mean Cosmos-Predict2.5."""

from __future__ import annotations

import pytest
import torch

from cosmos_policy import DiTConfig
from cosmos_policy.model.checkpoint import save_network_checkpoint
from cosmos_policy.model.loading import checkpoint_variant, load_network, network_config_for
from tests.model._dit_helpers import random_dit

P25 = dict(timestep_scale=0.001, crossattn_proj_in_channels=96, use_wan_fp32_strategy=True)


def test_variant_and_default_configs(gen):
    p2, p25 = random_dit(gen).state_dict(), random_dit(gen, **P25).state_dict()
    assert checkpoint_variant(p2) == "predict2"
    assert checkpoint_variant(p25) == "predict2.5"
    assert checkpoint_variant({"net." + k: v for k, v in p25.items()}) == "predict2.5"
    assert network_config_for(p2) == DiTConfig.cosmos_predict2_2b()
    assert network_config_for(p25) == DiTConfig.cosmos_predict2_5_2b()
    tiny = DiTConfig.tiny_predict2_5()
    assert network_config_for(p25, tiny) is tiny


def test_load_network_by_variant_and_refusal_of_a_mismatch(tmp_path, gen):
    src = random_dit(gen, **P25)
    path = tmp_path / "model.pt"
    save_network_checkpoint(src.state_dict(), path)
    net = load_network(path, DiTConfig.tiny_predict2_5(), backend="reference")
    assert torch.equal(net.crossattn_proj[0].weight, src.crossattn_proj[0].weight)
    with pytest.raises(ValueError, match=r"model\.pt: the checkpoint holds 'crossattn_proj\.0\.weight' "
                                         r"\(a Cosmos-Predict2\.5 network\) but the config has no text projection"):
        load_network(path, DiTConfig.tiny())
    p2_path = tmp_path / "p2.pt"
    save_network_checkpoint(random_dit(gen).state_dict(), p2_path)
    with pytest.raises(ValueError, match=r"p2\.pt: the checkpoint has no 'crossattn_proj' weights \(a Cosmos-Predict2 "
                                         r"network\) but the config has text projection"):
        load_network(p2_path, DiTConfig.tiny_predict2_5())
    assert load_network(p2_path, DiTConfig.tiny()).crossattn_proj is None
