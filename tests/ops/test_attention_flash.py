"""The flash-attn backend's handling of the libraries' return forms and of a repeated last key, checked on the
CPU against the reference with stand-ins that compute what each library returns (no flash-attn needed)."""

import pytest
import torch

from cosmos_kernels.attention import flash, reference


def _softmax_parts(q, k, v, scale):
    """(out, lse) of plain attention on (B, L, heads, d) tensors, lse as the libraries return it: (B, heads, Lq)."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) * scale
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(scores, dim=-1), v.double())
    return out.to(q.dtype), lse.float()


def fa2_like(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, return_attn_probs=False):
    out, lse = _softmax_parts(q, k, v, softmax_scale)
    return (out, lse, None) if return_attn_probs else out


def fa3_old_like(q, k, v, softmax_scale=None, causal=False):
    return _softmax_parts(q, k, v, softmax_scale)  # always (out, lse)


def out_only(q, k, v, softmax_scale=None, causal=False):
    return _softmax_parts(q, k, v, softmax_scale)[0]


def _inputs(gen, lq=23, lk=9, heads=3, d=32):
    q = torch.randn(2, lq, heads, d, generator=gen)
    k = torch.randn(2, lk, heads, d, generator=gen)
    v = torch.randn(2, lk, heads, d, generator=gen)
    return q, k, v


@pytest.mark.parametrize("fn", [fa2_like, fa3_old_like, out_only])
def test_every_return_form_gives_the_output(fn, gen):
    q, k, v = _inputs(gen)
    got = flash.attention(q, k, v, 32 ** -0.5, 1, fn=fn)
    want = reference.attention(q.double(), k.double(), v.double())
    assert torch.allclose(got.double(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fn", [fa2_like, fa3_old_like])
@pytest.mark.parametrize("zero_last", [True, False])
@pytest.mark.parametrize("repeats", [2, 499])
def test_repeated_last_key_from_the_log_sum_exp(fn, zero_last, repeats, gen):
    """The T5 padding case (a zero key and value standing for 499 rows) and a general last row."""
    q, k, v = _inputs(gen)
    if zero_last:
        k[:, -1], v[:, -1] = 0.0, 0.0
    got = flash.attention(q, k, v, 0.2, repeats, fn=fn)
    want = reference.attention(q.double(), k.double(), v.double(), scale=0.2, last_key_repeats=repeats)
    assert got.dtype == q.dtype and torch.allclose(got.double(), want, atol=1e-5, rtol=1e-5)
    # and against the rows written out in full
    k_full = torch.cat([k, k[:, -1:].expand(-1, repeats - 1, -1, -1)], dim=1)
    v_full = torch.cat([v, v[:, -1:].expand(-1, repeats - 1, -1, -1)], dim=1)
    assert torch.allclose(got.double(), reference.attention(q.double(), k_full.double(), v_full.double(), scale=0.2),
                          atol=1e-5, rtol=1e-5)


def test_a_build_without_log_sum_exp_hands_repeats_back(gen):
    q, k, v = _inputs(gen)
    assert flash.attention(q, k, v, 0.2, 7, fn=out_only) is None  # the op then runs SDPA with its bias


def test_modules_are_tried_fa3_fa4_fa2():
    assert [label for _, label in flash.FLASH_MODULES] == ["FA3", "FA4", "FA2"]
