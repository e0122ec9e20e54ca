"""Public `fp8_linear_gelu_quantize`: the MLP's first FP8 GEMM with the exact GELU and the group-wise e4m3
quantization of its output in the epilogue (the hidden activation is written once, as e4m3, never in 16 bits).

Registers `cosmos_kernels::fp8_linear_gelu_quantize_triton` on `(M, K)` rows. Backends: "triton" (automatic on
CUDA once its probe has passed; on the CPU through the interpreter) for groups of 128 columns, one output tile
wide, and "reference" (automatic on the CPU, and the only one for other group sizes).
"""

from __future__ import annotations

import math

import torch

from cosmos_kernels import _dispatch
from cosmos_kernels._checks import check_same_device
from cosmos_kernels.fp8 import reference
from cosmos_kernels.fp8.ops import check_linear_operands
from cosmos_kernels.fp8.reference import E4M3
from cosmos_kernels.tools import dispatch_counter

_NS = "cosmos_kernels"
OP = "fp8_linear_gelu_quantize"
BACKENDS = ("reference", "triton")
KERNEL_GROUP = 128  # the Triton kernel's group: its output tile width


@torch.library.custom_op(f"{_NS}::fp8_linear_gelu_quantize_triton", mutates_args=())
def _fp8_linear_gelu_quantize_triton(x: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor,
                                     weight_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from cosmos_kernels.fp8 import linear_gelu_quantize_triton as kernels  # Triton is optional

    return kernels.fp8_linear_gelu_quantize(x, x_scale, weight, weight_scale)


@_fp8_linear_gelu_quantize_triton.register_fake
def _fake(x: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor,
          weight_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m, n = x.shape[0], weight.shape[0]
    return x.new_empty((m, n), dtype=E4M3), x.new_empty((m, -(-n // KERNEL_GROUP)), dtype=torch.float32)


def _gemm_flops(x: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, *,
                out: object = None) -> int:
    return 2 * x.shape[0] * x.shape[1] * weight.shape[0]


# One launch: reads x, x_scale, weight and weight_scale once, writes the e4m3 values and the fp32 group scales
# once (the default footprint count); its FLOPs run at the card's FP8 rate.
dispatch_counter.register_cost(f"{_NS}::fp8_linear_gelu_quantize_triton", _gemm_flops)


def _check_operands(x: object, x_scale: object, weight: object, weight_scale: object, group: object) -> None:
    """Every check, in order; raises the first failure, naming the argument."""
    if isinstance(group, bool) or not isinstance(group, int) or group < 1:
        raise ValueError(f"{OP}: group must be a positive int, got {group!r}")
    check_linear_operands(OP, x, x_scale, weight, weight_scale)
    check_same_device(OP, x=x, x_scale=x_scale, weight=weight, weight_scale=weight_scale)


def _operands_ok(x: object, x_scale: object, weight: object, weight_scale: object, group: object) -> bool:
    """Whether everything `_check_operands` checks holds (the common case pays for one expression)."""
    return (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor) and x.dtype == E4M3
            and weight.dtype == E4M3 and weight.dim() == 2 and x.dim() >= 1 and x.shape[-1] == weight.shape[1]
            and isinstance(x_scale, torch.Tensor) and x_scale.dtype == torch.float32
            and x_scale.shape == (*x.shape[:-1], 1) and isinstance(weight_scale, torch.Tensor)
            and weight_scale.dtype == torch.float32 and weight_scale.numel() == weight.shape[0]
            and weight_scale.dim() <= 2 and type(group) is int and group >= 1
            and x.device == weight.device == x_scale.device == weight_scale.device)


def fp8_linear_gelu_quantize(x: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor,
                             weight_scale: torch.Tensor, *, group: int = 128,
                             backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`(values, scales)` of `GELU((x * x_scale) @ (weight * weight_scale).T)`, quantized group-wise to e4m3.

    `x (..., K)` e4m3 with `x_scale (..., 1)` fp32 (one scale per row, as the quantizers and the adaptive norms'
    FP8 variants write them); `weight (N, K)` e4m3 with one fp32 scale per output channel, `weight_scale (N, 1)`
    (`quantize_weight`). The product is accumulated in fp32 and is not rounded before the exact (erf) GELU; the
    result is quantized by `quantize_groupwise`'s rule: new contiguous e4m3 `values (..., N)` and fp32
    `scales (..., G)`, `G = ceil(N / group)`, column `n` in group `n // group` (the last group may be partial).
    Spec: `reference.fp8_linear_gelu_quantize`. The Triton kernel takes `group=128` only (its tile width): with
    another group, backend "triton" is an error and the automatic choice runs the reference.
    """
    if not _operands_ok(x, x_scale, weight, weight_scale, group):
        _check_operands(x, x_scale, weight, weight_scale, group)
    if _dispatch.needs_autograd(x_scale, weight_scale):
        _dispatch.warn_autograd(OP)
        return reference.fp8_linear_gelu_quantize(x, x_scale, weight, weight_scale, group)
    if backend == "triton" and group != KERNEL_GROUP:
        raise ValueError(f"{OP}: backend 'triton' takes group={KERNEL_GROUP} only (the kernel's output tile is "
                         f"one group), got group={group}; use backend='reference' or None")
    name = _dispatch.resolve_backend(OP, x.device, backend, supported=BACKENDS, cuda_order=("triton",))
    if name == "reference" or group != KERNEL_GROUP:
        return reference.fp8_linear_gelu_quantize(x, x_scale, weight, weight_scale, group)
    lead = x.shape[:-1]
    n, k = weight.shape
    m = math.prod(lead)
    try:
        rows = x.view(m, k)  # the kernel reads the strides: no copy when the rows collapse into one stride
    except RuntimeError:
        rows = x.reshape(m, k)
    values, scales = _fp8_linear_gelu_quantize_triton(rows, x_scale.reshape(m), weight, weight_scale.reshape(n))
    return values.view(*lead, n), scales.view(*lead, scales.shape[-1])


def _probe(device: torch.device) -> bool:
    """Odd sizes (a partial last group, a K tail, rows past a tile), a zero row: a broken kernel is off by whole
    e4m3 steps or whole groups."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    x, x_scale = reference.quantize_rowwise(torch.randn(37, 200, generator=gen) * 3)
    weight, weight_scale = reference.quantize_weight(torch.randn(300, 200, generator=gen) / 200 ** 0.5)
    x[1] = 0
    values, scales = fp8_linear_gelu_quantize(x.to(device), x_scale.to(device), weight.to(device),
                                              weight_scale.to(device), backend="triton")
    want = reference.fp8_linear_gelu_quantize(x, x_scale.double(), weight, weight_scale.double())
    got = reference.dequantize(values.cpu(), scales.cpu().repeat_interleave(KERNEL_GROUP, -1)[:, :300],
                               torch.float64)
    ref = reference.dequantize(want[0], want[1].repeat_interleave(KERNEL_GROUP, -1)[:, :300], torch.float64)
    return scales.shape == (37, 3) and torch.allclose(got, ref, rtol=0.07, atol=1e-30)


_dispatch.register_probe(OP, "triton", _probe)
