"""GPU-only checks of the fused FP8 kernels (skipped without a GPU with FP8 tensor cores): each Triton kernel in
bf16 (which the CPU interpreter cannot run) at an odd shape and at the 2B's, against its float64 reference on the
same e4m3 operands; each probe passing, so that the automatic choice on the card is the kernel and not the
reference; and the FP8 blocks of the 2B's width against the bf16 blocks."""

from __future__ import annotations

import pytest
import torch

import cosmos_kernels as ck
from cosmos_kernels import _dispatch, fp8
from cosmos_kernels.attention import fp8_reference
from cosmos_kernels.attention import reference as attention_reference
from cosmos_kernels.fp8 import reference

pytestmark = pytest.mark.gpu
FUSED_OPS = ("fp8_linear_qk_norm_rope", "fp8_linear_head_norm", "fp8_linear_gelu_quantize",
             "fp8_linear_gated_residual", "attention_fp8")
SHAPES = [(1, 37, 200), (1, 1764, 2048)]  # (batch, tokens, in_features): odd, and the 2B's LIBERO pass


@pytest.fixture(autouse=True)
def _fp8_gpu():
    reason = fp8.fp8_unsupported_reason("cuda", torch.bfloat16) if torch.cuda.is_available() else "no CUDA GPU"
    if reason is not None:
        pytest.skip(reason)


def _rows(gen, b, m, k):
    x, scale = reference.quantize_rowwise(torch.randn(b, m, k, generator=gen) * 2)
    return x.cuda(), scale.cuda()


def _weight(gen, n, k):
    w, scale = reference.quantize_weight(torch.randn(n, k, generator=gen) / k ** 0.5)
    return w.cuda(), scale.cuda()


def _rel(got: torch.Tensor, want64: torch.Tensor) -> float:
    return ((got.double().cpu() - want64.cpu()).norm() / want64.cpu().norm()).item()


def _dequantized(values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    if scales.shape[-1] == 1:
        return reference.dequantize(values.cpu(), scales.cpu(), torch.float64)
    return reference.dequantize_groupwise(values.cpu(), scales.cpu(), 128, torch.float64)


@pytest.mark.parametrize("op", FUSED_OPS)
def test_probe_passes_so_the_card_runs_the_kernel(op):
    assert _dispatch.has_probe(op, "triton")
    assert _dispatch.probe_passed(op, "triton", torch.device("cuda")), f"{op}: the Triton probe failed on this card"


@pytest.mark.parametrize("b,m,k", SHAPES)
def test_qkv_and_head_norm_in_bf16(b, m, k, gen):
    heads, d = (2, 128) if k == 200 else (16, 128)
    x, xs = _rows(gen, b, m, k)
    w, ws = _weight(gen, 3 * heads * d, k)
    qn, kn = (torch.rand(d, generator=gen) + 0.5).cuda(), (torch.rand(d, generator=gen) + 0.5).cuda()
    cos, sin = (t.cuda() for t in attention_reference.rope_3d_tables(1, 1, m, d))
    got = ck.fp8_linear_qk_norm_rope(x, xs, w, ws, qn, kn, cos, sin, num_heads=heads, backend="triton")
    want = fp8_reference.fp8_linear_qk_norm_rope(x.cpu(), xs.cpu().double(), w.cpu(), ws.cpu().double(), qn.cpu(),
                                                 kn.cpu(), cos.cpu(), sin.cpu(), heads, out_dtype=torch.float64)
    for g, t in zip(got, want):
        assert g.dtype == torch.bfloat16 and _rel(g, t) < 4e-3  # one bf16 rounding
    q = ck.fp8_linear_head_norm(x, xs, w[: heads * d], ws[: heads * d], qn, num_heads=heads, backend="triton")
    assert _rel(q, fp8_reference.fp8_linear_head_norm(x.cpu(), xs.cpu().double(), w[: heads * d].cpu(),
                                                      ws[: heads * d].cpu().double(), qn.cpu(), heads,
                                                      out_dtype=torch.float64)) < 4e-3


@pytest.mark.parametrize("b,m,k", SHAPES)
def test_mlp_pair_and_output_projections_in_bf16(b, m, k, gen):
    n = 4 * k
    x, xs = _rows(gen, b, m, k)
    w1, ws1 = _weight(gen, n, k)
    values, scales = fp8.fp8_linear_gelu_quantize(x, xs, w1, ws1, backend="triton")
    want_v, want_s = reference.fp8_linear_gelu_quantize(x.cpu(), xs.cpu().double(), w1.cpu(), ws1.cpu().double())
    assert scales.shape == want_s.shape
    # fp32 accumulation on the card vs float64: equal e4m3 codes but for values on a rounding edge
    assert _rel(_dequantized(values, scales), _dequantized(want_v, want_s)) < 1e-2

    w2, ws2 = _weight(gen, k, n)
    residual = torch.randn(b, m, k, generator=gen).cuda().bfloat16()
    gate = torch.randn(b, 1, k, generator=gen).cuda().bfloat16()
    float_x = torch.randn(b, m, n, generator=gen).cuda().bfloat16()
    rows_x, rows_s = reference.quantize_rowwise(float_x)
    for a, a_scale in ((values, scales), (rows_x, rows_s), (float_x, None)):
        got = fp8.fp8_linear_gated_residual(a, a_scale, w2, ws2, residual, gate, backend="triton")
        want = reference.fp8_linear_gated_residual(
            a.cpu() if a_scale is not None else a.cpu().double(), None if a_scale is None else a_scale.cpu().double(),
            w2.cpu(), ws2.cpu().double(), residual.cpu().double(), gate.cpu().double())
        assert got.dtype == torch.bfloat16 and _rel(got, want) < 4e-3


@pytest.mark.parametrize("lq,lk,repeats", [(37, 37, 1), (1764, 1764, 1), (1764, 20, 493)])
def test_attention_fp8_in_bf16(lq, lk, repeats, gen):
    h, d = 16, 128
    q, k, v = (torch.randn(1, n, h, d, generator=gen).cuda().bfloat16() for n in (lq, lk, lk))
    qn = (torch.rand(d, generator=gen) + 0.5).cuda() if repeats > 1 else None
    values, scales = ck.attention_fp8(q, k, v, q_norm_weight=qn, last_key_repeats=repeats, backend="triton")
    want = attention_reference.attention(q.cpu().double(), k.cpu().double(), v.cpu().double(),
                                         q_norm_weight=None if qn is None else qn.cpu().double(),
                                         last_key_repeats=repeats)
    # bf16 probabilities before PV, as every flash attention: about 2^-8 relative, then e4m3 (2^-4)
    assert _rel(_dequantized(values, scales), want) < 3e-2


@torch.no_grad()
def test_fp8_blocks_of_the_2b_width_stay_near_bf16(gen):
    """One block of the 2B's width (16 heads of 128: the attention's FP8 output path) on the card, FP8 against bf16
    and both against fp32 (tests/model/test_dit_fp8.py measures about 5 % on the CPU's tiny config)."""
    from cosmos_policy import CosmosDiT, DiTConfig
    from tests.model._dit_helpers import random_inputs, rel_error

    config = DiTConfig.cosmos_predict2_2b(num_blocks=1)
    with torch.device("cuda"):
        model = CosmosDiT(config, backend="fused")
    inputs = {key: value.cuda() if isinstance(value, torch.Tensor) else value
              for key, value in random_inputs(gen, config).items()}
    want = model(**inputs)
    model = model.bfloat16()
    bf16 = model(**inputs)
    model.fp8 = True
    got = model(**inputs)
    assert rel_error(bf16, want) < 0.02 and rel_error(got, want) < 0.10
