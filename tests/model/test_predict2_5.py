"""The Cosmos-Predict2.5 network flags: timestep scale in fp32, the cached text projection, the fp32 islands,
the 2B key list and size, refusal of state dicts without a fitting `crossattn_proj`."""

from __future__ import annotations

import pytest
import torch

from cosmos_policy import CosmosDiT, DiTConfig
from cosmos_policy.model import with_text_tokens
from tests.model._dit_helpers import random_dit, random_inputs, rel_error

P25 = dict(timestep_scale=0.001, crossattn_proj_in_channels=96, use_wan_fp32_strategy=True)


def _run(model: CosmosDiT, inputs: dict, backend: str) -> torch.Tensor:
    model.backend = backend
    with torch.no_grad():
        return model(**inputs)


def _reason1_inputs(gen, config: DiTConfig, b: int = 2, n_text: int = 40, n_real: int = 9, **kw) -> dict:
    """Integer timesteps (0 on conditional frames) and Reason1-like text: every row non-zero, the padding rows
    all equal to one (non-zero) pad-token embedding."""
    inputs = random_inputs(gen, config, b=b, n_text=n_text, **kw)
    t = inputs["timesteps_B_T"]
    inputs["timesteps_B_T"] = torch.where(t > 0, torch.randint(1, 1000, t.shape, generator=gen).float(), 0.0)
    text = inputs["crossattn_emb"]
    text[:, n_real:] = torch.randn(config.text_channels, generator=gen)
    assert text.ne(0).any(-1).all()
    return inputs


# -- configuration ---------------------------------------------------------------------------------------------

def test_presets_and_json_roundtrip(tmp_path):
    c = DiTConfig.cosmos_predict2_5_2b()
    assert (c.timestep_scale, c.crossattn_proj_in_channels, c.use_wan_fp32_strategy) == (0.001, 100352, True)
    assert c.crossattn_emb_channels == 1024 and c.text_channels == 100352
    p2 = DiTConfig.cosmos_predict2_2b()
    assert (p2.timestep_scale, p2.crossattn_proj_in_channels, p2.use_wan_fp32_strategy) == (1.0, None, False)
    assert p2.text_channels == 1024
    assert dataclass_without(c, P25.keys()) == dataclass_without(p2, P25.keys())  # only the three flags differ
    tiny = DiTConfig.tiny_predict2_5()
    assert tiny.text_channels == 96 and tiny.crossattn_emb_channels == 64
    c.save_json(tmp_path / "c.json")
    assert DiTConfig.load_json(tmp_path / "c.json") == c


def dataclass_without(config: DiTConfig, names) -> dict:
    return {k: v for k, v in config.to_dict().items() if k not in names}


@pytest.mark.parametrize("field,value", [("timestep_scale", 0.0), ("timestep_scale", -1.0),
                                         ("timestep_scale", float("nan")), ("crossattn_proj_in_channels", 0),
                                         ("crossattn_proj_in_channels", 2.5), ("use_wan_fp32_strategy", 1)])
def test_bad_flags_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        DiTConfig.tiny(**{field: value})


# -- keys and size ----------------------------------------------------------------------------------------------

def test_2b_key_set_and_parameter_count():
    with torch.device("meta"):
        p2 = CosmosDiT(DiTConfig.cosmos_predict2_2b())
        p25 = CosmosDiT(DiTConfig.cosmos_predict2_5_2b())
    keys, shapes = set(p25.state_dict()), {k: tuple(v.shape) for k, v in p25.state_dict().items()}
    # The official file holds 576 entries: these 569 plus 4 training counters and 3 RoPE buffers.
    assert len(keys) == 569
    assert keys - set(p2.state_dict()) == {"crossattn_proj.0.weight", "crossattn_proj.0.bias"}
    assert shapes["crossattn_proj.0.weight"] == (1024, 100352) and shapes["crossattn_proj.0.bias"] == (1024,)
    assert shapes["blocks.0.cross_attn.k_proj.weight"] == (2048, 1024)
    assert sum(p.numel() for p in p25.parameters()) == 2_059_174_912  # 1,956,413,440 + 102,760,448 + 1,024
    assert all(isinstance(m, torch.nn.GELU) and m.approximate == "none" for m in p25.crossattn_proj[1:])


def test_state_dict_without_a_fitting_projection_is_refused(gen):
    state = random_dit(gen, **P25).state_dict()
    model = CosmosDiT(DiTConfig.tiny_predict2_5())
    for key in ("crossattn_proj.0.weight", "crossattn_proj.0.bias"):
        missing = {k: v for k, v in state.items() if k != key}
        with pytest.raises(ValueError, match=rf"missing keys: \['{key.replace('.', '[.]')}'\]") as err:
            model.load_state_dict(missing)
        assert "\n" not in str(err.value)
        bad = dict(state, **{key: state[key][..., :-1]})
        with pytest.raises(ValueError, match=rf"{key.replace('.', '[.]')}.*has shape") as err:
            model.load_state_dict(bad)
        assert "\n" not in str(err.value)
    p2_state = random_dit(gen).state_dict()  # a Predict2 checkpoint into a Predict2.5 network
    with pytest.raises(ValueError, match="crossattn_proj"):
        CosmosDiT(DiTConfig.tiny_predict2_5(crossattn_proj_in_channels=64)).load_state_dict(p2_state)
    model.load_state_dict({"net." + k: v for k, v in state.items()})  # the official prefix loads
    assert torch.equal(model.crossattn_proj[0].bias, state["crossattn_proj.0.bias"])


# -- forward ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [dict(b=2, t=3, h=8, w=6), dict(b=1, t=9, h=28, w=28, n_text=512, n_cond=4)])
def test_fused_matches_reference_within_1e5_in_fp32(gen, shape):
    model = random_dit(gen, **P25)
    inputs = _reason1_inputs(gen, model.config, **shape)
    ref = _run(model, inputs, "reference")
    got = _run(model, inputs, "fused")
    assert got.dtype == torch.float32 and got.shape == inputs["x_B_C_T_H_W"].shape
    assert rel_error(got, ref) < 1e-5
    assert rel_error(_run(model, inputs, "fused"), ref) < 1e-5  # from the caches


def test_fused_matches_reference_in_bf16_with_fp32_output(gen):
    model = random_dit(gen, **P25)
    inputs = _reason1_inputs(gen, model.config)
    want = _run(model.double(), {k: v.double() for k, v in inputs.items()}, "reference")
    model.to(torch.bfloat16)
    ref, got = _run(model, inputs, "reference"), _run(model, inputs, "fused")
    assert ref.dtype == got.dtype == torch.float32  # the final layer is an fp32 island
    ref_err, err = rel_error(ref, want), rel_error(got, want)
    assert err <= 2 * ref_err + 4 * torch.finfo(torch.bfloat16).eps, f"fused {err:.3e} vs reference {ref_err:.3e}"


def test_padding_mark_does_not_apply_to_projected_text(gen):
    model = random_dit(gen, **P25)
    inputs = _reason1_inputs(gen, model.config)
    with_text_tokens(inputs["crossattn_emb"], 3)  # rows past 3 are not zero after the projection
    assert rel_error(_run(model, inputs, "fused"), _run(model, inputs, "reference")) < 1e-5


def test_projection_runs_once_per_instruction_on_the_fused_backend(gen):
    model = random_dit(gen, **P25)
    inputs = _reason1_inputs(gen, model.config)
    calls = []
    model.crossattn_proj.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape))
    for _ in range(3):
        _run(model, inputs, "fused")
    assert len(calls) == 1
    other = dict(inputs, crossattn_emb=inputs["crossattn_emb"].clone())  # another instruction tensor
    _run(model, other, "fused")
    assert len(calls) == 2
    inputs["crossattn_emb"].mul_(0.5)  # in place: the cache sees the new content
    assert rel_error(_run(model, inputs, "fused"), _run(model, inputs, "reference")) < 1e-5
    calls.clear()
    _run(model, inputs, "reference")
    assert len(calls) == 1  # the reference projects on every pass


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_time_embedding_sees_fp32_scaled_timesteps(gen, dtype):
    model = random_dit(gen, **P25).to(dtype)
    inputs = _reason1_inputs(gen, model.config, b=1, t=2, n_cond=0)
    inputs["timesteps_B_T"] = torch.tensor([[999.0, 833.0]])
    inputs = {k: v.to(dtype) if k in ("x_B_C_T_H_W", "crossattn_emb") else v for k, v in inputs.items()}
    seen = {}
    model.t_embedder[0].register_forward_hook(lambda mod, args, out: seen.update(t=args[0], sinusoid=out))
    model.t_embedding_norm.register_forward_hook(lambda mod, args, out: seen.update(emb=out))
    model.t_embedder[1].register_forward_hook(lambda mod, args, out: seen.update(lora=out))
    _run(model, inputs, "reference")
    want = torch.tensor([[999.0, 833.0]]) * torch.tensor(0.001, dtype=torch.float32)  # not a division
    assert seen["t"].dtype == torch.float32 and torch.equal(seen["t"], want)
    assert seen["t"][0, 0].item() == 0.9990000724792480
    assert seen["sinusoid"].dtype == seen["emb"].dtype == seen["lora"].dtype == torch.float32


def test_predict2_timesteps_are_still_cast_to_the_network_dtype(gen):
    model = random_dit(gen).to(torch.bfloat16)
    inputs = random_inputs(gen, model.config, b=1, t=2, n_cond=0)
    inputs = {k: v.bfloat16() if k != "timesteps_B_T" else v for k, v in inputs.items()}
    seen = {}
    model.t_embedder[0].register_forward_hook(lambda mod, args, out: seen.update(t=args[0]))
    _run(model, inputs, "reference")
    assert seen["t"].dtype == torch.bfloat16


def test_block_modulation_is_fp32_then_rounded(gen):
    model = random_dit(gen, **P25).to(torch.bfloat16)
    block = model.blocks[0]
    emb = torch.randn(1, 2, 128, generator=gen)
    lora = torch.randn(1, 2, 3 * 128, generator=gen)
    got = block.modulation(emb, lora)
    mod = block.adaln_modulation_mlp
    w1, w2 = mod[1].weight.float(), mod[2].weight.float()
    want = torch.nn.functional.silu(emb) @ w1.T @ w2.T + lora
    assert got.dtype == torch.float32
    torch.testing.assert_close(got[..., -3 * 128:], want, rtol=1e-5, atol=1e-5)


def test_text_of_the_wrong_width_names_the_argument(gen):
    model = random_dit(gen, **P25)
    inputs = _reason1_inputs(gen, model.config)
    inputs["crossattn_emb"] = inputs["crossattn_emb"][..., :64]
    with pytest.raises(ValueError, match=r"crossattn_emb must be .*96"):
        _run(model, inputs, "fused")
