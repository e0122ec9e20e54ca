"""Public `fp8_linear_qk_norm_rope`: the packed QKV projection as one FP8 GEMM whose epilogue applies the per-head
RMSNorm and RoPE to q and k (the separate `qk_norm_rope` pass over q and k disappears).

Registers `cosmos_kernels::fp8_linear_qk_norm_rope_triton` (the kernel of `fp8_qkv_triton.py`; it returns the packed
`(B, L, 3, H, D)` buffer, of which q, k and v are views). Backends: "triton" (automatic on CUDA once its probe has
passed; on the CPU through the interpreter) and "reference" (automatic on the CPU: `fp8_linear` in fp32, one
`torch._scaled_mm`, then `qk_norm_rope` in fp32 and one rounding; elsewhere the plain reference). Heads the kernel
cannot compute (odd, below 32 or above 256 wide) fall back to the reference, or raise for `backend="triton"`.
"""

from __future__ import annotations

import torch

from cosmos_kernels import _checks, _dispatch
from cosmos_kernels.attention import fp8_heads as heads
from cosmos_kernels.attention import fp8_reference
from cosmos_kernels.attention.reference import qk_norm_rope
from cosmos_kernels.fp8.ops import fp8_linear
from cosmos_kernels.tools import dispatch_counter

_NS = "cosmos_kernels"
OP = "fp8_linear_qk_norm_rope"
BACKENDS = ("reference", "triton")


@torch.library.custom_op(f"{_NS}::fp8_linear_qk_norm_rope_triton", mutates_args=())
def _fp8_linear_qk_norm_rope_triton(
    x: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
    q_norm_weight: torch.Tensor | None, k_norm_weight: torch.Tensor | None, cos: torch.Tensor | None,
    sin: torch.Tensor | None, num_heads: int, eps: float, out_dtype: torch.dtype,
) -> torch.Tensor:
    from cosmos_kernels.attention import fp8_qkv_triton as kernels  # Triton is optional

    return kernels.fp8_linear_qk_norm_rope(x, x_scale, weight, weight_scale, q_norm_weight, k_norm_weight, cos, sin,
                                           num_heads, eps, out_dtype)


@_fp8_linear_qk_norm_rope_triton.register_fake
def _fake(x: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
          q_norm_weight: torch.Tensor | None, k_norm_weight: torch.Tensor | None, cos: torch.Tensor | None,
          sin: torch.Tensor | None, num_heads: int, eps: float, out_dtype: torch.dtype) -> torch.Tensor:
    b, seq, _ = x.shape
    return x.new_empty((b, seq, 3, num_heads, weight.shape[0] // (3 * num_heads)), dtype=out_dtype)


# One launch: the GEMM reads x, its row scales, the weight and its channel scales, the norm weights and the
# (L, D) cos / sin tables once (their footprints), and writes q, k and v once: the default byte count.
dispatch_counter.register_cost(f"{_NS}::fp8_linear_qk_norm_rope_triton", heads.gemm_flops)


def _check(x, x_scale, weight, weight_scale, q_norm_weight, k_norm_weight, cos, sin, num_heads, out_dtype) -> int:
    """The inputs' checks, each error naming its argument; returns the head dim."""
    d = heads.check_gemm(OP, x, x_scale, weight, weight_scale, num_heads, out_dtype, sections=3)
    for name, w in (("q_norm_weight", q_norm_weight), ("k_norm_weight", k_norm_weight)):
        if w is not None:
            heads.check_norm_weight(OP, name, w, d)
    if (cos is None) != (sin is None):
        raise ValueError(f"{OP}: cos and sin must both be given or both be None")
    if cos is not None:
        seq = x.shape[1]
        for name, t in (("cos", cos), ("sin", sin)):
            _checks.check_float_tensor(OP, name, t)
            if tuple(t.shape) != (seq, d):
                raise ValueError(f"{OP}: {name} must have shape {(seq, d)} (x's length, the head dim), got "
                                 f"{tuple(t.shape)}")
        if d % 2:
            raise ValueError(f"{OP}: RoPE needs an even head dim, got head_dim {d} (weight rows {weight.shape[0]} = "
                             f"3 * {num_heads} * {d})")
    _checks.check_same_device(OP, x=x, x_scale=x_scale, weight=weight, weight_scale=weight_scale,
                              q_norm_weight=q_norm_weight, k_norm_weight=k_norm_weight, cos=cos, sin=sin)
    return d


def _reference_backend(x, x_scale, weight, weight_scale, qw, kw, cos, sin, num_heads, eps, out_dtype):
    """On the CPU: one `torch._scaled_mm` (`fp8_linear` in fp32), then the norm and RoPE in fp32, one rounding.
    Elsewhere (CUDA's row-scaled GEMM returns bf16 only) the plain reference."""
    if x.device.type != "cpu":
        return fp8_reference.fp8_linear_qk_norm_rope(x, x_scale, weight, weight_scale, qw, kw, cos, sin, num_heads,
                                                     eps, out_dtype)
    y = fp8_linear(x, x_scale.contiguous(), weight, weight_scale, out_dtype=torch.float32)  # the GEMM's scales
    q, k, v = y.unflatten(-1, (3, num_heads, -1)).unbind(2)
    q, k = qk_norm_rope(q, k, qw, kw, cos, sin, eps)  # fp32 in, fp32 out: no rounding yet
    return q.to(out_dtype), k.to(out_dtype), v.to(out_dtype)


def fp8_linear_qk_norm_rope(
    x: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
    q_norm_weight: torch.Tensor | None, k_norm_weight: torch.Tensor | None, cos: torch.Tensor | None,
    sin: torch.Tensor | None, *, num_heads: int, eps: float = 1e-6, out_dtype: torch.dtype = torch.bfloat16,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(q, k, v)`, each `(B, L, num_heads, D)` in `out_dtype`, ready for `cosmos_kernels.attention` (called without
    its norm and RoPE arguments): the packed QKV projection of `x` in one FP8 GEMM, with q and k normed per head and
    rotated in its epilogue.

    `x (B, L, K)` e4m3 rows (any strides) with `x_scale (B, L, 1)` fp32 (the adaptive norms' FP8 variants produce
    them); `weight (3 * num_heads * D, K)` e4m3, packed `[q; k; v]`, with `weight_scale` one fp32 scale per row
    (`quantize_weight`); `q_norm_weight`, `k_norm_weight` `(D,)` or None (that side is not normed); `cos`, `sin`
    `(L, D)` rotate-half tables (`rope_3d_tables`) or both None (no RoPE). Computed in fp32 from the GEMM to the
    rotated values, rounded once (`fp8_reference.fp8_linear_qk_norm_rope` is the specification). With the "triton"
    backend q, k and v are views of one new `(B, L, 3, num_heads, D)` tensor (last dim contiguous).
    """
    d = _check(x, x_scale, weight, weight_scale, q_norm_weight, k_norm_weight, cos, sin, num_heads, out_dtype)
    eps = float(eps)
    args = (x, x_scale, weight, weight_scale, q_norm_weight, k_norm_weight, cos, sin, num_heads, eps, out_dtype)
    if _dispatch.needs_autograd(q_norm_weight, k_norm_weight, cos, sin):
        _dispatch.warn_autograd(OP)
        return fp8_reference.fp8_linear_qk_norm_rope(*args)
    if heads.choose_backend(OP, x.device, backend, d, BACKENDS) == "reference":
        return _reference_backend(*args)
    tables = (heads.as_fp32(t) for t in (q_norm_weight, k_norm_weight, cos, sin))
    out = _fp8_linear_qk_norm_rope_triton(x, x_scale, weight, heads.channel_scales(weight_scale), *tables, num_heads,
                                          eps, out_dtype)
    return out.unbind(2)


def _probe(device: torch.device) -> bool:
    """Ragged rows and K, two heads of 64 with both norms and RoPE, bf16: a broken kernel is off by O(1)."""
    from cosmos_kernels.attention.rope import rope_3d_tables
    from cosmos_kernels.fp8.reference import quantize_rowwise, quantize_weight

    gen = torch.Generator(device="cpu").manual_seed(0)
    x, xs = quantize_rowwise(torch.randn(1, 37, 200, generator=gen))
    w, ws = quantize_weight(torch.randn(3 * 2 * 64, 200, generator=gen) / 200 ** 0.5)
    qw, kw = 1 + 0.1 * torch.randn(64, generator=gen), 1 + 0.1 * torch.randn(64, generator=gen)
    cos, sin = rope_3d_tables(1, 37, 1, 64, device=torch.device("cpu"))
    args = (x, xs, w, ws, qw, kw, cos, sin)
    got = fp8_linear_qk_norm_rope(*(t.to(device) for t in args), num_heads=2, backend="triton")
    want = fp8_reference.fp8_linear_qk_norm_rope(*args, 2, out_dtype=torch.float64)
    return all(torch.allclose(g.double().cpu(), r, atol=3e-2, rtol=2e-2) for g, r in zip(got, want))


_dispatch.register_probe(OP, "triton", _probe)
