"""`apply_cosmos_kernels` on diffusers' Cosmos and Wan transformers: parity with the unpatched model (fp32, bf16),
bit-exact removal, torch.compile(fullgraph=True), refusals that leave the model untouched."""

from __future__ import annotations

import collections
import copy
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

diffusers = pytest.importorskip("diffusers")
from diffusers.models.transformers import transformer_cosmos as tc  # noqa: E402
from diffusers.models.transformers import transformer_wan as tw  # noqa: E402

from cosmos_kernels.integrations import diffusers_wan  # noqa: E402
from cosmos_kernels.integrations.diffusers import (  # noqa: E402
    apply_cosmos_kernels,
    is_patched,
    remove_cosmos_kernels,
)
from tests._diffusers_shims import patch_nearest_resize  # noqa: E402

HEADS, HEAD_DIM = 2, 32
B, T, H, W = 2, 3, 8, 8  # 3 latent frames of 4 x 4 patches: 48 tokens

COSMOS = {
    # Cosmos-Predict2 Video2World: per-frame timesteps, condition and padding masks, learnable pos. embedding
    "predict2-video2world": dict(config=dict(in_channels=5, rope_scale=(1.0, 3.0, 3.0), concat_padding_mask=True,
                                             extra_pos_embed_type="learnable"),
                                 per_frame=True),
    "predict2-text2image": dict(config=dict(in_channels=4, concat_padding_mask=False, extra_pos_embed_type=None),
                                per_frame=False),
    # Cosmos-Predict2.5 (text projection, no extra embedding) with the image context of its Transfer variants
    "predict2.5-img-context": dict(config=dict(in_channels=5, rope_scale=(1.0, 3.0, 3.0), concat_padding_mask=True,
                                               extra_pos_embed_type=None, use_crossattn_projection=True,
                                               crossattn_proj_in_channels=40, encoder_hidden_states_channels=24,
                                               img_context_dim_in=20, img_context_num_tokens=6,
                                               img_context_dim_out=HEADS * HEAD_DIM),
                                   per_frame=True),
}
WAN = {
    "wan2.1-t2v": dict(config=dict(), per_token=False, n_text=7),
    "wan2.1-i2v": dict(config=dict(image_dim=20, added_kv_proj_dim=HEADS * HEAD_DIM), per_token=False, n_text=512),
    "wan2.2-ti2v": dict(config=dict(cross_attn_norm=False), per_token=True, n_text=7),  # per-token timesteps
}
CASES = [("cosmos", k) for k in COSMOS] + [("wan", k) for k in WAN]


@pytest.fixture(autouse=True)
def nearest_resize(monkeypatch):
    """diffusers resizes Cosmos' padding mask with torchvision; without it installed, the same NEAREST resize."""
    patch_nearest_resize(monkeypatch, tc)


def _randomize(model: torch.nn.Module, gen: torch.Generator) -> torch.nn.Module:
    """Random weights (diffusers zero-initialises several), rounded to bf16 so fp32 and bf16 runs share them."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                value = torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1])
            else:  # norm weights near 1, biases and tables near 0
                value = torch.randn(p.shape, generator=gen) * 0.3 + (1.0 if "norm" in name else 0.0)
            p.copy_(value.bfloat16().float())
    return model.eval()


def tiny_model(kind: str, case: str, gen: torch.Generator, **overrides) -> torch.nn.Module:
    if kind == "cosmos":
        cfg = dict(out_channels=4, num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, num_layers=2,
                   text_embed_dim=24, adaln_lora_dim=16, max_size=(8, 16, 16)) | COSMOS[case]["config"] | overrides
        return _randomize(tc.CosmosTransformer3DModel(**cfg), gen)
    cfg = dict(num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, in_channels=4, out_channels=4, text_dim=24,
               freq_dim=32, ffn_dim=96, num_layers=2, rope_max_seq_len=64) | WAN[case]["config"] | overrides
    return _randomize(tw.WanTransformer3DModel(**cfg), gen)


def tiny_inputs(kind: str, case: str, model: torch.nn.Module, gen: torch.Generator) -> dict:
    """The inputs the pipelines pass, in fp32 (cast per run with `cast`)."""
    def rand(*shape):
        return torch.randn(*shape, generator=gen)

    if kind == "cosmos":
        spec, cfg = COSMOS[case], model.config
        x = rand(B, 4, T, H, W)
        out = dict(hidden_states=x)
        if spec["per_frame"]:  # Video2World: (B, 1, T, 1, 1) timesteps, the first frame conditioning
            out["timestep"] = torch.rand(B, 1, T, 1, 1, generator=gen)
            cond = torch.zeros(B, 1, T, H, W)
            cond[:, :, 0] = 1
            out["condition_mask"] = cond
        else:
            out["timestep"] = torch.rand(B, generator=gen)
        if cfg.concat_padding_mask:
            out["padding_mask"] = torch.zeros(1, 1, H * 8, W * 8)
        text = rand(B, 9, cfg.crossattn_proj_in_channels if cfg.use_crossattn_projection else cfg.text_embed_dim)
        text[:, 6:] = 0  # T5 embeddings are zero past the prompt's tokens
        out["encoder_hidden_states"] = (text, rand(B, 6, cfg.img_context_dim_in)) if cfg.img_context_dim_in else text
        return out
    spec = WAN[case]
    tokens = T * (H // 2) * (W // 2)
    out = dict(hidden_states=rand(B, 4, T, H, W),
               timestep=torch.rand(B, tokens, generator=gen) * 1000 if spec["per_token"] else torch.rand(B) * 1000,
               encoder_hidden_states=rand(B, spec["n_text"], 24))
    if model.config.image_dim:
        out["encoder_hidden_states_image"] = rand(B, 5, model.config.image_dim)
    return out


def cast(inputs: dict, dtype: torch.dtype) -> dict:
    def one(v):
        if isinstance(v, tuple):
            return tuple(one(t) for t in v)
        return v.to(dtype) if v.is_floating_point() else v
    return {k: v if k == "timestep" else one(v) for k, v in inputs.items()}  # timesteps as the pipelines pass them


def run(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


class OpCounter(TorchDispatchMode):
    """Counts the cosmos_kernels ops that reach the dispatcher."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "cosmos_kernels":
            self.counts[func._opname] += 1
        return func(*args, **(kwargs or {}))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _state(model: torch.nn.Module) -> list:
    """Everything a patch may change: each module's class and processor (object identity)."""
    return [(name, type(m), getattr(m, "processor", None)) for name, m in model.named_modules()]


def expected_ops(kind: str, model: torch.nn.Module) -> dict[str, int]:
    n = len(model.transformer_blocks if kind == "cosmos" else model.blocks)
    if kind == "cosmos":  # per block: norm1, 2 gated residual norms, q/k norm(+rope) of both attentions
        img = 2 if model.config.img_context_dim_in else 0
        return {"layer_norm_modulate": n + 1, "gated_residual_layer_norm_modulate": 2 * n,
                "qk_norm_rope": n * (2 + img // 2)}
    i2v = 1 if model.config.added_kv_proj_dim else 0
    gated = 2 if model.config.cross_attn_norm else 1  # without norm2 the first residual has no norm to fuse
    return {"layer_norm_modulate": n, "gated_residual_layer_norm_modulate": gated * n,
            "rms_norm": n * (4 + i2v), "qk_norm_rope": n}


@pytest.mark.parametrize("kind,case", CASES)
def test_patched_matches_unpatched_fp32_and_bf16(kind, case, gen):
    model = tiny_model(kind, case, gen)
    inputs = tiny_inputs(kind, case, model, gen)
    want32 = run(model, inputs)  # the unpatched fp32 model is the truth the bf16 runs are measured against
    model16 = copy.deepcopy(model).bfloat16()
    want16 = run(model16, cast(inputs, torch.bfloat16))

    summary = apply_cosmos_kernels(model)
    assert is_patched(model)
    assert not any(k.startswith(("transformer_blocks", "blocks")) for k in summary.left_alone), summary
    with OpCounter() as counter:
        got32 = run(model, inputs)
    assert dict(counter.counts) == expected_ops(kind, model)
    err32 = rel(got32, want32)
    assert err32 <= 2e-6, f"fp32: relative error {err32:.2e} vs the unpatched model"

    apply_cosmos_kernels(model16)
    got16 = run(model16, cast(inputs, torch.bfloat16))
    assert got16.dtype == torch.bfloat16
    err16, ref16 = rel(got16, want32), rel(want16, want32)
    print(f"{kind} {case}: fp32 {err32:.2e}; bf16 patched {err16:.2e}, unpatched {ref16:.2e} (vs fp32)")
    assert err16 <= 2 * ref16, f"bf16: patched error {err16:.2e} > 2 x the unpatched model's {ref16:.2e}"
    remove_cosmos_kernels(model)
    remove_cosmos_kernels(model16)


@pytest.mark.parametrize("kind,case", CASES)
def test_remove_restores_bit_identical(kind, case, gen):
    model = tiny_model(kind, case, gen)
    inputs = tiny_inputs(kind, case, model, gen)
    before, state = run(model, inputs), _state(model)
    params = {k: v.clone() for k, v in model.state_dict().items()}
    apply_cosmos_kernels(model)
    patched = run(model, inputs)
    assert not torch.equal(patched, before)  # the patch really runs other code
    assert remove_cosmos_kernels(model) is True
    assert _state(model) == state
    assert all(torch.equal(v, params[k]) for k, v in model.state_dict().items())
    assert torch.equal(run(model, inputs), before)
    assert remove_cosmos_kernels(model) is False and not is_patched(model)


def test_cosmos_attention_mask_runs_diffusers_processor(gen):
    """A text padding mask (the op has no key mask) takes diffusers' path, still patched everywhere else."""
    model = tiny_model("cosmos", "predict2-video2world", gen)
    inputs = tiny_inputs("cosmos", "predict2-video2world", model, gen)
    mask = torch.ones(B, 9, dtype=torch.bool)
    mask[:, 6:] = False
    inputs["attention_mask"] = mask
    want = run(model, inputs)
    apply_cosmos_kernels(model)
    with OpCounter() as counter:
        got = run(model, inputs)
    n = len(model.transformer_blocks)
    assert counter.counts["qk_norm_rope"] == n  # self-attention only
    assert rel(got, want) <= 2e-6
    remove_cosmos_kernels(model)


def test_wan_rope_permutation_leaves_scores_unchanged(gen):
    """Wan's interleaved RoPE == the rotate-half op on the permuted head dim, for q and k alike."""
    model = tiny_model("wan", "wan2.1-t2v", gen)
    x = torch.zeros(1, 4, T, H, W)
    freqs_cos, freqs_sin = model.rope(x)
    length = freqs_cos.shape[1]
    q = torch.randn(1, length, HEADS, HEAD_DIM, generator=gen, dtype=torch.float64)
    k = torch.randn(1, length, HEADS, HEAD_DIM, generator=gen, dtype=torch.float64)

    def wan_rope(t):  # WanAttnProcessor's formula
        x1, x2 = t.unflatten(-1, (-1, 2)).unbind(-1)
        cos, sin = freqs_cos[..., 0::2].double(), freqs_sin[..., 1::2].double()
        out = torch.empty_like(t)
        out[..., 0::2] = x1 * cos - x2 * sin
        out[..., 1::2] = x1 * sin + x2 * cos
        return out

    cos, sin = diffusers_wan.half_tables(freqs_cos, freqs_sin)
    from cosmos_kernels.attention import reference

    q_half, k_half = reference.qk_norm_rope(diffusers_wan.interleaved_to_half(q), diffusers_wan.interleaved_to_half(k),
                                            None, None, cos, sin)
    assert torch.allclose(q_half, diffusers_wan.interleaved_to_half(wan_rope(q)), atol=1e-6)
    scores = torch.einsum("blhd,bmhd->bhlm", wan_rope(q), wan_rope(k))
    assert torch.allclose(torch.einsum("blhd,bmhd->bhlm", q_half, k_half), scores, atol=1e-5)


# Inductor for Cosmos (per-token modulation from per-frame timesteps); Wan through dynamo + AOT autograd with the
# ops' fakes (no graph break is the claim; inductor doubles the test's time on this CPU).
@pytest.mark.parametrize("kind,case,compiler", [("cosmos", "predict2-video2world", "inductor"),
                                                ("wan", "wan2.2-ti2v", "aot_eager")])
def test_compile_fullgraph(kind, case, compiler, gen):
    model = tiny_model(kind, case, gen, num_layers=1)
    inputs = tiny_inputs(kind, case, model, gen)
    apply_cosmos_kernels(model)
    eager = run(model, inputs)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, dynamic=False, backend=compiler)
    got = run(compiled, inputs)
    assert rel(got, eager) <= 1e-5
    remove_cosmos_kernels(model)


def test_unknown_model_is_refused(gen):
    class MyCosmos(tc.CosmosTransformer3DModel):  # a subclass may compute anything
        pass

    for model in (torch.nn.Linear(4, 4), MyCosmos(num_attention_heads=1, attention_head_dim=16, num_layers=1,
                                                  text_embed_dim=8, adaln_lora_dim=4, max_size=(4, 8, 8))):
        state = _state(model)
        with pytest.raises(TypeError, match=type(model).__name__):
            apply_cosmos_kernels(model)
        assert _state(model) == state and not is_patched(model)


@pytest.mark.parametrize("kind", ["cosmos", "wan"])
def test_unsupported_head_dim_is_refused_untouched(kind, gen):
    case = "predict2-text2image" if kind == "cosmos" else "wan2.1-t2v"
    model = tiny_model(kind, case, gen, attention_head_dim=24)
    inputs = tiny_inputs(kind, case, model, gen)
    before, state = run(model, inputs), _state(model)
    with pytest.raises(ValueError, match="attention_head_dim=24"):
        apply_cosmos_kernels(model)
    assert _state(model) == state and not is_patched(model)
    assert torch.equal(run(model, inputs), before)
    summary = apply_cosmos_kernels(model, attention=False)  # the rest is still covered
    assert summary.left_alone["attention"] == "attention=False" and summary.patched
    remove_cosmos_kernels(model)


def test_wan_context_parallel_is_refused_atomically(gen):
    """Found at the last attention: nothing of the earlier blocks may have been swapped."""
    model = tiny_model("wan", "wan2.1-t2v", gen)
    model.blocks[-1].attn2.processor._parallel_config = object()
    state = _state(model)
    with pytest.raises(ValueError, match=r"blocks\.1\.attn2.*context-parallel"):
        apply_cosmos_kernels(model)
    assert _state(model) == state and not is_patched(model)


def test_bad_options_and_double_patch_are_refused(gen):
    model = tiny_model("cosmos", "predict2-text2image", gen)
    state = _state(model)
    with pytest.raises(ValueError, match="backend"):
        apply_cosmos_kernels(model, backend="fast")
    with pytest.raises(ValueError, match="attention_backend"):
        apply_cosmos_kernels(model, attention_backend="xformers")
    with pytest.raises(TypeError, match="adaptive_norm"):
        apply_cosmos_kernels(model, adaptive_norm="yes")
    assert _state(model) == state
    apply_cosmos_kernels(model, backend="reference", attention_backend="reference")
    with pytest.raises(ValueError, match="already patched"):
        apply_cosmos_kernels(model)
    remove_cosmos_kernels(model)
    assert _state(model) == state


def test_custom_processor_is_left_alone(gen):
    model = tiny_model("wan", "wan2.1-t2v", gen)
    inputs = tiny_inputs("wan", "wan2.1-t2v", model, gen)
    want = run(model, inputs)

    class Custom(tw.WanAttnProcessor):
        pass

    model.blocks[0].attn1.processor = Custom()
    summary = apply_cosmos_kernels(model)
    assert "WanAttnProcessor" in summary.left_alone["blocks.0.attn1"]
    assert type(model.blocks[0].attn1.processor) is Custom
    assert rel(run(model, inputs), want) <= 2e-6
    remove_cosmos_kernels(model)
