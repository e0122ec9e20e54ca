"""Cross-attention over zero-padded text (a repeated last key), one-sided norms, and the GPU launch settings.

The padded-text cases compare every backend with a float64 evaluation over the text as it really is: the
instruction's keys followed by hundreds of zero rows, stored explicitly.
"""

import math

import pytest
import torch

import cosmos_kernels as ck
from cosmos_kernels import _dispatch
from cosmos_kernels._registry import TRITON_KERNELS
from cosmos_kernels.attention import ops, reference
from tests.numerics import assert_within_reference_error, error_floor, max_abs_error

CPU = torch.device("cpu")
BACKENDS = [b for b in ("reference", "sdpa", "triton") if ops._backend_usable(b, torch.empty(0))]
# The interpreter computes bf16 dots wrongly: bf16 runs through the non-Triton backends only.
CASES = [(torch.float32, b) for b in BACKENDS] + [(torch.bfloat16, b) for b in BACKENDS if b != "triton"] + [
    (torch.float16, b) for b in BACKENDS]


def _padded_text(gen, B, Lq, tokens, padding, H, D, dtype):
    """q, the compact keys / values (instruction rows + one zero row) and their explicit zero-padded form."""
    q = (torch.randn(B, Lq, H, D, generator=gen) * 1.5).to(dtype)
    k = (torch.randn(B, tokens + 1, H, D, generator=gen) * 1.5).to(dtype)
    v = torch.randn(B, tokens + 1, H, D, generator=gen).to(dtype)
    k[:, -1], v[:, -1] = 0, 0
    zeros = torch.zeros(B, padding, H, D, dtype=dtype)
    return q, k, v, torch.cat([k, zeros], 1), torch.cat([v, zeros], 1)


@pytest.mark.parametrize("dtype,backend", CASES, ids=str)
@pytest.mark.parametrize("B,Lq,tokens,padding,H,D", [(1, 37, 13, 498, 2, 64), (2, 5, 1, 40, 1, 128),
                                                     (1, 70, 40, 3, 2, 32)])
def test_repeated_zero_key_is_the_padded_text(dtype, backend, B, Lq, tokens, padding, H, D, gen):
    q, k, v, k_full, v_full = _padded_text(gen, B, Lq, tokens, padding, H, D, dtype)
    w = torch.rand(D, generator=gen) + 0.5
    got = ck.attention(q, k, v, q_norm_weight=w, last_key_repeats=padding + 1, backend=backend)
    want = reference.attention(q.double(), k_full.double(), v_full.double(), q_norm_weight=w.double())
    ref = reference.attention(q, k_full, v_full, q_norm_weight=w)
    assert got.shape == q.shape and got.dtype == dtype
    # sdpa's count enters as the difference of two biases in q's dtype: log n to about log(n) * eps^2 / 4
    slack = 8 * torch.finfo(torch.float32).eps * max(1.0, want.abs().max().item()) if backend == "sdpa" else 0.0
    err, ref_err = (max_abs_error(t, want) for t in (got, ref))
    assert err <= 2 * ref_err + error_floor(dtype) * max(1.0, want.abs().max().item()) + slack, (err, ref_err)


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeated_key_need_not_be_zero(backend, gen):
    q, k, v = (torch.randn(1, 9, 2, 32, generator=gen) for _ in range(3))
    k_full, v_full = (torch.cat([t, t[:, -1:].expand(-1, 6, -1, -1)], 1) for t in (k, v))
    got = ck.attention(q, k, v, last_key_repeats=7, backend=backend)
    torch.testing.assert_close(got, reference.attention(q, k_full, v_full), rtol=1e-5, atol=1e-5)


def test_fp32_padded_text_is_exact_to_fp32(gen):
    """The log-count bias is fp32 (bf16 would round log(499) by up to 1.6 %)."""
    q, k, v, k_full, v_full = _padded_text(gen, 1, 64, 13, 498, 2, 64, torch.float32)
    want = reference.attention(q.double(), k_full.double(), v_full.double())
    for backend in BACKENDS:
        got = ck.attention(q, k, v, last_key_repeats=499, backend=backend)
        assert ((got.double() - want).norm() / want.norm()).item() < 1e-6, backend


@pytest.mark.parametrize("bad", [0, -3, 1.5, True])
def test_bad_repeats(bad, gen):
    q = torch.randn(1, 4, 1, 16, generator=gen)
    with pytest.raises(ValueError, match="last_key_repeats must be an int >= 1"):
        ck.attention(q, q, q, last_key_repeats=bad)


# -- one-sided norms ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("side", ["q", "k"])
@pytest.mark.parametrize("rope", [False, True])
def test_one_sided_norm(backend, side, rope, gen):
    q, k, v = (torch.randn(1, 21, 2, 64, generator=gen) * 2 for _ in range(3))
    q, k = q[:, :, :, :], k.transpose(1, 1)
    w = torch.rand(64, generator=gen) + 0.5
    extra = {f"{side}_norm_weight": w}
    if rope:
        extra["rope_cos"], extra["rope_sin"] = ck.rope_3d_tables(1, 3, 7, 64)
    got = ck.attention(q, k, v, backend=backend, **extra)
    want = reference.attention(q.double(), k.double(), v.double(), **{n: t.double() for n, t in extra.items()})
    assert_within_reference_error(got, reference.attention(q, k, v, **extra), want, torch.float32)


@pytest.mark.parametrize("backend", [b for b in ("cpu", "triton") if _dispatch.backend_available(b, CPU)])
def test_qk_norm_rope_one_sided(backend, gen):
    q = torch.randn(2, 7, 3, 64, generator=gen)
    k = torch.randn(2, 5, 3, 64, generator=gen)
    w = torch.rand(64, generator=gen) + 0.5
    for qw, kw in ((w, None), (None, w)):
        got = ck.qk_norm_rope(q, k, qw, kw, backend=backend)
        want = reference.qk_norm_rope(q, k, qw, kw)
        for g, x, src in zip(got, want, (q, k)):
            torch.testing.assert_close(g, x, rtol=1e-5, atol=1e-5)
            assert g.data_ptr() != src.data_ptr()  # a new tensor also for the side left as it is


# -- GPU launch settings, run through the interpreter -----------------------------------------------------------

def _gpu_configs():
    from cosmos_kernels.attention import triton as tk

    out = set()
    for d in (64, 128, 256):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            for hopper in (True, False):
                for rope in (True, False):
                    out.add((d, dtype, tk.gpu_config(d, dtype, hopper, rope)))
    return sorted(out, key=str)


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@pytest.mark.skipif("triton" not in BACKENDS, reason="Triton is not available")
def test_gpu_tiles_are_powers_of_two_also_in_the_compile_report():
    for d, dtype, (block_m, block_n, warps, stages) in _gpu_configs():
        assert _power_of_two(block_m) and _power_of_two(block_n), (d, dtype, block_m, block_n)
        assert block_n in (16, 32, 64, 128) and warps in (4, 8) and stages >= 1
    entry = TRITON_KERNELS["attention.flash_attention_fwd"]
    for config in entry.configs:
        assert _power_of_two(config.constexprs["BLOCK_N"]) and _power_of_two(config.constexprs["BLOCK_M"])


@pytest.mark.skipif("triton" not in BACKENDS, reason="Triton is not available")
def test_every_launched_tile_is_in_the_compile_report():
    """The sm_90a report sees what a GPU launches: fp32 (its own tiles) over the whole head_dim range, 16 bits at
    the model's head dims, on both architecture families, with and without RoPE."""
    from cosmos_kernels.attention import triton as tk

    reported = {(c.label.split()[1], c.constexprs["HEAD_DIM"], c.constexprs["ROPE"], c.constexprs["BLOCK_M"],
                 c.constexprs["BLOCK_N"], c.num_warps, c.num_stages)
                for c in TRITON_KERNELS["attention.flash_attention_fwd"].configs}
    dims = {"fp32": (64, 96, 128, 256), "bf16": (64, 128), "fp16": (64, 128)}
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    for name, head_dims in dims.items():
        for d in head_dims:
            for hopper in (True, False):
                for rope in (True, False):
                    assert (name, d, rope, *tk.gpu_config(d, dtypes[name], hopper, rope)) in reported


@pytest.mark.skipif("triton" not in BACKENDS, reason="Triton is not available")
@pytest.mark.parametrize("d", [64, 128, 256])
def test_gpu_tile_configs_compute_attention(d, gen):
    """Each tile configuration a GPU launches, run by the interpreter (fp16 / fp32) across block edges."""
    from cosmos_kernels.attention import triton as tk

    for cd, dtype, config in _gpu_configs():
        if cd != d or dtype == torch.bfloat16:
            continue
        block_m, block_n = config[:2]
        lq, lk = block_m + 3, block_n + 5
        q, k, v = (torch.randn(1, n, 1, d, generator=gen).to(dtype) for n in (lq, lk, lk))
        w = torch.rand(d, generator=gen) + 0.5
        got = tk.attention(q, k, v, w, None, None, None, d ** -0.5, 1e-6, 3, config=config)
        want = reference.attention(q.double(), k.double(), v.double(), q_norm_weight=w.double(), last_key_repeats=3)
        ref = reference.attention(q, k, v, q_norm_weight=w, last_key_repeats=3)
        assert_within_reference_error(got, ref, want, dtype)


@pytest.mark.skipif("triton" not in BACKENDS, reason="Triton is not available")
def test_fp32_attention_never_uses_tf32(monkeypatch, gen):
    """fp32 inputs keep fp32 dots (TF32 would round them to 10 mantissa bits): checked on the launch itself."""
    from cosmos_kernels.attention import triton as tk

    launched = []

    class Recorder:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launched.append(kwargs)

    assert tk.dot_precision(torch.float32) == "ieee"
    monkeypatch.setattr(tk, "_attention_fwd_kernel", Recorder())
    q = torch.randn(1, 8, 1, 64, generator=gen)
    tk.attention(q, q, q, None, None, None, None, 0.125, 1e-6)
    tk.attention(q, q, q, None, None, None, None, 0.125, 1e-6, config=tk.gpu_config(64, torch.float32, True, False))
    assert [kw["DOT_PRECISION"] for kw in launched] == ["ieee", "ieee"]
    for config in TRITON_KERNELS["attention.flash_attention_fwd"].configs:
        assert config.constexprs["DOT_PRECISION"] == tk.dot_precision(
            torch.float32 if "fp32" in config.label else torch.float16)


def test_automatic_choice_needs_the_triton_probe(monkeypatch):
    """Auto on a GPU considers the Triton kernel only after its probe passed (meta tensors dispatch as CUDA)."""
    calls = []

    def probe(op, backend, device, result):
        calls.append((op, backend))
        return result

    q = torch.empty(1, 40, 2, 128, dtype=torch.bfloat16, device="meta")
    with _dispatch.meta_as_cuda():
        monkeypatch.setattr(_dispatch, "probe_passed", lambda o, b, d: probe(o, b, d, False))
        assert "triton" not in ops.auto_candidates(q)
        assert ("attention", "triton") in calls
        monkeypatch.setattr(_dispatch, "probe_passed", lambda o, b, d: probe(o, b, d, True))
        assert ops.auto_candidates(q)[0] == "triton"


@pytest.mark.skipif("triton" not in BACKENDS, reason="Triton is not available")
def test_launch_grid_takes_more_than_65535_batch_heads(monkeypatch):
    """Grid axes y and z stop at 65,535 programs: batch x heads beyond that stays on axis x (up to 2^31 - 1)."""
    from cosmos_kernels.attention import triton as tk

    grids = []

    class Recorder:
        def __getitem__(self, grid):
            grids.append(grid)
            return lambda *args, **kwargs: None

    monkeypatch.setattr(tk, "_attention_fwd_kernel", Recorder())
    q = torch.zeros(1, 1, 1, 16, dtype=torch.float16).expand(35_000, 1, 2, 16)  # batch x heads = 70,000
    tk.attention(q, q, q, None, None, None, None, 0.25, 1e-6)
    (grid,) = grids
    assert all(n <= 65_535 for n in grid[1:]) and grid[0] <= tk.MAX_GRID_X and math.prod(grid) == 70_000
    assert tk.attention_grid(35_000, 2, 40, 32) == (140_000,)  # two blocks of 32 queries per (batch, head)
    with pytest.raises(ValueError, match="exceed CUDA's"):
        tk.attention_grid(2 ** 20, 2 ** 6, 2 ** 12, 64)
