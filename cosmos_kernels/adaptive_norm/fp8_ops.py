"""FP8 variants of the adaptive LayerNorm ops: the same launch writes the output as e4m3 values and per-row fp32
scales, ready for `cosmos_kernels.fp8.fp8_linear` (the row is quantized where it is computed, never re-read).

`cosmos_kernels::layer_norm_modulate_fp8_triton` and `cosmos_kernels::gated_residual_layer_norm_modulate_fp8_triton`
take (N0, N1, N2, D) row grids, like their unquantized siblings, whose schemas these ops leave unchanged. Backends:
"triton" (automatic on CUDA once its probe has passed, on the CPU through the interpreter) and "reference" (the
unquantized reference, then `quantize_rowwise`; automatic on the CPU).
"""

from __future__ import annotations

import torch

from cosmos_kernels import _checks, _dispatch
from cosmos_kernels._layout import as_row_grid
from cosmos_kernels.adaptive_norm import reference
from cosmos_kernels.fp8 import reference as fp8_reference
from cosmos_kernels.tools import dispatch_counter

_NS = "cosmos_kernels"
BACKENDS = ("reference", "triton")


def _kernels():
    from cosmos_kernels.adaptive_norm import triton as kernels  # Triton is optional

    return kernels


@torch.library.custom_op(f"{_NS}::layer_norm_modulate_fp8_triton", mutates_args=())
def _layer_norm_modulate_fp8_triton(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                                    eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _kernels().layer_norm_modulate(x, shift, scale, eps, fp8=True)


@torch.library.custom_op(f"{_NS}::gated_residual_layer_norm_modulate_fp8_triton", mutates_args=())
def _gated_residual_layer_norm_modulate_fp8_triton(
    residual: torch.Tensor, x: torch.Tensor, gate: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _kernels().layer_norm_modulate(x, shift, scale, eps, residual=residual, gate=gate, fp8=True)


def _fake_quantized(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.empty(x.shape, dtype=fp8_reference.E4M3, device=x.device),
            torch.empty((*x.shape[:-1], 1), dtype=torch.float32, device=x.device))


@_layer_norm_modulate_fp8_triton.register_fake
def _fake_layer_norm_modulate_fp8(x, shift, scale, eps):
    return _fake_quantized(x)


@_gated_residual_layer_norm_modulate_fp8_triton.register_fake
def _fake_gated_fp8(residual, x, gate, shift, scale, eps):
    return (torch.empty(residual.shape, dtype=residual.dtype, device=residual.device), *_fake_quantized(residual))


for _name in ("layer_norm_modulate_fp8_triton", "gated_residual_layer_norm_modulate_fp8_triton"):
    dispatch_counter.register_cost(f"{_NS}::{_name}", dispatch_counter.no_matrix_flops)  # one launch


def _resolve(op: str, t: torch.Tensor, backend: str | None) -> str:
    return _dispatch.resolve_backend(op, t.device, backend, supported=BACKENDS, cuda_order=("triton",), dtype=t.dtype)


def layer_norm_modulate_fp8(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6, *, backend: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantize_rowwise(layer_norm_modulate(x, shift, scale, eps))` in one pass: `(values, scales)`, e4m3 values of
    x's shape and fp32 scales of shape `(..., 1)`. The output is rounded to x's dtype before it is quantized, as the
    unfused pair does. Operands broadcast and are read in place as `layer_norm_modulate`'s are."""
    op = "layer_norm_modulate_fp8"
    if not _checks.broadcast_operands_ok(x, shift, scale):
        _checks.check_broadcast_operands(op, "x", x, shift=shift, scale=scale)
    if _dispatch.needs_autograd(x, shift, scale):
        _dispatch.warn_autograd(op)
        return reference.layer_norm_modulate_fp8(x, shift, scale, eps)
    name = _resolve(op, x, backend)
    if name == "reference" or x.numel() == 0:
        return reference.layer_norm_modulate_fp8(x, shift, scale, eps)
    if not _checks.kernel_dtypes_ok(x, shift, scale):
        _checks.check_backend_dtype(op, name, x)
        _checks.check_same_dtype(op, "x", x, shift=shift, scale=scale)
    values, scales = _layer_norm_modulate_fp8_triton(*as_row_grid(x.shape, x, shift, scale), float(eps))
    return values.view(x.shape), scales.view(*x.shape[:-1], 1)


def gated_residual_layer_norm_modulate_fp8(
    residual: torch.Tensor,
    x: torch.Tensor,
    gate: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`gated_residual_layer_norm_modulate` with its normed output quantized in the same pass: `(new_residual,
    values, scales)`, the residual stream in residual's dtype, e4m3 values and `(..., 1)` fp32 scales."""
    op = "gated_residual_layer_norm_modulate_fp8"
    if not _checks.broadcast_operands_ok(residual, x, gate, shift, scale):
        _checks.check_broadcast_operands(op, "residual", residual, x=x, gate=gate, shift=shift, scale=scale)
    if _dispatch.needs_autograd(residual, x, gate, shift, scale):
        _dispatch.warn_autograd(op)
        return reference.gated_residual_layer_norm_modulate_fp8(residual, x, gate, shift, scale, eps)
    name = _resolve(op, residual, backend)
    if name == "reference" or residual.numel() == 0:
        return reference.gated_residual_layer_norm_modulate_fp8(residual, x, gate, shift, scale, eps)
    if not _checks.kernel_dtypes_ok(residual, x, gate, shift, scale):
        _checks.check_backend_dtype(op, name, residual)
        _checks.check_same_dtype(op, "residual", residual, x=x, gate=gate, shift=shift, scale=scale)
    grids = as_row_grid(residual.shape, residual, x, gate, shift, scale)
    new_residual, values, scales = _gated_residual_layer_norm_modulate_fp8_triton(*grids, float(eps))
    shape = residual.shape
    return new_residual.view(shape), values.view(shape), scales.view(*shape[:-1], 1)


def _probe(op_fn, ref_fn, make_inputs):
    """The dequantized outputs against the reference's: a broken kernel is off by whole e4m3 steps or more."""
    def run(device: torch.device) -> bool:
        gen = torch.Generator(device="cpu").manual_seed(0)
        args = make_inputs(gen)
        got = [t.cpu() for t in op_fn(*[a.to(device) for a in args])]
        want = ref_fn(*args)
        ok = all(torch.allclose(g, w, atol=1e-4, rtol=1e-4) for g, w in zip(got[:-2], want[:-2]))
        deq = [fp8_reference.dequantize(*pair, torch.float64) for pair in (got[-2:], want[-2:])]
        return ok and torch.allclose(deq[0], deq[1], rtol=0.07, atol=1e-3)
    return run


def _register_probes() -> None:
    def rows(gen):
        return [torch.randn(2, 3, 5, 256, generator=gen), *torch.randn(2, 3, 1, 768, generator=gen).chunk(3, -1)]

    _dispatch.register_probe("layer_norm_modulate_fp8", "triton", _probe(
        lambda x, s, c, g: layer_norm_modulate_fp8(x, s, c, backend="triton"),
        lambda x, s, c, g: reference.layer_norm_modulate_fp8(x, s, c), rows))
    _dispatch.register_probe("gated_residual_layer_norm_modulate_fp8", "triton", _probe(
        lambda x, s, c, g: gated_residual_layer_norm_modulate_fp8(x, x * 0.5, g, s, c, backend="triton"),
        lambda x, s, c, g: reference.gated_residual_layer_norm_modulate_fp8(x, x * 0.5, g, s, c), rows))


_register_probes()
