"""Public `linear_gelu`: input checks, backend choice, and the `torch.ops.cosmos_kernels` registration.

Backends: "triton" (the GEMM with the GELU in its epilogue, `triton.py`) and "reference" (`F.linear`, then
`F.gelu`: cuBLAS and one element-wise kernel on a GPU, the CPU's own GEMM here). Automatic choice on 16-bit CUDA
tensors, once the Triton kernel's probe has passed: the faster of the two at these shapes, timed on the device once
(the epilogue saves two passes over the output, but only wins where the Triton GEMM keeps up with cuBLAS);
"reference" for fp32 (cuBLAS keeps IEEE fp32 at its own speed, a Triton IEEE fp32 GEMM does not) and on the CPU.
An explicit `backend`, or `COSMOS_KERNELS_BACKEND=triton`, wins.
"""

from __future__ import annotations

import math

import torch

from cosmos_kernels import _checks, _dispatch
from cosmos_kernels.linear_gelu import reference
from cosmos_kernels.tools import dispatch_counter

_NS = "cosmos_kernels"
BACKENDS = ("reference", "triton")


@torch.library.custom_op(f"{_NS}::linear_gelu_triton", mutates_args=())
def _linear_gelu_triton(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    from cosmos_kernels.linear_gelu import triton as kernels  # Triton is optional

    return kernels.linear_gelu(x, weight)


@_linear_gelu_triton.register_fake
def _fake_linear_gelu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x.new_empty((x.shape[0], weight.shape[0]))


def _gemm_flops(x: torch.Tensor, weight: torch.Tensor, *, out: object = None) -> int:
    return 2 * x.shape[0] * x.shape[1] * weight.shape[0]


# One launch: the GEMM, whose epilogue applies the GELU before the output's one write.
dispatch_counter.register_cost(f"{_NS}::linear_gelu_triton", _gemm_flops)


def _check(op: str, x: object, weight: object) -> None:
    _checks.check_float_tensor(op, "x", x)
    _checks.check_float_tensor(op, "weight", weight)
    if weight.dim() != 2:
        raise ValueError(f"{op}: weight must be (out_features, in_features), got shape {tuple(weight.shape)}")
    _checks.check_same_device(op, x=x, weight=weight)
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"{op}: x has last dimension {x.shape[-1]} (shape {tuple(x.shape)}) but weight takes "
                         f"{weight.shape[1]} input features (shape {tuple(weight.shape)})")


def _resolve(op: str, x: torch.Tensor, backend: str | None) -> str:
    """The backend, or "timed": CUDA tensors in 16 bits with nothing pinned take the faster of the two on the device."""
    name = _dispatch.resolve_backend(op, x.device, backend, supported=BACKENDS, cuda_order=("triton",),
                                     dtype=x.dtype)
    pinned = _dispatch.environment(_dispatch.BACKEND_ENV).strip().lower() == "triton"
    if name != "triton" or backend is not None or pinned or x.device.type == "cpu":
        return name  # explicit, pinned, or the interpreter
    if x.dtype == torch.float32:
        return "reference"
    return "timed" if x.device.type == "cuda" else "triton"  # meta: the roofline counts the epilogue kernel


def _run(name: str, rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _linear_gelu_triton(rows, weight) if name == "triton" else reference.linear_gelu(rows, weight)


def _timed_choice(rows: torch.Tensor, weight: torch.Tensor) -> str:
    """Whether the epilogue kernel beats cuBLAS + GELU at these shapes on this GPU: timed once (the attention
    picker's device timing, kept on disk beside its choices); "triton" under COSMOS_KERNELS_DETERMINISTIC=1."""
    if _dispatch.environment(_dispatch.DETERMINISTIC_ENV, "0") == "1":
        return "triton"
    from cosmos_kernels import picker

    key = (f"linear_gelu | {picker.gpu_label(rows.device)} | {picker.versions()} | x{tuple(rows.shape)} "
           f"w{tuple(weight.shape)} {str(rows.dtype)[6:]} stride{tuple(rows.stride())}{tuple(weight.stride())}")
    return picker.timed_choice(key, lambda: list(BACKENDS[::-1]), _run, (rows, weight), "triton")


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """`F.gelu(F.linear(x, weight))` (exact erf GELU, no bias) with the GELU applied before the product is stored.

    `x (..., in_features)` with any strides, `weight (out_features, in_features)` as `nn.Linear` stores it.
    Returns a new `(..., out_features)` tensor of x's dtype. The product is accumulated in fp32 and rounded once,
    after the GELU (the unfused pair rounds the product first).
    """
    op = "linear_gelu"
    if not (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor) and weight.dim() == 2
            and x.dim() >= 1 and x.shape[-1] == weight.shape[1] and x.device == weight.device
            and x.dtype in _checks.FLOAT_DTYPES and weight.dtype in _checks.FLOAT_DTYPES):
        _check(op, x, weight)
    if _dispatch.needs_autograd(x, weight):
        _dispatch.warn_autograd(op)
        return reference.linear_gelu(x, weight)
    name = _resolve(op, x, backend)
    if name == "reference":
        return reference.linear_gelu(x, weight)
    if not _checks.kernel_dtypes_ok(x, weight):
        _checks.check_backend_dtype(op, "triton", x)
        raise TypeError(f"{op}: weight has dtype {weight.dtype} but x has {x.dtype}; the fused backends take "
                        "operands of one dtype")
    lead = x.shape[:-1]
    shape = (math.prod(lead), x.shape[-1])
    try:
        rows = x.view(shape)  # the kernel reads the strides: no copy when the rows collapse into one stride
    except RuntimeError:
        rows = x.reshape(shape)
    if name == "timed":
        name = _timed_choice(rows, weight)
    return _run(name, rows, weight).view(*lead, weight.shape[0])


def _probe(device: torch.device) -> bool:
    """bf16, odd sizes (no dimension a multiple of a tile): a broken kernel is off by O(1)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(37, 200, generator=gen).bfloat16()
    w = (torch.randn(150, 200, generator=gen) / 200 ** 0.5).bfloat16()
    got = linear_gelu(x.to(device), w.to(device), backend="triton").double().cpu()
    return torch.allclose(got, reference.linear_gelu(x.double(), w.double()), atol=3e-2, rtol=2e-2)


_dispatch.register_probe("linear_gelu", "triton", _probe)
