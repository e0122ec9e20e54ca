"""The DiT: shapes and operation-order facts, the fused backend against the reference, the exact caches."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cosmos_kernels.tools import dispatch_counter
from cosmos_policy import CosmosDiT, DiTConfig
from cosmos_policy.model import with_text_tokens
from cosmos_policy.model.blocks import timestep_sinusoid, unpatchify
from cosmos_policy.model.cache import LRUCache
from tests.model._dit_helpers import random_dit, random_inputs, rel_error


def _run(model: CosmosDiT, inputs: dict, backend: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    model.backend = backend
    if model.dtype != dtype:  # a move drops the caches
        model.to(dtype)
    with torch.no_grad():
        return model(**inputs)


# -- configuration --------------------------------------------------------------------------------------------

def test_config_presets_and_json_roundtrip(tmp_path):
    big = DiTConfig.cosmos_predict2_2b()
    sizes = (big.model_channels, big.num_blocks, big.num_heads, big.head_dim, big.mlp_hidden)
    assert sizes == (2048, 28, 16, 128, 8192)
    assert big.patch_in_channels * big.patch_volume == 72 and big.rope_dims == (44, 42, 42)
    tiny = DiTConfig.tiny()
    path = tmp_path / "config.json"
    tiny.save_json(path)
    assert DiTConfig.load_json(path) == tiny
    assert DiTConfig.from_dict(tiny.to_dict()) == tiny
    with pytest.raises(ValueError, match="unknown fields"):
        DiTConfig.from_dict({**tiny.to_dict(), "num_layers": 3})
    with pytest.raises(ValueError, match="divisible by num_heads"):
        DiTConfig.tiny(num_heads=3)


# -- operation-order facts --------------------------------------------------------------------------------------

def test_timestep_sinusoid_is_cos_first_fp32_then_input_dtype():
    t = torch.tensor([0.0, 0.25, 0.9766], dtype=torch.bfloat16)
    emb = timestep_sinusoid(t, 8)
    assert emb.dtype == torch.bfloat16
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    angles = t.float()[:, None] * freqs
    assert torch.equal(emb, torch.cat([angles.cos(), angles.sin()], -1).bfloat16())


def test_rope_table_layout_and_2b_thetas():
    """The network's RoPE table follows its config: [t h w | t h w] layout, NTK-scaled h/w thetas."""
    two_b = DiTConfig.cosmos_predict2_2b()
    ratios = {k: getattr(two_b, k) for k in ("rope_h_extrapolation_ratio", "rope_w_extrapolation_ratio",
                                             "rope_t_extrapolation_ratio")}
    cfg = DiTConfig.tiny(model_channels=256, num_heads=2, rope_ranges_bf16=False, **ratios)  # head_dim 128
    cos, sin = CosmosDiT(cfg)._rope((2, 3, 4))
    assert cos.shape == sin.shape == (24, 128)
    theta_hw = 10000.0 * 3.0 ** (42 / 40)
    assert abs(theta_hw - 31694) < 1
    t, h, w = 1, 2, 3  # token (t=1, h=2, w=3)
    angles = torch.cat([t / 10000.0 ** (torch.arange(0, 44, 2)[:22].double() / 44),
                        h / theta_hw ** (torch.arange(0, 42, 2)[:21].double() / 42),
                        w / theta_hw ** (torch.arange(0, 42, 2)[:21].double() / 42)]).repeat(2)
    tok = t * 12 + h * 4 + w
    torch.testing.assert_close(cos[tok].double(), angles.cos(), rtol=0, atol=1e-6)
    torch.testing.assert_close(sin[tok].double(), angles.sin(), rtol=0, atol=1e-6)
    cos_bf, _ = CosmosDiT(DiTConfig.tiny(model_channels=256, num_heads=2, **ratios))._rope((2, 3, 4))
    assert not torch.equal(cos_bf, cos)  # bf16-rounded exponents change the higher frequencies


def test_unpatchify_puts_channels_innermost():
    cfg = DiTConfig.tiny(out_channels=3, patch_temporal=2)
    feats = torch.arange(2 * 2 * 2 * 3, dtype=torch.float32)  # one token, features (p1 p2 t C)
    out = unpatchify(feats.view(1, 1, 1, 1, -1), cfg)
    assert out.shape == (1, 3, 2, 2, 2)
    p1, p2, t, c = 1, 0, 1, 2
    assert out[0, c, t, p1, p2] == feats[((p1 * 2 + p2) * 2 + t) * 3 + c]


def test_forward_shape_dtype_and_mask_channels_matter(gen):
    model = random_dit(gen)
    inputs = random_inputs(gen, model.config)
    out = _run(model, inputs, "reference")
    assert out.shape == inputs["x_B_C_T_H_W"].shape and out.dtype == torch.float32
    flipped = dict(inputs, condition_video_input_mask_B_C_T_H_W=1 - inputs["condition_video_input_mask_B_C_T_H_W"])
    assert rel_error(_run(model, flipped, "reference"), out) > 1e-3
    padded = torch.ones(1, 1, 32, 24)
    assert rel_error(model(**inputs, padding_mask=padded), out) > 1e-3


# -- fused backend against the reference --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [dict(b=1, t=3, h=8, w=6), dict(b=2, t=2, h=4, w=10, n_text=1)])
def test_fused_matches_reference_within_reference_error(gen, dtype, shape):
    model = random_dit(gen)
    inputs = random_inputs(gen, model.config, **shape)
    want = _run(model, {k: v.double() for k, v in inputs.items()}, "reference", torch.float64)
    ref = _run(model, inputs, "reference", dtype)
    got = _run(model, inputs, "fused", dtype)
    assert got.dtype == dtype
    ref_err, err = rel_error(ref, want), rel_error(got, want)
    floor = 4 * torch.finfo(dtype).eps
    assert err <= 2 * ref_err + floor, f"fused {err:.3e} vs reference {ref_err:.3e}"


def test_fused_at_libero_token_count(gen):
    """1764 tokens (9 latent frames of 28x28) as the LIBERO policy runs, with a 512-token text context."""
    model = random_dit(gen)
    inputs = random_inputs(gen, model.config, t=9, h=28, w=28, n_text=512, n_cond=4)
    ref = _run(model, inputs, "reference")
    got = _run(model, inputs, "fused")
    assert rel_error(got, ref) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lengths", [(5,), (5, 9), (0,)])
def test_zero_padded_text_is_counted_not_stored(gen, dtype, lengths):
    """T5 embeddings are zero beyond the instruction's length: those positions are attended (no mask), but
    their keys and values are exactly zero, so the fused backend counts them instead of storing them."""
    model = random_dit(gen)
    inputs = random_inputs(gen, model.config, b=len(lengths), n_text=40)
    for row, n in enumerate(lengths):
        inputs["crossattn_emb"][row, n:] = 0.0
    want = _run(model, {k: v.double() for k, v in inputs.items()}, "reference", torch.float64)
    ref = _run(model, inputs, "reference", dtype)
    got = _run(model, inputs, "fused", dtype)
    keys, values, repeats = next(iter(model.kv_cache._entries.values()))[0][1][0]
    assert keys.shape[1] == max(lengths) + 1 and repeats == 40 - keys.shape[1] + 1  # one zero row for the rest
    assert not keys[:, -1].any() and not values[:, -1].any()
    ref_err, err = rel_error(ref, want), rel_error(got, want)
    assert err <= 2 * ref_err + 4 * torch.finfo(dtype).eps, f"fused {err:.3e} vs reference {ref_err:.3e}"


# -- caches ------------------------------------------------------------------------------------------------------

def test_cross_attention_kv_cache_hits_and_sees_in_place_changes(gen):
    model = random_dit(gen)
    inputs = random_inputs(gen, model.config)
    first = _run(model, inputs, "fused")
    again = _run(model, inputs, "fused")
    assert model.kv_cache.hits == 1 and torch.equal(first, again)
    inputs["crossattn_emb"].mul_(-0.5)  # in place: same tensor object, new content
    changed = _run(model, inputs, "fused")
    assert rel_error(changed, _run(model, inputs, "reference")) < 1e-5
    assert rel_error(changed, first) > 1e-3
    view = inputs["crossattn_emb"][:, :3]
    view.zero_()  # through a view: the shared version counter moves too
    assert rel_error(_run(model, inputs, "fused"), _run(model, inputs, "reference")) < 1e-5


def test_cache_entry_of_a_dead_tensor_is_dropped(gen):
    model = random_dit(gen)
    inputs = random_inputs(gen, model.config)
    _run(model, inputs, "fused")
    assert len(model.kv_cache) == 1
    del inputs["crossattn_emb"]
    assert len(model.kv_cache) == 0


def test_modulation_cache_is_per_step_and_follows_weight_changes(gen):
    model = random_dit(gen)
    inputs = random_inputs(gen, model.config, b=2, t=4, n_cond=2)
    inputs["timesteps_B_T"][:, 2:] = 0.5  # one step: two distinct values (0 and 0.5), equal batch rows
    _run(model, inputs, "fused")
    assert len(model.modulation_cache) == 1
    (table, _), = model.modulation_cache._entries.values()
    assert table.shape == (1, 4, 1, (9 * 2 + 2) * 128)  # equal batch rows are stored once
    with torch.no_grad():
        assert model._modulation(inputs["timesteps_B_T"], model.weights_key()).data_ptr() == table.data_ptr()
    ref = _run(model, inputs, "reference")
    assert rel_error(_run(model, inputs, "fused"), ref) < 1e-5  # a hit
    inputs["timesteps_B_T"][1, 3] = 0.25  # another step, whose batch rows differ
    assert rel_error(_run(model, inputs, "fused"), _run(model, inputs, "reference")) < 1e-5
    assert len(model.modulation_cache) == 2
    assert {v[0].shape[0] for v in model.modulation_cache._entries.values()} == {1, 2}
    with torch.no_grad():
        model.blocks[0].adaln_modulation_mlp[2].weight.mul_(1.5)
        model.blocks[1].cross_attn.k_proj.weight.add_(0.1)
    got = _run(model, inputs, "fused")
    assert rel_error(got, _run(model, inputs, "reference")) < 1e-5


def test_caches_are_bounded_by_bytes(gen):
    model = random_dit(gen)
    model.kv_cache.max_bytes = 1  # every K/V set is larger: computed, never stored
    model.modulation_cache.max_bytes = 2 * 3 * 4 * (9 * 2 + 2) * 128  # room for two steps of three frames in fp32
    for _ in range(4):
        inputs = random_inputs(gen, model.config, t=3, n_cond=0)
        got = _run(model, inputs, "fused")
        assert rel_error(got, _run(model, inputs, "reference")) < 1e-5
    assert len(model.kv_cache) == 0
    assert len(model.modulation_cache) == 2 and model.modulation_cache.bytes <= model.modulation_cache.max_bytes
    inputs = random_inputs(gen, model.config, b=2, t=4, n_cond=0)  # a step larger than the budget: not stored
    assert rel_error(_run(model, inputs, "fused"), _run(model, inputs, "reference")) < 1e-5
    entries = model.modulation_cache._entries.values()
    assert len(entries) == 2 and all(table.shape[1] == 3 for table, _ in entries)


def test_lru_cache_evicts_least_recently_used():
    cache = LRUCache(3 * 16, "test")
    for key in "abc":
        cache.put(key, torch.zeros(4))
    assert cache.get("a") is not None  # a becomes the most recent
    cache.put("d", torch.zeros(4))
    assert "b" not in cache and {"a", "c", "d"} <= set(cache._entries)
    cache.pin("c")
    cache.put("e", torch.zeros(8))
    assert "c" in cache and cache.bytes <= 48
    cache.put("huge", torch.zeros(100))
    assert "huge" not in cache


def test_load_state_dict_clears_caches(gen):
    model = random_dit(gen)
    inputs = random_inputs(gen, model.config)
    _run(model, inputs, "fused")
    model.load_state_dict(random_dit(gen).state_dict())
    assert len(model.kv_cache) == len(model.modulation_cache) == len(model.rope_cache) == 0


# -- bad input -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, value, match", [
    ("x_B_C_T_H_W", torch.zeros(1, 15, 3, 8, 6), "x_B_C_T_H_W"),
    ("x_B_C_T_H_W", torch.zeros(1, 16, 3, 7, 6), "multiples"),
    ("timesteps_B_T", torch.zeros(1, 4), "timesteps_B_T"),
    ("crossattn_emb", torch.zeros(1, 7, 65), "crossattn_emb"),
    ("condition_video_input_mask_B_C_T_H_W", torch.zeros(1, 1, 2, 8, 6), "condition_video_input_mask"),
])
def test_bad_input_is_a_value_error_naming_the_argument(gen, name, value, match):
    model = random_dit(gen)
    inputs = random_inputs(gen, model.config)
    inputs[name] = value
    with pytest.raises(ValueError, match=match):
        model(**inputs)


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="backend"):
        CosmosDiT(DiTConfig.tiny(), backend="fast")


def test_inference_mode_embedding_is_checked_by_content_once_per_refresh(gen):
    model = random_dit(gen)
    inputs = random_inputs(gen, model.config)
    with torch.inference_mode():
        inputs["crossattn_emb"] = emb = inputs["crossattn_emb"].clone()
        first = _run(model, inputs, "fused")
        assert not model.text_versions.refresh(emb) and model.text_versions.version(emb) == 0
        emb.add_(1.0)  # no version counter to see this: the content check finds it
        assert model.text_versions.refresh(emb) and model.text_versions.version(emb) == 1
        changed = _run(model, inputs, "fused")
        assert rel_error(changed, _run(model, inputs, "reference")) < 1e-5
        assert not model.text_versions.refresh(emb)  # unchanged since: the same version, the cached K/V
        assert torch.equal(_run(model, inputs, "fused"), changed) and model.text_versions.version(emb) == 1
    assert rel_error(changed, first) > 1e-3
    del inputs, emb
    assert len(model.text_versions) == 0  # the copy goes with the tensor


HOST_READS = ("aten::_local_scalar_dense", "aten::equal", "aten::is_nonzero", "aten::item")


class _HostReads(TorchDispatchMode):
    """Ops that hand a tensor's value to the host (a device sync on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in HOST_READS:
            self.ops[func._schema.name] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("inference_text", [True, False], ids=["inference-tensor", "normal-tensor"])
def test_fused_pass_reads_nothing_back_under_inference_mode(gen, inference_text):
    model = random_dit(gen)
    model.backend = "fused"
    inputs = _libero_inputs(gen, model.config, padded=True)
    with torch.inference_mode():
        if inference_text:
            inputs["crossattn_emb"] = inputs["crossattn_emb"].clone()
        model(**inputs)  # fills the caches (the padding search reads the text once)
        with _HostReads() as reads:
            model(**inputs)
    assert not reads.ops, dict(reads.ops)


@pytest.mark.filterwarnings("ignore:.*inputs require grad:RuntimeWarning")
def test_nothing_is_cached_while_autograd_records(gen):
    model = random_dit(gen)
    inputs = random_inputs(gen, model.config)
    model.backend = "fused"
    for _ in range(2):  # the fused ops fall back to their differentiable reference
        model(**inputs).square().mean().backward()
    assert len(model.kv_cache) == len(model.modulation_cache) == len(model.rope_cache) == 0
    assert model.blocks[1].cross_attn.k_proj.weight.grad is not None


def test_integer_latents_are_a_type_error(gen):
    model = random_dit(gen)
    inputs = random_inputs(gen, model.config)
    inputs["x_B_C_T_H_W"] = inputs["x_B_C_T_H_W"].long()
    with pytest.raises(TypeError, match="x_B_C_T_H_W"):
        model(**inputs)


# -- the fused hot path: padded text on the kernel path, packed QKV, dispatched ops ----------------------------

def _libero_inputs(gen, config, padded: bool, tag: bool = False) -> dict:
    """1764 tokens (9 frames of 28x28) and 512 T5 positions, of which 13 are non-zero when `padded`."""
    inputs = random_inputs(gen, config, t=9, h=28, w=28, n_text=512, n_cond=4)
    if padded:
        inputs["crossattn_emb"][:, 13:] = 0.0
        if tag:
            with_text_tokens(inputs["crossattn_emb"], 13)
    return inputs


@pytest.mark.parametrize("tag", [False, True])
def test_fused_on_zero_padded_text_within_1e5_in_fp32(gen, tag):
    model = random_dit(gen)
    inputs = _libero_inputs(gen, model.config, padded=True, tag=tag)
    ref = _run(model, inputs, "reference")
    got = _run(model, inputs, "fused")
    assert next(iter(model.kv_cache._entries.values()))[0][1][0][0].shape[1] == 14  # compacted: 13 rows + 1 zero
    assert rel_error(got, ref) < 1e-5


class _OpCount(TorchDispatchMode):
    """Ops dispatched, as a GPU would launch them: views and allocations are free, a custom op counts the kernels
    its GPU implementation launches (its registered cost)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func._schema.name
        if func.namespace in dispatch_counter.CUSTOM_NAMESPACES:
            self.ops[name] += dispatch_counter._COSTS[name](args, kwargs, out).launches
        elif not (name.split("::")[-1] in dispatch_counter.NO_LAUNCH or func.is_view):
            self.ops[name] += 1
        return out


def _count_pass(gen, blocks: int, padded: bool, backend: str) -> Counter:
    model = random_dit(gen, num_blocks=blocks).to(torch.bfloat16)
    model.backend = backend
    inputs = _libero_inputs(gen, model.config, padded)
    inputs = {k: v.bfloat16() if k != "timesteps_B_T" else v for k, v in inputs.items()}  # fp32 timesteps
    with torch.no_grad():
        model(**inputs)  # steady state: the exact caches are filled
        with _OpCount() as counter:
            model(**inputs)
    return counter.ops


CONVERSIONS = ("aten::_to_copy", "aten::copy_")
SOFTMAX_PIECES = ("aten::bmm", "aten::exp", "aten::amax", "aten::softmax", "aten::_softmax")


@pytest.mark.parametrize("padded", [True, False], ids=["padded-text", "dense-text"])
def test_fused_block_dispatches_at_most_14_ops(gen, padded):
    """bf16 CPU tensors at 1764 tokens; per block = the difference between 3 and 2 blocks."""
    fused = {n: _count_pass(gen, n, padded, "fused") for n in (2, 3)}
    block = fused[3] - fused[2]
    assert sum(block.values()) <= 14, dict(block)
    assert not any(fused[3][op] for op in SOFTMAX_PIECES), dict(fused[3])
    # the step's modulation comes from its cache entry as it is, the padding channel from a cached zero
    assert not any(fused[3][op] for op in ("aten::stack", "aten::zeros", "aten::index_select")), dict(fused[3])
    assert sum(fused[3][op] for op in CONVERSIONS) <= 2 and not any(block[op] for op in CONVERSIONS), dict(fused[3])
    ref = {n: _count_pass(gen, n, padded, "reference") for n in (2, 3)}

    def at(counts, blocks):  # every block dispatches the same ops: extrapolate to the 2B's depth
        per_block = sum(counts[3].values()) - sum(counts[2].values())
        return sum(counts[2].values()) + (blocks - 2) * per_block

    assert at(fused, 28) <= 0.20 * at(ref, 28), (at(fused, 28), at(ref, 28))


def test_packed_qkv_follows_the_parameters(gen):
    """One QKV GEMM from views of the module's own weights, in step through load_state_dict (copy and assign),
    .to() and in-place updates; the state_dict keys are the official ones for both backends."""
    model = random_dit(gen)
    keys = list(model.state_dict())
    assert not any("packed" in k or "qkv" in k for k in keys)
    inputs = random_inputs(gen, model.config)

    def check():
        for block in model.blocks:
            attn = block.self_attn
            packed = attn.packed_qkv_weight()
            assert torch.equal(packed, torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
            assert attn._is_packed(packed)
        assert rel_error(_run(model, inputs, "fused"), _run(model, inputs, "reference")) < 1e-5

    check()
    with torch.no_grad():
        model.blocks[0].self_attn.k_proj.weight.mul_(1.5)  # in place: the packed view sees it
    check()
    other = random_dit(gen).state_dict()
    model.load_state_dict(other)
    check()
    model.load_state_dict({k: v.clone() for k, v in random_dit(gen).state_dict().items()}, assign=True)
    check()
    model.to(torch.float64).to(torch.float32)
    check()
    model.blocks[1].self_attn.v_proj.weight = torch.nn.Parameter(torch.randn(128, 128, generator=gen) * 0.1)
    check()
    model.backend = "reference"
    assert list(model.state_dict()) == keys
