"""`attention_fp8`: the attention with its output quantized in the epilogue, as e4m3 values and one fp32 scale per
(token, head), so that the output projection reads 1 byte per value and the 16-bit output never exists.

A separate function rather than a flag of `attention`: it returns a pair, not a tensor, and only two backends can
produce it. `cosmos_kernels::attention_fp8_triton` is the Triton flash-attention forward of `attention` with its
e4m3 epilogue (the normalised fp32 row of each head quantized by the fp8 family's rule); QK^T and PV stay 16-bit
(or fp32) dots. Backends: "triton" (automatic on CUDA once its probe has passed; on the CPU through the
interpreter) and "reference" (automatic on the CPU, and for float64): `fp8_reference.attention_fp8`. SDPA and
flash-attn cannot quantize their output, so `attention`'s timed backend choice applies to its 16-bit output only;
this op follows `COSMOS_KERNELS_BACKEND` ("reference" or "triton"), not `COSMOS_KERNELS_ATTENTION`.
"""

from __future__ import annotations

import torch

from cosmos_kernels import _checks, _dispatch
from cosmos_kernels.attention import fp8_reference, ops
from cosmos_kernels.fp8.reference import E4M3, dequantize
from cosmos_kernels.tools import dispatch_counter

_NS = "cosmos_kernels"
OP = "attention_fp8"
BACKENDS = ("reference", "triton")


@torch.library.custom_op(f"{_NS}::attention_fp8_triton", mutates_args=())
def _attention_fp8_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_weight: torch.Tensor | None,
    k_weight: torch.Tensor | None, cos: torch.Tensor | None, sin: torch.Tensor | None, scale: float, eps: float,
    last_key_repeats: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    from cosmos_kernels.attention import triton as kernels  # Triton is optional

    return kernels.attention(q, k, v, q_weight, k_weight, cos, sin, scale, eps, last_key_repeats, fp8=True)


@_attention_fp8_triton.register_fake
def _fake(q, k, v, q_weight, k_weight, cos, sin, scale, eps, last_key_repeats):
    return (torch.empty(q.shape, dtype=E4M3, device=q.device),
            torch.empty((*q.shape[:-1], 1), dtype=torch.float32, device=q.device))


def _separate_k_pass(q, k, v, q_weight, k_weight, cos, *args, **kwargs) -> bool:
    """K is normalised / rotated by one `qk_norm_rope` launch before the kernel when it needs either."""
    return k_weight is not None or cos is not None


def _bytes(q, k, v, q_weight, k_weight, cos, sin, *args, out=None, **kwargs) -> tuple[int, int]:
    """q, k, v, the norm weights and tables read once (a broadcast batch once), the separate K pass (if any) reading
    and writing K; written: 1 byte a value and 4 bytes a (token, head) scale."""
    fp = dispatch_counter.footprint
    read = sum(fp(t) for t in (q, k, v, q_weight, k_weight, cos, sin) if t is not None)
    extra = fp(k) if _separate_k_pass(q, k, v, q_weight, k_weight, cos) else 0
    return read + extra, sum(fp(t) for t in out) + extra


dispatch_counter.register_cost(f"{_NS}::attention_fp8_triton", dispatch_counter.attention_flops, bytes_fn=_bytes,
                               launches=lambda *a, **kw: 1 + _separate_k_pass(*a, **kw))


def attention_fp8(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    q_norm_weight: torch.Tensor | None = None,
    k_norm_weight: torch.Tensor | None = None,
    rope_cos: torch.Tensor | None = None,
    rope_sin: torch.Tensor | None = None,
    norm_eps: float = 1e-6,
    last_key_repeats: int = 1,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`attention(q, k, v, ...)` quantized per (token, head): `(values, scales)`, contiguous e4m3 values
    `(B, Lq, heads, head_dim)` and fp32 scales `(B, Lq, heads, 1)`, `quantize_rowwise`'s rule applied to each head's
    row of the fp32 attention output (not rounded to q's dtype first; `fp8_reference.attention_fp8`).

    Inputs and keywords as `attention`'s (q norm weight, last_key_repeats, head_dim a multiple of 16 up to 256,
    strided q / k / v read in place). The Triton kernel, like every flash-attention forward, rounds the
    probabilities to q's dtype before the PV product: for 16-bit inputs its fp32 output, hence its scales, differ
    from the reference's at that precision (fp32 inputs: in the last bits). For head_dim 128,
    `(values.flatten(2), scales.flatten(2))` is `fp8_linear_gated_residual`'s group-scaled operand (a group of
    128 columns is one head)."""
    qw, kw, cos, sin, scale, eps, repeats = ops.check_attention_inputs(
        OP, q, k, v, scale, q_norm_weight, k_norm_weight, rope_cos, rope_sin, norm_eps, last_key_repeats)
    keywords = dict(scale=scale, q_norm_weight=qw, k_norm_weight=kw, rope_cos=cos, rope_sin=sin, norm_eps=eps,
                    last_key_repeats=repeats)
    if _dispatch.needs_autograd(q, k, v, qw, kw, cos, sin):
        _dispatch.warn_autograd(OP)
        return fp8_reference.attention_fp8(q, k, v, **keywords)
    name = _dispatch.resolve_backend(OP, q.device, backend, supported=BACKENDS, cuda_order=("triton",),
                                     dtype=q.dtype)
    if name == "reference" or q.numel() == 0:
        return fp8_reference.attention_fp8(q, k, v, **keywords)
    _checks.check_backend_dtype(OP, name, q)
    return _attention_fp8_triton(*ops.triton_operands(q, k, v, qw, kw, cos, sin), scale, eps, repeats)


def _probe(device: torch.device) -> bool:
    """bf16 at head_dim 128 (the model's case): self-attention on 40 tokens (no multiple of any block) and
    cross-attention with the q norm over 13 keys whose last stands for 500. A broken kernel is off by whole e4m3 steps
    of the output or more; bf16 probabilities stay well inside the tolerance."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(1, 40, 2, 128, generator=gen).bfloat16() for _ in range(3))
    w = torch.rand(128, generator=gen) + 0.5
    ok = True
    for kk, vv, extra in ((k, v, {}), (k[:, :13], v[:, :13], {"q_norm_weight": w, "last_key_repeats": 500})):
        want = fp8_reference.attention_fp8(q, kk, vv, **extra)
        on_device = {n: t.to(device) if isinstance(t, torch.Tensor) else t for n, t in extra.items()}
        got = attention_fp8(q.to(device), kk.to(device), vv.to(device), backend="triton", **on_device)
        deq = [dequantize(t[0].cpu(), t[1].cpu(), torch.float64) for t in (got, want)]
        ok = ok and torch.allclose(deq[0], deq[1], rtol=0.07, atol=1e-2)
    return ok


_dispatch.register_probe(OP, "triton", _probe)
