"""`attention_fp8` against a float64 evaluation of its reference (`quantize_rowwise` of each head's row of the fp32
attention output), on every backend here (Triton through its interpreter): odd lengths, self- and cross-attention
with a repeated last key and the q norm, head_dim 64, 96 and 128, strided q / k / v; its registration, cost, tiles,
its use as the group-scaled operand of the FP8 output projection, and its errors."""

import pytest
import torch

import cosmos_kernels as ck
from cosmos_kernels._registry import TRITON_KERNELS
from cosmos_kernels.attention import fp8_reference, reference
from cosmos_kernels.fp8 import fp8_linear_gated_residual
from cosmos_kernels.fp8 import reference as quantization
from cosmos_kernels.tools.dispatch_counter import DispatchCounter
from tests.numerics import assert_e4m3_rows, cpu_backends

BACKENDS = [b for b in cpu_backends() if b in ("reference", "triton")]
E4M3 = torch.float8_e4m3fn
# The unit roundoff of what the kernel holds in q's dtype: fp32 inputs keep fp32 dots and probabilities; 16-bit
# inputs round the normed q and the probabilities to their dtype, as every flash-attention forward does.
UNIT = {torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}


def _inputs(gen, b, lq, lk, h, d, dtype):
    """q, k, v as strided views of packed projections (the QKV GEMM's output; cached cross-attention K / V)."""
    if lq == lk:
        return (torch.randn(b, lq, 3, h, d, generator=gen) * 1.5).to(dtype).unbind(2)
    q = (torch.randn(b, lq, h, d, generator=gen) * 1.5).to(dtype)
    kv = (torch.randn(b, lk, 2, h, d, generator=gen) * 1.5).to(dtype)
    return (q, *kv.unbind(2))


def _as64(extra):
    return {n: t.double() if isinstance(t, torch.Tensor) else t for n, t in extra.items()}


def _output_error(q64, k64, v64, extra, unit):
    """A bound on the kernel's error in each element of its fp32 output, relative to sum_j p_j |v_j|: the
    probabilities are rounded to q's dtype (`unit`), a few fp32 roundings more; and a score s = scale * q.k is off by
    up to u * scale * |q|.|k| (which moves exp(s) by that relative amount), u the fp32 dot's roundings, or `unit`
    where q and k are normed or rotated (then rounded to q's dtype, as the reference rounds them)."""
    norm = {n: extra.get(n) for n in ("q_norm_weight", "k_norm_weight", "rope_cos", "rope_sin")}
    score_unit = 2.0 ** -24
    if any(t is not None for t in norm.values()):
        q64, k64 = reference.qk_norm_rope(q64, k64, *norm.values())
        score_unit = unit
    if not k64.shape[1]:
        return torch.zeros_like(q64)
    score = torch.einsum("bqhd,bkhd->bqhk", q64.abs(), k64.abs()).amax(-1, keepdim=True) * q64.shape[-1] ** -0.5
    relative = 2 * score_unit * score + 2 * unit + 8 * 2.0 ** -24
    rest = {n: t for n, t in extra.items() if n not in norm}  # q and k are normed and rotated above
    return relative * reference.attention(q64, k64, v64.abs(), **rest)


def _check(got, q, k, v, extra):
    """Values and scales as `quantize_rowwise` gives them from the float64 attention output, up to the kernel's own
    error in that fp32 output (`_output_error`): a scale off by at most that error / 448 (+ 1 fp32 ulp), a value one
    e4m3 step off only where the output lies that close to a rounding tie."""
    values, scales = got
    assert values.dtype == E4M3 and values.shape == q.shape and values.is_contiguous()
    assert scales.dtype == torch.float32 and scales.shape == (*q.shape[:-1], 1)
    q64, k64, v64, ex64 = q.double(), k.double(), v.double(), _as64(extra)
    want = reference.attention(q64, k64, v64, **ex64)
    assert_e4m3_rows(values, scales, want, _output_error(q64, k64, v64, ex64, UNIT[q.dtype]))


CASES = [
    # B, Lq, Lk, H, D, extras
    (2, 45, 45, 1, 128, {}),  # the FP8 network's self-attention: q and k arrive normed and rotated
    (1, 37, 37, 2, 64, {"q_norm": True, "k_norm": True, "rope": True}),
    (1, 33, 13, 2, 128, {"q_norm": True, "last_key_repeats": 7}),  # cross-attention over compacted text
    (2, 19, 70, 1, 64, {"q_norm": True, "last_key_repeats": 3}),  # several K blocks, a partial last one
    (1, 40, 40, 1, 96, {"rope": True}),  # padded head columns (BLOCK_D 128)
    (1, 1, 1, 1, 16, {}),
]


def _extras(gen, lq, d, spec):
    extra = {}
    for side in ("q", "k"):
        if spec.get(f"{side}_norm"):
            extra[f"{side}_norm_weight"] = torch.rand(d, generator=gen) + 0.5
    if spec.get("rope"):
        extra["rope_cos"], extra["rope_sin"] = ck.rope_3d_tables(1, 1, lq, d)
    if "last_key_repeats" in spec:
        extra["last_key_repeats"] = spec["last_key_repeats"]
    return extra


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:5])) + "".join(f"-{n}" for n in c[5]))
def test_matches_float64_reference(backend, dtype, case, gen):
    if backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter computes bf16 dots wrongly; bf16 runs on GPUs")
    b, lq, lk, h, d, spec = case
    q, k, v = _inputs(gen, b, lq, lk, h, d, dtype)
    extra = _extras(gen, lq, d, spec)
    _check(ck.attention_fp8(q, k, v, backend=backend, **extra), q, k, v, extra)


@pytest.mark.parametrize("backend", BACKENDS)
def test_transposed_and_sliced_inputs(backend, gen):
    """Heads-major q, an expanded (stride-0) batch of cached K, a non-contiguous last dim of v (copied)."""
    q = torch.randn(2, 2, 19, 64, generator=gen).transpose(1, 2)
    k = torch.randn(1, 11, 2, 64, generator=gen).expand(2, -1, -1, -1)
    v = torch.randn(2, 11, 2, 64, 2, generator=gen)[..., 1]
    extra = {"q_norm_weight": torch.rand(64, generator=gen) + 0.5, "last_key_repeats": 4}
    _check(ck.attention_fp8(q, k, v, backend=backend, **extra), q, k, v, extra)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_unrounded_output_is_quantized(backend, gen):
    """fp32 inputs: `quantize_rowwise` of the fp32 output, not of that output rounded to bf16 (which moves about 2 %
    of the values by one e4m3 step and the scales by up to 2^-9, measured)."""
    q, k, v = _inputs(gen, 1, 29, 29, 2, 128, torch.float32)
    values, scales = ck.attention_fp8(q, k, v, backend=backend)
    want = fp8_reference.attention_fp8(q.double(), k.double(), v.double())
    rounded = quantization.quantize_rowwise(reference.attention(q, k, v).bfloat16())
    same = (values.float() == want[0].float()).float().mean().item()
    assert same >= 0.999 and (values.float() == rounded[0].float()).float().mean().item() < same - 0.005
    torch.testing.assert_close(scales.double(), want[1], rtol=2.0 ** -16, atol=0)
    assert ((rounded[1].double() - want[1]).abs() / want[1]).max().item() > 2.0 ** -12


@pytest.mark.parametrize("backend", BACKENDS)
def test_heads_are_the_output_projections_scale_groups(backend, gen):
    """At head_dim 128, `(values.flatten(2), scales.flatten(2))` is the group-scaled A of `fp8_linear_gated_residual`:
    the projection of the dequantized heads, against float64."""
    b, t, s, h = 1, 3, 5, 2
    q, k, v = _inputs(gen, b, t * s, t * s, h, 128, torch.float32)
    values, scales = ck.attention_fp8(q, k, v, backend=backend)
    weight, weight_scale = quantization.quantize_weight(torch.randn(48, h * 128, generator=gen) / 16)
    residual, gate = torch.randn(b, t, s, 48, generator=gen), torch.randn(b, t, 1, 48, generator=gen)
    got = fp8_linear_gated_residual(values.flatten(2), scales.flatten(2), weight, weight_scale, residual, gate)
    a = quantization.dequantize(values, scales, torch.float64).flatten(2)
    want = residual.double() + gate.double() * (a @ quantization.dequantize(weight, weight_scale, torch.float64).T
                                                ).view(b, t, s, 48)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_keys_and_empty_batch(backend, gen):
    q = torch.randn(1, 5, 2, 64, generator=gen)
    values, scales = ck.attention_fp8(q, q[:, :0], q[:, :0], backend=backend)  # softmax over no keys: zeros
    assert torch.equal(values.float(), torch.zeros(1, 5, 2, 64))
    assert torch.equal(scales, torch.full((1, 5, 2, 1), 2.0 ** -126))
    values, scales = ck.attention_fp8(q[:0], q[:0], q[:0], backend=backend)
    assert values.shape == (0, 5, 2, 64) and scales.shape == (0, 5, 2, 1)


def test_auto_is_the_reference_on_the_cpu_and_float64_stays_float64(gen):
    q, k, v = _inputs(gen, 1, 9, 9, 1, 64, torch.float32)
    got = ck.attention_fp8(q, k, v)
    want = fp8_reference.attention_fp8(q, k, v)
    assert torch.equal(got[0].view(torch.uint8), want[0].view(torch.uint8)) and torch.equal(got[1], want[1])
    values, scales = ck.attention_fp8(q.double(), k.double(), v.double())
    assert values.dtype == E4M3 and scales.dtype == torch.float64


def test_autograd_runs_the_reference(gen):
    q, k, v = _inputs(gen, 1, 9, 9, 1, 64, torch.float32)
    q = q.detach().requires_grad_()
    with pytest.warns(RuntimeWarning, match="attention_fp8"):
        values, scales = ck.attention_fp8(q, k, v)
    scales.sum().backward()
    assert q.grad is not None


# -- registration: opcheck, cost, compile report ------------------------------------------------------------------

@pytest.mark.skipif("triton" not in BACKENDS, reason="needs Triton (its interpreter on the CPU)")
@pytest.mark.parametrize("norm", [True, False])
def test_opcheck(norm, gen):
    q, k, v = _inputs(gen, 1, 9, 5, 2, 32, torch.float32)
    w = torch.rand(32, generator=gen) + 0.5 if norm else None
    torch.library.opcheck(torch.ops.cosmos_kernels.attention_fp8_triton.default,
                          (q, k, v, w, w, None, None, 0.25, 1e-6, 3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend, gen):
    """No graph break: the custom op inside the graph gives eager's bits; the reference, which Inductor compiles
    (reordering fp32 operations), stays within the float64 check."""
    torch._dynamo.reset()
    q, k, v = _inputs(gen, 1, 11, 6, 2, 32, torch.float32)
    extra = {"q_norm_weight": torch.rand(32, generator=gen) + 0.5, "last_key_repeats": 3}

    def fn(q, k, v):
        return ck.attention_fp8(q * 0.5, k, v, backend=backend, **extra)

    got, want = torch.compile(fn, fullgraph=True, dynamic=False)(q, k, v), fn(q, k, v)
    _check(got, q * 0.5, k, v, extra)
    if backend == "triton":
        assert torch.equal(got[0].view(torch.uint8), want[0].view(torch.uint8)) and torch.equal(got[1], want[1])


def test_cost_counts_the_attention_flops_and_the_one_byte_output():
    """Counted as on CUDA (meta tensors): QK^T and PV FLOPs, one launch when K needs no norm, q / k / v read once
    (cached K / V broadcast over the batch once), 1 byte a value and 4 bytes a (token, head) written."""
    from cosmos_kernels.backends import meta_as_cuda

    b, lq, lk, h, d = 2, 1764, 14, 16, 128
    q = torch.empty(b, lq, 3, h, d, dtype=torch.bfloat16, device="meta")[:, :, 0]
    kv = torch.empty(1, lk, h, d, dtype=torch.bfloat16, device="meta").expand(b, -1, -1, -1)
    w = torch.empty(d, device="meta")
    with meta_as_cuda(), DispatchCounter() as counter:
        ck.attention_fp8(q, kv, kv, q_norm_weight=w, last_key_repeats=500)
    (record,) = counter.records
    assert record.name == "cosmos_kernels::attention_fp8_triton" and record.cost.launches == 1
    assert record.cost.flops == 4 * b * h * lq * lk * d
    assert record.cost.bytes_read == 2 * (b * lq * h * d + 2 * lk * h * d) + 4 * d
    assert record.cost.bytes_written == b * lq * h * d + 4 * b * lq * h


@pytest.mark.skipif("triton" not in BACKENDS, reason="needs Triton (its interpreter on the CPU)")
def test_every_fp8_tile_is_in_the_compile_report():
    """The e4m3 epilogue's launches, as the FP8 network makes them (16 bits at head_dim 64 and 128, the q norm and
    the repeated last key with or without each other, no RoPE), on both architecture families."""
    from cosmos_kernels.attention import triton as tk

    reported = {(c.label.split()[1], c.constexprs["HEAD_DIM"], c.constexprs["NORM"], c.constexprs["ROPE"],
                 c.constexprs["REPEAT_LAST"], c.constexprs["BLOCK_M"], c.constexprs["BLOCK_N"], c.num_warps,
                 c.num_stages, c.signature["out_ptr"])
                for c in TRITON_KERNELS["attention.flash_attention_fwd_fp8"].configs if c.constexprs["OUT_FP8"]}
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        for d in (64, 128):
            for norm, repeat in ((False, False), (True, True), (False, True)):
                for hopper in (True, False):
                    tiles = tk.gpu_config(d, dtype, hopper, False)
                    assert (name, d, norm, False, repeat, *tiles, "*fp8e4nv") in reported
    assert not any(c.constexprs["OUT_FP8"] for c in TRITON_KERNELS["attention.flash_attention_fwd"].configs)


@pytest.mark.skipif("triton" not in BACKENDS, reason="needs Triton (its interpreter on the CPU)")
@pytest.mark.parametrize("d", [64, 128])
def test_gpu_tiles_quantize_across_block_edges(d, gen):
    """Each 16-bit GPU tile configuration, run by the interpreter in fp16 on lengths one past its blocks."""
    from cosmos_kernels.attention import triton as tk

    for config in sorted({tk.gpu_config(d, torch.float16, hopper, False) for hopper in (True, False)}):
        block_m, block_n = config[:2]
        q, k, v = _inputs(gen, 1, block_m + 3, block_n + 5, 1, d, torch.float16)
        w = torch.rand(d, generator=gen) + 0.5
        got = tk.attention(q, k, v, w, None, None, None, d ** -0.5, 1e-6, 3, config=config, fp8=True)
        _check(got, q, k, v, {"q_norm_weight": w, "last_key_repeats": 3})


# -- bad input ----------------------------------------------------------------------------------------------------

def _good(gen):
    return _inputs(gen, 1, 6, 6, 2, 64, torch.float32)


@pytest.mark.parametrize("change,error,match", [
    (lambda q, k, v: (q, k[..., :32], v), ValueError, "k has head_dim"),
    (lambda q, k, v: (q[..., :40], k[..., :40], v[..., :40]), ValueError, "head_dim"),
    (lambda q, k, v: (q, k, v[:, :3]), ValueError, "v has length"),
    (lambda q, k, v: (q, k.half(), v), TypeError, "k has dtype"),
    (lambda q, k, v: (q[0], k, v), ValueError, "q must be"),
    (lambda q, k, v: (q.int(), k, v), TypeError, "q"),
])
def test_bad_tensors_name_the_argument(change, error, match, gen):
    with pytest.raises(error, match=match):
        ck.attention_fp8(*change(*_good(gen)))


def test_bad_keywords_name_the_argument(gen):
    q, k, v = _good(gen)
    with pytest.raises(ValueError, match="q_norm_weight"):
        ck.attention_fp8(q, k, v, q_norm_weight=torch.ones(32))
    with pytest.raises(ValueError, match="last_key_repeats"):
        ck.attention_fp8(q, k, v, last_key_repeats=0)
    with pytest.raises(ValueError, match="cos and sin"):
        ck.attention_fp8(q, k, v, rope_cos=torch.ones(6, 64))
    with pytest.raises(ValueError, match="backend"):
        ck.attention_fp8(q, k, v, backend="sdpa")  # SDPA cannot quantize its output

