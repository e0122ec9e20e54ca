"""Public FP8 ops: `quantize_rowwise` and `gelu_quantize_rowwise` (Triton kernels and the reference),
`quantize_weight` and `fp8_linear`.

`quantize_rowwise` registers `cosmos_kernels::quantize_rowwise_triton` (`gelu_quantize_rowwise`:
`cosmos_kernels::gelu_quantize_rowwise_triton`) on (N0, N1, N2, D) row grids (strided rows are
read in place). Backends: "triton" (automatic on CUDA, once its probe has passed; on the CPU through the interpreter)
and "reference" (automatic on the CPU). `fp8_linear` is `torch._scaled_mm` with a scale per row of x and per output
channel of the weight: cuBLASLt's row-wise FP8 GEMM on sm_89 and newer GPUs, PyTorch's own kernel on the CPU.
"""

from __future__ import annotations

import math

import torch

from cosmos_kernels import _checks, _dispatch
from cosmos_kernels._layout import as_row_grid
from cosmos_kernels.fp8 import reference
from cosmos_kernels.fp8.reference import E4M3
from cosmos_kernels.tools import dispatch_counter

_NS = "cosmos_kernels"
BACKENDS = ("reference", "triton")
OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@torch.library.custom_op(f"{_NS}::quantize_rowwise_triton", mutates_args=())
def _quantize_rowwise_triton(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from cosmos_kernels.fp8 import triton as kernels  # Triton is optional

    return kernels.quantize_rowwise(x)


@_quantize_rowwise_triton.register_fake
def _fake_quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.new_empty(x.shape, dtype=E4M3), x.new_empty((*x.shape[:-1], 1), dtype=torch.float32)


dispatch_counter.register_cost(f"{_NS}::quantize_rowwise_triton", dispatch_counter.no_matrix_flops)


@torch.library.custom_op(f"{_NS}::gelu_quantize_rowwise_triton", mutates_args=())
def _gelu_quantize_rowwise_triton(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from cosmos_kernels.fp8 import triton as kernels  # Triton is optional

    return kernels.gelu_quantize_rowwise(x)


@_gelu_quantize_rowwise_triton.register_fake
def _fake_gelu_quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _fake_quantize_rowwise(x)


dispatch_counter.register_cost(f"{_NS}::gelu_quantize_rowwise_triton", dispatch_counter.no_matrix_flops)


def check_quantize_input(op: str, name: str, x: object) -> None:
    """x a floating tensor of at least one dimension, rows of at most `MAX_HIDDEN` values."""
    _checks.check_float_tensor(op, name, x)
    _checks.check_hidden_size(op, name, x.shape[-1])


def _quantize_rows(op: str, x: torch.Tensor, backend: str | None, reference_fn, triton_fn):
    """The dispatch both row quantizers share: checks, autograd and empty inputs on the reference, else the kernel."""
    if not (isinstance(x, torch.Tensor) and x.dtype in _checks.FLOAT_DTYPES and x.dim() >= 1
            and x.shape[-1] <= _checks.MAX_HIDDEN):
        check_quantize_input(op, "x", x)
    if _dispatch.needs_autograd(x):
        _dispatch.warn_autograd(op)
        return reference_fn(x)
    name = _dispatch.resolve_backend(op, x.device, backend, supported=BACKENDS, cuda_order=("triton",),
                                     dtype=x.dtype)
    if name == "reference" or x.numel() == 0:
        return reference_fn(x)
    _checks.check_backend_dtype(op, name, x)
    (grid,) = as_row_grid(x.shape, x)
    values, scales = triton_fn(grid)
    return values.view(x.shape), scales.view(*x.shape[:-1], 1)


def quantize_rowwise(x: torch.Tensor, *, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`(values, scales)`: x's rows (its last dim) as e4m3 values and one fp32 scale each, `x ~= values * scales`.

    `values` has x's shape (a new contiguous float8_e4m3fn tensor), `scales` has shape `(..., 1)`; the rule, with its
    guard for all-zero rows, is `reference.quantize_rowwise`'s. Strided x is read in place.
    """
    return _quantize_rows("quantize_rowwise", x, backend, reference.quantize_rowwise, _quantize_rowwise_triton)


def gelu_quantize_rowwise(x: torch.Tensor, *, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantize_rowwise(F.gelu(x))` in one pass: the exact (erf) GELU of each row, rounded to x's dtype as
    `F.gelu` stores it, then quantized as `quantize_rowwise` does; the GELU output never reaches memory.

    Same outputs, backends and layouts as `quantize_rowwise` (reference: `reference.gelu_quantize_rowwise`).
    """
    return _quantize_rows("gelu_quantize_rowwise", x, backend, reference.gelu_quantize_rowwise,
                          _gelu_quantize_rowwise_triton)


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(values, scales)` of an `nn.Linear` weight `(out_features, in_features)`: e4m3 values and a static fp32 scale
    per output channel, shape `(out_features, 1)`. The reference only: it runs once, when the weights load."""
    op = "quantize_weight"
    check_quantize_input(op, "weight", weight)
    if weight.dim() != 2:
        raise ValueError(f"{op}: weight must be (out_features, in_features), got shape {tuple(weight.shape)}")
    return reference.quantize_weight(weight)


def check_weight_shapes(op: str, x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor) -> tuple[int, int]:
    """`weight (N, K)` with one scale per output channel and `x (..., K)`; returns `(N, K)`. Raises the first
    failure, naming the argument (dtypes checked by the caller)."""
    if weight.dim() != 2:
        raise ValueError(f"{op}: weight must be (out_features, in_features), got shape {tuple(weight.shape)}")
    n, k = weight.shape
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"{op}: x has shape {tuple(x.shape)}, its last dimension must be weight's in_features {k}")
    if weight_scale.numel() != n or weight_scale.dim() > 2:
        raise ValueError(f"{op}: weight_scale must hold one scale per output channel, shape ({n},), ({n}, 1) or "
                         f"(1, {n}), got {tuple(weight_scale.shape)}")
    return n, k


def check_linear_operands(op: str, x: object, x_scale: object, weight: object, weight_scale: object) -> None:
    """The operands of a row-scaled FP8 GEMM, `x (..., K)` e4m3 with `x_scale (..., 1)` fp32 and `weight (N, K)` e4m3
    with one fp32 scale per output channel; raises the first failure, naming the argument (devices not checked)."""
    for name, t, dtype in (("x", x, E4M3), ("weight", weight, E4M3), ("x_scale", x_scale, torch.float32),
                           ("weight_scale", weight_scale, torch.float32)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != dtype:
            raise TypeError(f"{op}: {name} must be {str(dtype)[6:]}, got {t.dtype}")
    check_weight_shapes(op, x, weight, weight_scale)
    if tuple(x_scale.shape) != (*x.shape[:-1], 1):
        raise ValueError(f"{op}: x_scale must have shape {(*x.shape[:-1], 1)} (one scale per row of x), got "
                         f"{tuple(x_scale.shape)}")


def _check_linear(x, x_scale, weight, weight_scale, bias, out_dtype) -> None:
    op = "fp8_linear"
    if out_dtype not in OUT_DTYPES:
        raise TypeError(f"{op}: out_dtype must be bfloat16, float16 or float32, got {out_dtype}")
    check_linear_operands(op, x, x_scale, weight, weight_scale)
    n = weight.shape[0]
    if bias is not None:
        _checks.check_float_tensor(op, "bias", bias)
        if tuple(bias.shape) != (n,):
            raise ValueError(f"{op}: bias must have shape ({n},), got {tuple(bias.shape)}")
    _checks.check_same_device(op, x=x, x_scale=x_scale, weight=weight, weight_scale=weight_scale, bias=bias)
    if x.device.type == "cuda" and out_dtype != torch.bfloat16:
        raise ValueError(f"{op}: out_dtype must be bfloat16 on CUDA (the row-wise scaled FP8 GEMM returns bf16), "
                         f"got {out_dtype}")


def fp8_linear(x: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
               bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """`(x * x_scale) @ (weight * weight_scale).T + bias`, rounded once to `out_dtype`, in one FP8 GEMM.

    `x (..., K)` e4m3 with `x_scale (..., 1)` fp32 (`quantize_rowwise` and the norms' FP8 variants produce them);
    `weight (N, K)` e4m3 with one fp32 scale per output channel (`quantize_weight`). Returns a new `(..., N)` tensor.
    On a GPU the GEMM needs sm_89 or newer, K and N multiples of 16 and `out_dtype=torch.bfloat16`; x's rows must
    be contiguous (they are, from the quantizers).
    """
    if not (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor) and x.dtype == E4M3
            and weight.dtype == E4M3 and weight.dim() == 2 and x.dim() >= 1 and x.shape[-1] == weight.shape[1]
            and isinstance(x_scale, torch.Tensor) and x_scale.dtype == torch.float32
            and x_scale.shape == (*x.shape[:-1], 1) and isinstance(weight_scale, torch.Tensor)
            and weight_scale.dtype == torch.float32 and weight_scale.numel() == weight.shape[0]
            and weight_scale.dim() <= 2 and bias is None and out_dtype in OUT_DTYPES
            and x.device == weight.device == x_scale.device == weight_scale.device
            and (x.device.type != "cuda" or out_dtype == torch.bfloat16)):
        _check_linear(x, x_scale, weight, weight_scale, bias, out_dtype)
    lead = x.shape[:-1]
    n, k = weight.shape
    m = math.prod(lead)
    rows = x.reshape(m, k)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    if rows.device.type == "cpu" and not cpu_rowwise_scaled_mm():
        return _cpu_per_tensor_linear(rows, x_scale.reshape(m, 1), weight, weight_scale.reshape(1, n), bias,
                                      out_dtype).view(*lead, n)
    fused_bias = bias is not None and out_dtype != torch.float32 and bias.dtype == out_dtype
    out = torch._scaled_mm(rows, weight.t(), scale_a=x_scale.reshape(m, 1), scale_b=weight_scale.reshape(1, n),
                           bias=bias if fused_bias else None, out_dtype=out_dtype)
    if bias is not None and not fused_bias:
        out = (out.float() + bias.float()).to(out_dtype)
    return out.view(*lead, n)


def _probe_cpu_rowwise_scaled_mm() -> bool:
    one = torch.ones(16, 16).to(E4M3)
    try:
        torch._scaled_mm(one, one.t(), scale_a=torch.ones(16, 1), scale_b=torch.ones(1, 16), out_dtype=torch.float32)
    except RuntimeError:
        return False
    return True


# Found once at import (a 16 x 16 CPU GEMM), not while torch.compile traces a call.
_CPU_ROWWISE_SCALED_MM = _probe_cpu_rowwise_scaled_mm()


def cpu_rowwise_scaled_mm() -> bool:
    """Whether this torch's CPU `_scaled_mm` takes row / column scales (torch 2.11's takes one scale per operand)."""
    return _CPU_ROWWISE_SCALED_MM


def _cpu_per_tensor_linear(rows: torch.Tensor, row_scales: torch.Tensor, weight: torch.Tensor,
                           column_scales: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype):
    """The same GEMM where the CPU `_scaled_mm` takes unit scales only: fp32 products, then the two scales applied
    in fp32 (as the row-wise kernel applies them to its fp32 accumulator) and one rounding to `out_dtype`."""
    unit = torch.ones((), dtype=torch.float32)
    acc = torch._scaled_mm(rows, weight.t(), scale_a=unit, scale_b=unit, out_dtype=torch.float32)
    out = acc * row_scales * column_scales
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)


def _probe(device: torch.device) -> bool:
    """Odd row width, a zero row and a row of tiny values: a broken kernel is off by whole e4m3 steps."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(5, 200, generator=gen) * 3
    x[1] = 0
    x[2] *= 1e-30
    values, scales = quantize_rowwise(x.to(device), backend="triton")
    want = reference.quantize_rowwise(x.double())
    got = reference.dequantize(values.cpu(), scales.cpu(), torch.float64)
    return torch.allclose(got, reference.dequantize(*want, torch.float64), rtol=0.07, atol=0.0)


_dispatch.register_probe("quantize_rowwise", "triton", _probe)


def _probe_gelu(device: torch.device) -> bool:
    """Odd row width, negative and positive values across GELU's bend, a zero row."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(4, 200, generator=gen) * 3
    x[1] = 0
    values, scales = gelu_quantize_rowwise(x.to(device), backend="triton")
    want = reference.dequantize(*reference.gelu_quantize_rowwise(x.double()), torch.float64)
    got = reference.dequantize(values.cpu(), scales.cpu(), torch.float64)
    return torch.allclose(got, want, rtol=0.07, atol=1e-30)


_dispatch.register_probe("gelu_quantize_rowwise", "triton", _probe_gelu)


MIN_CAPABILITY = (8, 9)  # FP8 tensor cores: Ada (sm_89), Hopper (sm_90), Blackwell (sm_100, sm_110, sm_120)


def fp8_unsupported_reason(device: torch.device | str, dtype: torch.dtype | None = None) -> str | None:
    """Why the FP8 GEMMs cannot run on `device` with a network of `dtype`, or None when they can: on the CPU
    (PyTorch's own `_scaled_mm`) with any output dtype, on a CUDA GPU of compute capability 8.9 or newer (Ada,
    Hopper, Blackwell: FP8 tensor cores) with bfloat16. No other device type runs them."""
    device = torch.device(device)
    if device.type == "cpu":
        return None
    if device.type != "cuda":
        return f"FP8 runs on a CUDA GPU with FP8 tensor cores or on the CPU, not on {device.type}"
    if not torch.cuda.is_available():
        return "FP8 needs a CUDA GPU with FP8 tensor cores (sm_89 or newer) or the CPU; no CUDA GPU is visible"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < MIN_CAPABILITY:
        return (f"FP8 needs a GPU with FP8 tensor cores (compute capability 8.9 or newer: Ada, Hopper, Blackwell) "
                f"or the CPU; {torch.cuda.get_device_name(device)} is sm_{major}{minor}")
    if dtype is not None and dtype != torch.bfloat16:
        return f"FP8 on CUDA needs a bfloat16 network (the row-scaled FP8 GEMM returns bfloat16), got {dtype}"
    return None
