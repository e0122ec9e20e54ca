"""Public `fp8_linear_head_norm`: a projection whose every attention head is RMS-normed (the cross-attention's query),
as one FP8 GEMM with the per-head RMSNorm in its epilogue (the separate norm pass over the query disappears).

Registers `cosmos_kernels::fp8_linear_head_norm_triton`: the kernel of `fp8_linear_qk_norm_rope` (`fp8_qkv_triton.py`)
with one section of heads, each normed, and no RoPE. Backends: "triton" (automatic on CUDA once its probe has
passed; on the CPU through the interpreter) and "reference" (automatic on the CPU: `fp8_linear` in fp32, one
`torch._scaled_mm`, then the norm in fp32 and one rounding; elsewhere the plain reference). Heads the kernel cannot
compute (odd, below 32 or above 256 wide) fall back to the reference, or raise for `backend="triton"`.
"""

from __future__ import annotations

import torch

from cosmos_kernels import _checks, _dispatch
from cosmos_kernels.attention import fp8_heads as heads
from cosmos_kernels.attention import fp8_reference
from cosmos_kernels.fp8.ops import fp8_linear
from cosmos_kernels.tools import dispatch_counter

_NS = "cosmos_kernels"
OP = "fp8_linear_head_norm"
BACKENDS = ("reference", "triton")


@torch.library.custom_op(f"{_NS}::fp8_linear_head_norm_triton", mutates_args=())
def _fp8_linear_head_norm_triton(
    x: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
    norm_weight: torch.Tensor, num_heads: int, eps: float, out_dtype: torch.dtype,
) -> torch.Tensor:
    from cosmos_kernels.attention import fp8_qkv_triton as kernels  # Triton is optional

    return kernels.fp8_linear_head_norm(x, x_scale, weight, weight_scale, norm_weight, num_heads, eps, out_dtype)


@_fp8_linear_head_norm_triton.register_fake
def _fake(x: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
          norm_weight: torch.Tensor, num_heads: int, eps: float, out_dtype: torch.dtype) -> torch.Tensor:
    b, seq, _ = x.shape
    return x.new_empty((b, seq, num_heads, weight.shape[0] // num_heads), dtype=out_dtype)


# One launch: the GEMM reads x, its row scales, the weight, its channel scales and the norm weight once (their
# footprints), and writes the normed heads once: the default byte count.
dispatch_counter.register_cost(f"{_NS}::fp8_linear_head_norm_triton", heads.gemm_flops)


def _check(x, x_scale, weight, weight_scale, norm_weight, num_heads, out_dtype) -> int:
    """The inputs' checks, each error naming its argument; returns the head dim."""
    d = heads.check_gemm(OP, x, x_scale, weight, weight_scale, num_heads, out_dtype, sections=1)
    heads.check_norm_weight(OP, "norm_weight", norm_weight, d)
    _checks.check_same_device(OP, x=x, x_scale=x_scale, weight=weight, weight_scale=weight_scale,
                              norm_weight=norm_weight)
    return d


def _reference_backend(x, x_scale, weight, weight_scale, norm_weight, num_heads, eps, out_dtype):
    """On the CPU: one `torch._scaled_mm` (`fp8_linear` in fp32), then the norm in fp32, one rounding. Elsewhere
    (CUDA's row-scaled GEMM returns bf16 only) the plain reference."""
    if x.device.type != "cpu":
        return fp8_reference.fp8_linear_head_norm(x, x_scale, weight, weight_scale, norm_weight, num_heads, eps,
                                                  out_dtype)
    y = fp8_linear(x, x_scale.contiguous(), weight, weight_scale, out_dtype=torch.float32)  # the GEMM's scales
    return fp8_reference.head_rms_norm(y.unflatten(-1, (num_heads, -1)), norm_weight, eps).to(out_dtype)


def fp8_linear_head_norm(
    x: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
    norm_weight: torch.Tensor, *, num_heads: int, eps: float = 1e-6, out_dtype: torch.dtype = torch.bfloat16,
    backend: str | None = None,
) -> torch.Tensor:
    """`q (B, L, num_heads, D)` in `out_dtype`, ready for `cosmos_kernels.attention` (called without a q norm): the
    projection of `x` in one FP8 GEMM, each head RMS-normed with `norm_weight` in its epilogue.

    `x (B, L, K)` e4m3 rows (any strides) with `x_scale (B, L, 1)` fp32 (the adaptive norms' FP8 variants produce
    them); `weight (num_heads * D, K)` e4m3 with `weight_scale` one fp32 scale per row (`quantize_weight`);
    `norm_weight (D,)` the norm's weight, shared by every head. Computed in fp32 from the GEMM to the normed values,
    rounded once (`fp8_reference.fp8_linear_head_norm` is the specification). The result is a new contiguous tensor.
    """
    d = _check(x, x_scale, weight, weight_scale, norm_weight, num_heads, out_dtype)
    eps = float(eps)
    args = (x, x_scale, weight, weight_scale, norm_weight, num_heads, eps, out_dtype)
    if _dispatch.needs_autograd(norm_weight):
        _dispatch.warn_autograd(OP)
        return fp8_reference.fp8_linear_head_norm(*args)
    if heads.choose_backend(OP, x.device, backend, d, BACKENDS) == "reference":
        return _reference_backend(*args)
    return _fp8_linear_head_norm_triton(x, x_scale, weight, heads.channel_scales(weight_scale),
                                        heads.as_fp32(norm_weight), num_heads, eps, out_dtype)


def _probe(device: torch.device) -> bool:
    """Ragged rows and K, three heads of 64 with the norm, bf16: a broken kernel is off by O(1)."""
    from cosmos_kernels.fp8.reference import quantize_rowwise, quantize_weight

    gen = torch.Generator(device="cpu").manual_seed(0)
    x, xs = quantize_rowwise(torch.randn(1, 37, 200, generator=gen))
    w, ws = quantize_weight(torch.randn(3 * 64, 200, generator=gen) / 200 ** 0.5)
    nw = 1 + 0.1 * torch.randn(64, generator=gen)
    args = (x, xs, w, ws, nw)
    got = fp8_linear_head_norm(*(t.to(device) for t in args), num_heads=3, backend="triton")
    want = fp8_reference.fp8_linear_head_norm(*args, 3, out_dtype=torch.float64)
    return torch.allclose(got.double().cpu(), want, atol=3e-2, rtol=2e-2)


_dispatch.register_probe(OP, "triton", _probe)
