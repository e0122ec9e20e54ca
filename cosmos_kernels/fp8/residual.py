"""`fp8_linear_gated_residual`: an FP8 output projection whose result goes straight into the gated residual stream,
`residual + gate * (A @ W^T)`, for the DiT's self-attention output, cross-attention output and MLP second layer.

Registers `cosmos_kernels::fp8_linear_gated_residual_triton` (one launch: the GEMM's output never reaches memory as a
tensor of its own, and a float A is quantized inside it). Backends: "triton" (automatic on CUDA once its probe has
passed; on the CPU through the interpreter) and "reference" (automatic on the CPU): `quantize_rowwise` where A is a
float tensor, `fp8_linear` (one `torch._scaled_mm`, fp32 output on the CPU) and the gated add; group-scaled A has no
`_scaled_mm` form and runs `reference.fp8_linear_gated_residual`.
"""

from __future__ import annotations

import math

import torch

from cosmos_kernels import _checks, _dispatch
from cosmos_kernels._layout import as_row_grid
from cosmos_kernels.fp8 import reference
from cosmos_kernels.fp8.ops import check_weight_shapes, fp8_linear, quantize_rowwise
from cosmos_kernels.fp8.reference import E4M3
from cosmos_kernels.tools import dispatch_counter

_NS = "cosmos_kernels"
OP = "fp8_linear_gated_residual"
BACKENDS = ("reference", "triton")
GROUP = 128  # columns per scale of a group-scaled A


@torch.library.custom_op(f"{_NS}::fp8_linear_gated_residual_triton", mutates_args=())
def _fp8_linear_gated_residual_triton(x: torch.Tensor, x_scale: torch.Tensor | None, weight: torch.Tensor,
                                      weight_scale: torch.Tensor, residual: torch.Tensor,
                                      gate: torch.Tensor) -> torch.Tensor:
    from cosmos_kernels.fp8 import residual_triton as kernels  # Triton is optional

    return kernels.fp8_linear_gated_residual(x, x_scale, weight, weight_scale, residual, gate)


@_fp8_linear_gated_residual_triton.register_fake
def _fake(x, x_scale, weight, weight_scale, residual, gate):
    return torch.empty(residual.shape, dtype=residual.dtype, device=residual.device)


def _flops(x, x_scale, weight, weight_scale, residual, *args, out=None, **kwargs) -> int:
    return 2 * math.prod(x.shape[:-1]) * weight.shape[0] * weight.shape[1]


def _bytes(x, x_scale, weight, weight_scale, residual, gate, *, out=None) -> tuple[int, int]:
    """Each operand's footprint read once (x in its own dtype: 1 byte an element for e4m3, 2 for bf16; a gate
    broadcast over a frame's tokens once per frame), the output written once."""
    fp = dispatch_counter.footprint
    read = sum(fp(t) for t in (x, weight, weight_scale, residual, gate)) + (fp(x_scale) if x_scale is not None else 0)
    return read, fp(out)


dispatch_counter.register_cost(f"{_NS}::fp8_linear_gated_residual_triton", _flops, bytes_fn=_bytes)


def _check_rows(x: torch.Tensor, residual: torch.Tensor) -> None:
    rows, lead = tuple(x.shape[:-1]), tuple(residual.shape[:-1])
    if rows == lead or (x.dim() == 3 and residual.dim() > 3 and rows == (lead[0], math.prod(lead[1:]))):
        return
    raise ValueError(f"{OP}: x has shape {tuple(x.shape)}; its rows must be residual's rows {lead} (or, with a "
                     f"batch dim, flattened after it: {(lead[0], math.prod(lead[1:])) if lead else ()}), "
                     f"residual has shape {tuple(residual.shape)}")


def _check(x, x_scale, weight, weight_scale, residual, gate) -> None:
    """Every check, in order; raises the first failure naming the argument."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{OP}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != E4M3:
        if x.dtype not in _checks.FLOAT_DTYPES:
            raise TypeError(f"{OP}: x must be float8_e4m3fn (with x_scale) or float32, bfloat16, float16 or "
                            f"float64 (x_scale None), got {x.dtype}")
        if x_scale is not None:
            raise ValueError(f"{OP}: x_scale must be None when x is {x.dtype} (a float x is quantized row-wise "
                             "here); pass e4m3 x with its scales otherwise")
    elif x_scale is None:
        raise ValueError(f"{OP}: x is float8_e4m3fn, so x_scale (its fp32 scales, (..., 1) or "
                         f"(..., ceil(K / {GROUP}))) is required")
    for name, t in (("weight", weight),) + ((("x_scale", x_scale),) if x_scale is not None else ()) + (
            ("weight_scale", weight_scale),):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{OP}: {name} must be a torch.Tensor, got {type(t).__name__}")
        want = E4M3 if name == "weight" else torch.float32
        if t.dtype != want:
            raise TypeError(f"{OP}: {name} must be {str(want).removeprefix('torch.')}, got {t.dtype}")
    n, k = check_weight_shapes(OP, x, weight, weight_scale)
    groups = math.ceil(k / GROUP)
    if x_scale is not None and tuple(x_scale.shape) not in ((*x.shape[:-1], 1), (*x.shape[:-1], groups)):
        raise ValueError(f"{OP}: x_scale must have shape {(*x.shape[:-1], 1)} (one scale per row) or "
                         f"{(*x.shape[:-1], groups)} (one per row and group of {GROUP} columns), got "
                         f"{tuple(x_scale.shape)}")
    _checks.check_float_tensor(OP, "residual", residual)
    _checks.check_last_dim(OP, "residual", residual, n, "weight's out_features")
    _checks.check_broadcast_operands(OP, "residual", residual, gate=gate)
    _check_rows(x, residual)
    _checks.check_same_device(OP, residual=residual, x=x, x_scale=x_scale, weight=weight, weight_scale=weight_scale,
                              gate=gate)


def _unfused(x, x_scale, weight, weight_scale, residual, gate) -> torch.Tensor:
    """The reference backend: `quantize_rowwise` for a float x, `fp8_linear` (fp32 output on the CPU; the CUDA
    `_scaled_mm` returns bf16 only), and the gated add in fp32, rounded once to residual's dtype."""
    float_x = x.dtype != E4M3
    if (residual.dtype == torch.float64 or (float_x and x.dtype == torch.float64)
            or (not float_x and x_scale.shape[-1] != 1)):
        return reference.fp8_linear_gated_residual(x, x_scale, weight, weight_scale, residual, gate)
    if float_x:
        x, x_scale = quantize_rowwise(x)
    out_dtype = torch.bfloat16 if x.device.type == "cuda" else torch.float32
    product = fp8_linear(x, x_scale, weight, weight_scale, out_dtype=out_dtype).view(residual.shape)
    return (residual.float() + gate.float() * product.float()).to(residual.dtype)


def fp8_linear_gated_residual(
    x: torch.Tensor,
    x_scale: torch.Tensor | None,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    residual: torch.Tensor,
    gate: torch.Tensor,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """`residual + gate * (A @ (weight * weight_scale).T)` in one FP8 GEMM whose epilogue adds the gated residual:
    computed in fp32, rounded once to residual's dtype; a new tensor of residual's shape.

    `residual (..., N)` (say the DiT's `(B, T, S, N)` tokens; bf16, fp16 or fp32) and `gate` broadcasting against it
    (per frame `(B, T, 1, N)`, per sample `(B, 1, 1, N)`; strided views read in place). `weight (N, K)` e4m3 with
    `weight_scale` holding N fp32 values (`quantize_weight`). A's rows are residual's rows in order: `x` has
    residual's leading shape, or `(B, L, K)` against `(B, T, S, N)` with `L = T * S` (flatten an attention output
    `(B, L, heads, head_dim)` to `(B, L, heads * head_dim)`). `x` is one of:

    - e4m3 with `x_scale (..., 1)` fp32: one scale per row (`quantize_rowwise`, `gelu_quantize_rowwise`);
    - e4m3 with `x_scale (..., ceil(K / 128))` fp32: one scale per row and group of 128 columns (column k in group
      k // 128; where K <= 128 the two forms are one);
    - a float tensor with `x_scale` None: quantized inside the GEMM by `quantize_rowwise`'s rule, giving the values
      and scales of `quantize_rowwise(x)`.
    """
    _check(x, x_scale, weight, weight_scale, residual, gate)
    if _dispatch.needs_autograd(x, residual, gate):
        _dispatch.warn_autograd(OP)
        return reference.fp8_linear_gated_residual(x, x_scale, weight, weight_scale, residual, gate)
    name = _dispatch.resolve_backend(OP, residual.device, backend, supported=BACKENDS, cuda_order=("triton",),
                                     dtype=residual.dtype)
    if name == "reference" or residual.numel() == 0:
        return _unfused(x, x_scale, weight, weight_scale, residual, gate)
    _checks.check_backend_dtype(OP, name, residual)
    _checks.check_backend_dtype(OP, name, gate)
    if x.dtype != E4M3:
        _checks.check_backend_dtype(OP, name, x)
    rows = math.prod(residual.shape[:-1])
    n, k = weight.shape
    x3 = x.reshape(x.shape[0] if x.dim() > 2 else 1, -1, k)
    scales = None if x_scale is None else x_scale.reshape(rows, x_scale.shape[-1]).contiguous()
    grids = as_row_grid(residual.shape, residual, gate)
    out = _fp8_linear_gated_residual_triton(x3, scales, weight, weight_scale.reshape(n).contiguous(), *grids)
    return out.view(residual.shape)


def _probe(device: torch.device) -> bool:
    """The three forms of A on odd sizes (K = 200: a partial last group), a per-frame gate: a broken kernel is off by
    whole e4m3 steps of the product or more."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(2, 3, 5, 200, generator=gen)
    weight, weight_scale = reference.quantize_weight(torch.randn(48, 200, generator=gen) / 14)
    residual, gate = torch.randn(2, 3, 5, 48, generator=gen), torch.randn(2, 3, 1, 48, generator=gen)
    values, row_scales = reference.quantize_rowwise(x)
    group_scales = torch.rand(2, 3, 5, 2, generator=gen) + 0.5
    ok = True
    for a, s in ((x, None), (values, row_scales), (values, group_scales)):
        want = reference.fp8_linear_gated_residual(a, s, weight, weight_scale, residual.double(), gate.double())
        args = [t.to(device) if t is not None else None for t in (a, s, weight, weight_scale, residual, gate)]
        got = fp8_linear_gated_residual(*args, backend="triton").cpu()
        ok = ok and torch.allclose(got.double(), want, rtol=1e-3, atol=1e-3)
    return ok


_dispatch.register_probe(OP, "triton", _probe)
