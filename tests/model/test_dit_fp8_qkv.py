"""The FP8 network's QKV projection with q / k normed and rotated in its epilogue (`fp8_linear_qk_norm_rope`)
against the composition it replaced (the FP8 GEMM rounded to bf16, then the attention's own `qk_norm_rope`)."""

import pytest
import torch

import cosmos_kernels
from tests.model._fp8_fused_helpers import check_fused_against_unfused


def _unfused(x, x_scale, weight, weight_scale, q_norm, k_norm, cos, sin, *, num_heads, eps, out_dtype):
    """The previous path: `fp8_linear` rounded to out_dtype, then `qk_norm_rope` rounded once more."""
    qkv = cosmos_kernels.fp8_linear(x, x_scale, weight, weight_scale, out_dtype=out_dtype)
    q, k, v = qkv.unflatten(-1, (3, num_heads, -1)).unbind(2)
    q, k = cosmos_kernels.qk_norm_rope(q, k, q_norm, k_norm, cos, sin, eps=eps)
    return q, k, v


@torch.no_grad()
@pytest.mark.parametrize("backend", ["auto", "triton"])
@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_the_unfused_composition(seed, backend, monkeypatch):
    """q, k and v differ by the unfused pair's second bf16 rounding of q and k only (tests/ops/test_fp8_qkv.py); in
    the network the e4m3 re-quantization of the attention output turns some of those bf16 ulps into whole e4m3
    steps (measured: the two networks about 3 % apart, each about 5 % from the fp32 network, as FP8 is). A wrong
    norm or rotation gives errors of order 100 %. "triton": the fused GEMM on its Triton kernel (the interpreter
    here), the rest on the automatic choice."""
    check_fused_against_unfused("fp8_linear_qk_norm_rope", _unfused, seed, backend, monkeypatch)
