"""The FP8 network whose output projections add the gated residual in their epilogue (`fp8_linear_gated_residual`)
against the unfused sequence it replaces: `quantize_rowwise` of the attention outputs, each product rounded to the
network's dtype, then `gated_residual_layer_norm_modulate_fp8` (the MLP's first GEMM is the same in both). The two
differ by one rounding of each projection's product to the network's dtype, nothing else."""

import pytest
import torch

import cosmos_kernels
from cosmos_kernels.fp8 import fp8_linear, fp8_linear_gated_residual, fp8_linear_gelu_quantize, quantize_rowwise
from cosmos_policy.model import fp8 as fp8_blocks
from cosmos_policy.testing import t5_like_embedding
from tests.model._dit_helpers import random_dit, random_inputs, rel_error


def _linear(rows, weight, dtype):
    return fp8_linear(rows[0], rows[1], weight[0], weight[1], out_dtype=dtype)


def _product(rows, weight, x):
    """The group-scaled GEMM's product rounded to x's dtype (added to a zero residual with a unit gate)."""
    zeros = torch.zeros_like(x)
    return fp8_linear_gated_residual(*rows, *weight, zeros, torch.ones_like(zeros[..., :1, :]))


def _unfused_blocks(blocks, weights, x, mod, rope, kv, norm_weights, eps):
    """The FP8 blocks as they ran before the fused output projections (each product rounded to x's dtype, then
    added to the residual by the norm that follows)."""
    b, t, s, d = x.shape
    dtype = x.dtype
    cos, sin = rope
    rows = cosmos_kernels.layer_norm_modulate_fp8(x, mod(0, 0), mod(0, 1), eps)
    for i, block in enumerate(blocks):
        sa, ca, w = block.self_attn, block.cross_attn, weights[i]
        _, q_norm, k_norm, cross_q_norm = norm_weights[i]
        flat = (rows[0].view(b, t * s, d), rows[1].view(b, t * s, 1))
        q, k, v = _linear(flat, w.qkv, dtype).unflatten(-1, (3, sa.num_heads, sa.head_dim)).unbind(2)
        out = cosmos_kernels.attention(q, k, v, q_norm_weight=q_norm, k_norm_weight=k_norm, rope_cos=cos,
                                       rope_sin=sin, norm_eps=eps)
        out = _linear(quantize_rowwise(out.flatten(2)), w.self_out, dtype).view(b, t, s, d)
        x, *rows = cosmos_kernels.gated_residual_layer_norm_modulate_fp8(x, out, mod(i, 2), mod(i, 3), mod(i, 4), eps)
        ck, cv, repeats = kv[i]
        flat = (rows[0].view(b, t * s, d), rows[1].view(b, t * s, 1))
        q = ca.heads(_linear(flat, w.cross_q, dtype))
        out = cosmos_kernels.attention(q, ck.expand(b, -1, -1, -1), cv.expand(b, -1, -1, -1),
                                       q_norm_weight=cross_q_norm, norm_eps=eps, last_key_repeats=repeats)
        out = _linear(quantize_rowwise(out.flatten(2)), w.cross_out, dtype).view(b, t, s, d)
        x, *rows = cosmos_kernels.gated_residual_layer_norm_modulate_fp8(x, out, mod(i, 5), mod(i, 6), mod(i, 7), eps)
        hidden = fp8_linear_gelu_quantize(*rows, *w.mlp_in)
        out = _product(hidden, w.mlp_out, x)
        if i + 1 < len(blocks):
            x, *rows = cosmos_kernels.gated_residual_layer_norm_modulate_fp8(x, out, mod(i, 8), mod(i + 1, 0),
                                                                             mod(i + 1, 1), eps)
        else:
            x, normed = cosmos_kernels.gated_residual_layer_norm_modulate(x, out, mod(i, 8), mod(i + 1, 0),
                                                                          mod(i + 1, 1), eps)
    return x, normed


def _networks(seed):
    gen = torch.Generator().manual_seed(seed)
    model = random_dit(gen, backend="fused")
    inputs = random_inputs(gen, model.config)
    inputs["crossattn_emb"] = t5_like_embedding("put the bowl on the plate", model.config.crossattn_emb_channels, gen)
    model.fp8 = True
    return model, inputs


def _fused_and_unfused(model, inputs, monkeypatch):
    with monkeypatch.context() as patch:
        fused = model(**inputs)
        patch.setattr(fp8_blocks, "forward_blocks", _unfused_blocks)
        unfused = model(**inputs)
    assert torch.isfinite(fused).all()
    return fused, unfused


@torch.no_grad()
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_the_unfused_projections(seed, monkeypatch):
    """fp32 networks: the two differ by fp32 roundings only (measured 0.8-1.2e-7 relative; a dropped or doubled gate,
    a wrong scale or a misplaced row gives errors of order 10-100 %). bf16 networks: each bf16 rounding of an operand
    that is quantized next can move an e4m3 value across a rounding boundary, so two bf16 FP8 networks that round
    differently are about 2-3 % apart (measured), and each about 3.5-5 % from the fp32 FP8 network: the fused one,
    which rounds each product once instead of twice, must be as close to it as the unfused one (up to 25 %)."""
    model, inputs = _networks(seed)
    fused32, unfused32 = _fused_and_unfused(model, inputs, monkeypatch)
    assert rel_error(fused32, unfused32) < 1e-5
    model = model.bfloat16()
    fused, unfused = _fused_and_unfused(model, inputs, monkeypatch)
    assert fused.dtype == torch.bfloat16
    assert rel_error(fused, unfused) < 0.05
    assert rel_error(fused, fused32) <= 1.25 * rel_error(unfused, fused32)


def _heads_of_128(seed):
    """One block of two heads of 128: the attentions write e4m3 with a scale per (token, head)."""
    gen = torch.Generator().manual_seed(seed)
    model = random_dit(gen, backend="fused", model_channels=256, num_heads=2, num_blocks=1)
    inputs = random_inputs(gen, model.config)
    inputs["crossattn_emb"] = t5_like_embedding("put the bowl on the plate", model.config.crossattn_emb_channels, gen)
    return model, inputs


def _run_counting_fp8_attention(model, inputs, monkeypatch, group=None):
    """The FP8 network's output and its `attention_fp8` calls; `group` other than 128: today's path, the 16-bit
    attention output quantized row-wise inside the output projections."""
    calls = []
    with monkeypatch.context() as patch:
        if group is not None:
            patch.setattr(fp8_blocks, "GROUP", group)
        fn = fp8_blocks.attention_fp8
        patch.setattr(fp8_blocks, "attention_fp8", lambda *a, **k: calls.append(1) or fn(*a, **k))
        model.fp8 = True
        out = model(**inputs)
        model.fp8 = False
    assert torch.isfinite(out).all()
    return out, len(calls)


@torch.no_grad()
@pytest.mark.parametrize("seed", [0, 1])
def test_heads_of_128_quantize_in_the_attention(seed, monkeypatch):
    """head_dim 128: both attentions hand the output projections e4m3 with a scale per (token, head), their
    group-scaled operand, instead of a 16-bit output they quantize per row. The two differ by FP8 rounding only
    (measured 2.2-3.1 % apart in fp32 and in bf16, each 3-4.5 % from the unquantized fp32 network), the per-head
    scales as close to it as the per-row ones (up to 25 %). The tiny config (heads of 64, half a scale group) keeps
    the row-wise path."""
    model, inputs = _heads_of_128(seed)
    exact = model(**inputs)
    for dtype in (torch.float32, torch.bfloat16):
        model = model.to(dtype)
        per_head, calls = _run_counting_fp8_attention(model, inputs, monkeypatch)
        per_row, calls_before = _run_counting_fp8_attention(model, inputs, monkeypatch, group=-1)
        assert (calls, calls_before) == (2, 0)
        assert per_head.dtype == dtype
        assert rel_error(per_head, per_row) < 0.05
        assert rel_error(per_head, exact) <= 1.25 * rel_error(per_row, exact)
    tiny, tiny_inputs = _networks(seed)
    assert _run_counting_fp8_attention(tiny, tiny_inputs, monkeypatch)[1] == 0
