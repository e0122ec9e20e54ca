"""Parity with an independent implementation: diffusers' `CosmosTransformer3DModel`, loaded through diffusers'
own converter from official-format weights, against our reference backend in fp32."""

from __future__ import annotations

import pytest
import torch

from cosmos_policy import DiTConfig
from tests._diffusers_shims import patch_nearest_resize
from tests.model._dit_helpers import random_dit, random_inputs, rel_error

diffusers = pytest.importorskip("diffusers")
from diffusers.loaders.single_file_utils import convert_cosmos_transformer_checkpoint_to_diffusers  # noqa: E402
from diffusers.models.transformers import transformer_cosmos  # noqa: E402


@pytest.fixture
def nearest_resize(monkeypatch):
    """diffusers resizes the padding mask with torchvision; without it installed, the same NEAREST resize."""
    patch_nearest_resize(monkeypatch, transformer_cosmos)


def diffusers_twin(config: DiTConfig) -> torch.nn.Module:
    """The diffusers model of the matching size, built as its "Cosmos-2.0-Diffusion-2B-Video2World" config is."""
    return transformer_cosmos.CosmosTransformer3DModel(
        in_channels=config.in_channels + 1,  # + condition mask; diffusers adds the padding-mask channel itself
        out_channels=config.out_channels,
        num_attention_heads=config.num_heads,
        attention_head_dim=config.head_dim,
        num_layers=config.num_blocks,
        mlp_ratio=config.mlp_ratio,
        text_embed_dim=config.crossattn_emb_channels,
        adaln_lora_dim=config.adaln_lora_dim,
        max_size=(config.max_frames, config.max_img_h, config.max_img_w),
        patch_size=(config.patch_temporal, config.patch_spatial, config.patch_spatial),
        rope_scale=(config.rope_t_extrapolation_ratio, config.rope_h_extrapolation_ratio,
                    config.rope_w_extrapolation_ratio),
        concat_padding_mask=config.concat_padding_mask,
        extra_pos_embed_type=None,
    ).eval()


@pytest.mark.parametrize("shape", [dict(b=1, t=9, h=28, w=28, n_text=512, n_cond=4),  # LIBERO's 1764 tokens
                                   dict(b=2, t=3, h=6, w=10, n_text=5, n_cond=1)])
def test_reference_matches_diffusers_cosmos_transformer(gen, nearest_resize, shape):
    ours = random_dit(gen, rope_ranges_bf16=False)  # diffusers computes the RoPE exponents in fp32
    official = {"net." + k: v.clone() for k, v in ours.state_dict().items()}
    official["net.accum_iteration"] = torch.tensor(1)
    official["net.pos_embedder.seq"] = torch.arange(128.0)
    theirs = diffusers_twin(ours.config)
    theirs.load_state_dict(convert_cosmos_transformer_checkpoint_to_diffusers(official), strict=True)

    inputs = random_inputs(gen, ours.config, **shape)
    b, _, t, h, w = inputs["x_B_C_T_H_W"].shape
    padding = torch.zeros(1, 1, h * 8, w * 8)  # zeros, at image resolution, as the policy passes it
    with torch.no_grad():
        got = ours(**inputs, padding_mask=padding)
        want = theirs(
            inputs["x_B_C_T_H_W"],
            timestep=inputs["timesteps_B_T"].view(b, 1, t, 1, 1),  # per-frame times
            encoder_hidden_states=inputs["crossattn_emb"],
            attention_mask=None, fps=None,
            condition_mask=inputs["condition_video_input_mask_B_C_T_H_W"],
            padding_mask=padding,
            return_dict=False,
        )[0]
    err = rel_error(got, want)
    print(f"relative error vs diffusers: {err:.2e}")
    assert err <= 1e-5
    # The bf16-rounded RoPE exponents of the official runtime are a visible difference at this scale.
    with torch.no_grad():
        rounded = random_dit(torch.Generator().manual_seed(0), rope_ranges_bf16=True)
        rounded.load_state_dict(ours.state_dict())
        assert rel_error(rounded(**inputs, padding_mask=padding), want) > 1e-5
