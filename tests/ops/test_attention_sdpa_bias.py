"""The "sdpa" backend's repeated last key: its score bias in q's dtype, exact counts, and the cached biases."""

import math

import pytest
import torch
import torch.nn.functional as F

import cosmos_kernels as ck
from cosmos_kernels.attention import reference, sdpa
from tests.numerics import assert_within_reference_error

HALF_DTYPES = [torch.bfloat16, torch.float16]


def _spy_masks(monkeypatch) -> list:
    """Records (attn_mask, query, key) of every F.scaled_dot_product_attention call."""
    seen = []
    real = F.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, *args, **kwargs):
        seen.append((attn_mask, query, key))
        return real(query, key, value, attn_mask, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return seen


@pytest.mark.parametrize("dtype", [*HALF_DTYPES, torch.float32])
def test_bias_has_the_query_dtype(dtype, monkeypatch, gen):
    """CUDA's memory-efficient SDPA rejects a bias whose dtype is not the query's (cuDNN reads it as q's dtype)."""
    q, k, v = (torch.randn(1, 9, 2, 64, generator=gen).to(dtype) for _ in range(3))
    seen = _spy_masks(monkeypatch)
    ck.attention(q, k, v, last_key_repeats=300, backend="sdpa")
    assert len(seen) == 1
    mask, query, key = seen[0]
    assert mask.dtype == query.dtype == dtype
    assert mask.shape[-1] == key.shape[-2]  # one bias per key


@pytest.mark.parametrize("dtype", [*HALF_DTYPES, torch.float32, torch.float64])
def test_bias_terms_are_exact_in_the_dtype_and_give_the_count(dtype):
    """Two values of q's dtype whose difference is log(n) far below one rounding of log(n) in that dtype."""
    tolerance = max(torch.finfo(dtype).eps ** 2, 4 * torch.finfo(torch.float64).eps)
    for n in range(2, 601):
        terms = sdpa.bias_terms(n, dtype)
        exact = torch.tensor(terms, dtype=torch.float64).to(dtype).double().tolist()
        assert exact == list(terms), (n, terms)  # no rounding when the bias is stored in q's dtype
        last, other = terms
        assert abs(math.expm1(last - other - math.log(n))) <= tolerance * math.log(n), (n, terms)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("repeats", [2, 3, 7, 64, 257, 499, 600])
def test_half_precision_counts_against_float64(dtype, repeats, gen):
    """Rounded once to bf16, log(n) is off by up to 1.6 % of the last key's weight; with the remainder on the
    other keys the error stays that of the reference evaluated in the same dtype."""
    q = (torch.randn(2, 33, 2, 64, generator=gen) * 1.5).to(dtype)
    k = (torch.randn(2, 15, 2, 64, generator=gen) * 1.5).to(dtype)
    v = torch.randn(2, 15, 2, 64, generator=gen).to(dtype)
    k[:, -1] = (k[:, -1].float() * 2).to(dtype)  # a last key that takes a large share of the weight
    got = ck.attention(q, k, v, last_key_repeats=repeats, backend="sdpa")
    want = reference.attention(q.double(), k.double(), v.double(), last_key_repeats=repeats)
    ref = reference.attention(q, k, v, last_key_repeats=repeats)
    assert_within_reference_error(got, ref, want, dtype)
    got32 = ck.attention(*(t.float() for t in (q, k, v)), last_key_repeats=repeats, backend="sdpa")
    assert ((got32.double() - want).norm() / want.norm()).item() < 1e-6


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("repeats", [7, 197, 257, 499, 510, 600])
def test_count_is_exact_in_the_output(dtype, repeats, gen):
    """The output is the repeated key's share of the weight (its value 1, the others' 0): within one ulp of q's
    dtype of the float64 share, so the count itself carries no rounding (log(510) in bf16 alone is off 1.6 %)."""
    others = 4 * repeats
    q = torch.randn(1, 24, 2, 32, generator=gen).to(dtype)
    k = (torch.randn(1, others + 1, 2, 32, generator=gen) * 0.1).to(dtype)
    v = torch.zeros(1, others + 1, 2, 32, dtype=dtype)
    k[:, -1], v[:, -1] = 0, 1
    got = ck.attention(q, k, v, last_key_repeats=repeats, backend="sdpa")
    want = reference.attention(q.double(), k.double(), v.double(), last_key_repeats=repeats)
    relative = ((got.double() - want).abs() / want).max().item()
    assert relative <= torch.finfo(dtype).eps, relative


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_counts_at_one_key_length_do_not_share_a_bias(dtype, gen):
    """Two counts at one key length in one process: each call has its own count's bias (the cache keys it)."""
    q, k, v = (torch.randn(1, 12, 2, 32, generator=gen).to(dtype) for _ in range(3))
    sdpa.clear_cache()
    for repeats in (5, 300, 5):
        got = ck.attention(q, k, v, last_key_repeats=repeats, backend="sdpa")
        want = reference.attention(q.double(), k.double(), v.double(), last_key_repeats=repeats)
        assert_within_reference_error(got, reference.attention(q, k, v, last_key_repeats=repeats), want, dtype)
