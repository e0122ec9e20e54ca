"""diffusers' Cosmos and Wan transformers, one forward pass: patched (`apply_cosmos_kernels`) vs unpatched eager vs
torch.compile of the unpatched model.

A small config on the CPU (fp32, random weights); the real configs on CUDA (bf16): Cosmos-Predict2-2B at LIBERO's
1,764 tokens and Wan 2.1 1.3B at a 480p clip (21 latent frames of 30 x 52 patches). Each variant is one
measurement of the group `diffusers[<model>,<config>,<device>]`.
"""

from __future__ import annotations

import copy
import math
import types

import pytest
import torch
import torch.nn.functional as F

from bench.conftest import DEVICES, VARIANTS, measure

diffusers = pytest.importorskip("diffusers")
from diffusers.models.transformers import transformer_cosmos as tc  # noqa: E402
from diffusers.models.transformers import transformer_wan as tw  # noqa: E402

from cosmos_kernels.integrations.diffusers import apply_cosmos_kernels  # noqa: E402

# model -> device -> (constructor kwargs, latent (T, H, W), text tokens)
CONFIGS = {
    "cosmos": {
        "cpu": (dict(num_attention_heads=4, attention_head_dim=64, num_layers=4, text_embed_dim=64, adaln_lora_dim=32,
                     max_size=(16, 64, 64)), (3, 16, 16), 32),
        "cuda": (dict(num_attention_heads=16, attention_head_dim=128, num_layers=28, text_embed_dim=1024,
                      adaln_lora_dim=256), (9, 14, 14), 512),
    },
    "wan": {
        "cpu": (dict(num_attention_heads=4, attention_head_dim=64, num_layers=4, text_dim=64, freq_dim=64,
                     ffn_dim=1024), (3, 16, 16), 32),
        "cuda": (dict(num_attention_heads=12, attention_head_dim=128, num_layers=30, text_dim=4096, freq_dim=256,
                      ffn_dim=8960), (21, 30, 52), 512),
    },
}
_models: dict[tuple[str, str], tuple[torch.nn.Module, torch.nn.Module, dict]] = {}


def _nearest_resize():
    """diffusers resizes Cosmos' padding mask with torchvision; without it installed, the same NEAREST resize."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        tc.transforms = types.SimpleNamespace(
            functional=types.SimpleNamespace(resize=lambda img, size, interpolation=None: F.interpolate(
                img, size=list(size), mode="nearest")),
            InterpolationMode=types.SimpleNamespace(NEAREST="nearest"))


def _build(model: str, device: str) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    """(unpatched, patched, inputs), built once per session: random weights, the pipeline's inputs."""
    key = (model, device)
    if key not in _models:
        kwargs, (t, h, w), n_text = CONFIGS[model][device]
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        gen = torch.Generator().manual_seed(0)
        if model == "cosmos":
            _nearest_resize()
            net = tc.CosmosTransformer3DModel(in_channels=17, out_channels=16, rope_scale=(1.0, 3.0, 3.0), **kwargs)
        else:
            net = tw.WanTransformer3DModel(in_channels=16, out_channels=16, **kwargs)
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1] if p.dim() > 1 else 1) * 0.5)
        net = net.eval().to(device=device, dtype=dtype)
        x = torch.randn(1, 16, t, h * 2, w * 2, generator=gen).to(device, dtype)
        text = torch.randn(1, n_text, kwargs.get("text_embed_dim", kwargs.get("text_dim")), generator=gen)
        text[:, n_text // 2:] = 0  # zero-padded text, as real prompts are
        if model == "cosmos":  # Video2World: per-frame timesteps, the first frame as condition, padding mask
            cond = torch.zeros(1, 1, t, h * 2, w * 2)
            cond[:, :, 0] = 1
            inputs = dict(hidden_states=x, timestep=torch.rand(1, 1, t, 1, 1).to(device, dtype),
                          encoder_hidden_states=text.to(device, dtype), condition_mask=cond.to(device, dtype),
                          padding_mask=torch.zeros(1, 1, h * 16, w * 16, device=device, dtype=dtype))
        else:
            inputs = dict(hidden_states=x, timestep=torch.tensor([500.0], device=device),
                          encoder_hidden_states=text.to(device, dtype))
        patched = copy.deepcopy(net)
        apply_cosmos_kernels(patched)
        _models[key] = (net, patched, inputs)
    return _models[key]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model", list(CONFIGS))
def test_diffusers_forward(benchmark, model, device, variant):
    net, patched, inputs = _build(model, device)
    fn = {"fused": patched, "reference": net,
          "compile": torch.compile(net, fullgraph=True, dynamic=False)}[variant]
    kwargs, (t, h, w), n_text = CONFIGS[model][device]
    config = "small" if device == "cpu" else "real"

    def forward():
        return fn(**inputs, return_dict=False)[0]

    measure(benchmark, f"diffusers[{model},{config},{device}]", variant, forward, device=device,
            rounds=None if device == "cuda" else 5, warmup=2, tokens=t * h * w, layers=kwargs["num_layers"],
            hidden=kwargs["num_attention_heads"] * kwargs["attention_head_dim"])
