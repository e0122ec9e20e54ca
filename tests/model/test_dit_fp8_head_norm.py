"""The FP8 network's cross-attention query with its heads normed in the GEMM's epilogue (`fp8_linear_head_norm`)
against the composition it replaced (the FP8 GEMM rounded to bf16, then the attention's own q norm)."""

import pytest
import torch

import cosmos_kernels
import cosmos_policy.model.fp8 as fp8_blocks
from tests.model._dit_helpers import rel_error
from tests.model._fp8_fused_helpers import check_fused_against_unfused


def _unfused(x, x_scale, weight, weight_scale, norm_weight, *, num_heads, eps, out_dtype):
    """The previous path: `fp8_linear` rounded to out_dtype, then the attention's q norm (`qk_norm_rope` with the
    q weight alone) rounded once more."""
    q = cosmos_kernels.fp8_linear(x, x_scale, weight, weight_scale, out_dtype=out_dtype)
    q = q.unflatten(-1, (num_heads, -1))
    normed, _ = cosmos_kernels.qk_norm_rope(q, q, norm_weight, None, eps=eps)
    return normed


def _dropped(x, x_scale, weight, weight_scale, norm_weight, *, num_heads, eps, out_dtype):
    """The query without its norm: what the checks below must tell apart from the fused GEMM."""
    q = cosmos_kernels.fp8_linear(x, x_scale, weight, weight_scale, out_dtype=out_dtype)
    return q.unflatten(-1, (num_heads, -1))


@torch.no_grad()
@pytest.mark.parametrize("backend", ["auto", "triton"])
@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_the_unfused_composition(seed, backend, monkeypatch):
    """The query differs by the unfused pair's second bf16 rounding only (tests/ops/test_fp8_head_norm.py); in the
    network the e4m3 re-quantization of the attention output turns some of those bf16 ulps into whole e4m3 steps, as
    for the QKV projection (tests/model/test_dit_fp8_qkv.py). The query norms' weights are scaled by 4, so that the
    norm matters in the tiny network (with weights near 1 its cross-attention is about as flat with or without it).
    Measured: fused and unfused about 3 % apart, each about 7 % from the fp32 network; without the norm about 25-45 %
    away. "triton": the fused GEMM on its Triton kernel (the interpreter here), the rest on the automatic choice."""
    def scale_query_norms(model):
        for block in model.blocks:
            block.cross_attn.q_norm.weight.mul_(4.0)

    model, inputs, unfused = check_fused_against_unfused("fp8_linear_head_norm", _unfused, seed, backend, monkeypatch,
                                                         prepare=scale_query_norms)
    monkeypatch.setattr(fp8_blocks, "fp8_linear_head_norm", _dropped)
    assert rel_error(model(**inputs), unfused) > 0.15  # the bound above would catch a dropped norm
