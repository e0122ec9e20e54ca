"""Public adaptive-norm ops: input checks, backend choice, and the `torch.ops.cosmos_kernels` registrations.

The C++ op `cosmos_kernels::<name>` (CPU and CUDA kernels) and the Python custom op
`cosmos_kernels::<name>_triton` take (N0, N1, N2, D) row grids of one dtype; the functions here take
PyTorch-broadcastable tensors, build those grids without copying (see `_layout.py`) and reshape back.
"""

from __future__ import annotations

import torch

from cosmos_kernels import _checks, _dispatch, _ext
from cosmos_kernels._layout import as_row_grid
from cosmos_kernels.adaptive_norm import reference
from cosmos_kernels.tools import dispatch_counter

_NS = "cosmos_kernels"


# -- Triton custom ops (Triton is imported on first launch: CPU-only installs have none) ----------------

def _triton_kernels():
    from cosmos_kernels.adaptive_norm import triton as kernels

    return kernels


@torch.library.custom_op(f"{_NS}::layer_norm_modulate_triton", mutates_args=())
def _layer_norm_modulate_triton(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    return _triton_kernels().layer_norm_modulate(x, shift, scale, eps)


@torch.library.custom_op(f"{_NS}::gated_residual_layer_norm_modulate_triton", mutates_args=())
def _gated_residual_layer_norm_modulate_triton(
    residual: torch.Tensor, x: torch.Tensor, gate: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return _triton_kernels().layer_norm_modulate(x, shift, scale, eps, residual=residual, gate=gate)


@torch.library.custom_op(f"{_NS}::rms_norm_triton", mutates_args=())
def _rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _triton_kernels().rms_norm(x, weight, eps)


# -- fake (meta) implementations, shared by the native and the Triton ops ------------------------------

def _fake_like(x: torch.Tensor, *args: object) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _fake_gated(residual: torch.Tensor, *args: object) -> tuple[torch.Tensor, torch.Tensor]:
    return _fake_like(residual), _fake_like(residual)


_layer_norm_modulate_triton.register_fake(_fake_like)
_gated_residual_layer_norm_modulate_triton.register_fake(_fake_gated)
_rms_norm_triton.register_fake(_fake_like)

if _ext.has_cpu_extension():
    torch.library.register_fake(f"{_NS}::layer_norm_modulate")(_fake_like)
    torch.library.register_fake(f"{_NS}::gated_residual_layer_norm_modulate")(_fake_gated)
    torch.library.register_fake(f"{_NS}::rms_norm")(_fake_like)

# One kernel per call on every GPU backend; no matrix work (the dispatch counter's roofline reads this).
for _name in ("layer_norm_modulate", "gated_residual_layer_norm_modulate", "rms_norm"):
    for _suffix in ("", "_triton"):
        dispatch_counter.register_cost(f"{_NS}::{_name}{_suffix}", dispatch_counter.no_matrix_flops)


_grid_ops: dict[tuple[str, str], torch._ops.OpOverload] = {}


def _grid_op(name: str, backend: str) -> torch._ops.OpOverload:
    """The registered op of a backend, looked up once (`torch.ops` attribute lookups cost microseconds)."""
    key = (name, backend)
    overload = _grid_ops.get(key)
    if overload is None:
        packet = getattr(torch.ops.cosmos_kernels, f"{name}_triton" if backend == "triton" else name)
        overload = _grid_ops[key] = packet.default
    return overload


def _same_shape(out: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """`out` in the caller's shape: a 4-D call's grid is its own shape, so no view is made."""
    return out if len(shape) == 4 else out.view(*shape)


# -- public ops ------------------------------------------------------------------------------------------

def layer_norm_modulate(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6, *, backend: str | None = None
) -> torch.Tensor:
    """`F.layer_norm(x, (D,), eps=eps) * (1 + scale) + shift`, in one pass.

    `shift` and `scale` broadcast against `x` (per-frame `(B, T, 1, D)` and per-sample `(B, 1, 1, D)` against
    `(B, T, S, D)`, per-sample `(B, 1, D)` against `(B, L, D)`, or per token); strided views such as
    `mod.chunk(3, dim=-1)` are read in place. Returns a new tensor of `x`'s shape and dtype.
    """
    op = "layer_norm_modulate"
    if not _checks.broadcast_operands_ok(x, shift, scale):
        _checks.check_broadcast_operands(op, "x", x, shift=shift, scale=scale)
    if _dispatch.needs_autograd(x, shift, scale):
        _dispatch.warn_autograd(op)
        return reference.layer_norm_modulate(x, shift, scale, eps)
    name = _dispatch.resolve_backend(op, x.device, backend, dtype=x.dtype)
    if name == "reference" or x.numel() == 0:
        return reference.layer_norm_modulate(x, shift, scale, eps)
    if not _checks.kernel_dtypes_ok(x, shift, scale):
        _checks.check_backend_dtype(op, name, x)
        _checks.check_same_dtype(op, "x", x, shift=shift, scale=scale)
    grids = as_row_grid(x.shape, x, shift, scale)
    return _same_shape(_grid_op(op, name)(*grids, float(eps)), x.shape)


def gated_residual_layer_norm_modulate(
    residual: torch.Tensor,
    x: torch.Tensor,
    gate: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`new_residual = residual + gate * x` and `layer_norm_modulate(new_residual, shift, scale, eps)` in one pass.

    `x`, `gate`, `shift` and `scale` broadcast against `residual`. Returns `(new_residual, normed)`, new
    tensors of `residual`'s shape and dtype; `normed` is computed from the rounded `new_residual`.
    """
    op = "gated_residual_layer_norm_modulate"
    if not _checks.broadcast_operands_ok(residual, x, gate, shift, scale):
        _checks.check_broadcast_operands(op, "residual", residual, x=x, gate=gate, shift=shift, scale=scale)
    if _dispatch.needs_autograd(residual, x, gate, shift, scale):
        _dispatch.warn_autograd(op)
        return reference.gated_residual_layer_norm_modulate(residual, x, gate, shift, scale, eps)
    name = _dispatch.resolve_backend(op, residual.device, backend, dtype=residual.dtype)
    if name == "reference" or residual.numel() == 0:
        return reference.gated_residual_layer_norm_modulate(residual, x, gate, shift, scale, eps)
    if not _checks.kernel_dtypes_ok(residual, x, gate, shift, scale):
        _checks.check_backend_dtype(op, name, residual)
        _checks.check_same_dtype(op, "residual", residual, x=x, gate=gate, shift=shift, scale=scale)
    grids = as_row_grid(residual.shape, residual, x, gate, shift, scale)
    new_residual, normed = _grid_op(op, name)(*grids, float(eps))
    return _same_shape(new_residual, residual.shape), _same_shape(normed, residual.shape)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, *, backend: str | None = None) -> torch.Tensor:
    """`x * rsqrt(mean(x**2, -1) + eps) * weight` over the last dim, computed in fp32; `weight` is `(D,)`."""
    op = "rms_norm"
    # the one-pass check, and weight of shape (D,) exactly (a broadcastable (1, D) is refused too)
    if not (_checks.broadcast_operands_ok(x, weight) and weight.dim() == 1):
        _checks.check_float_tensor(op, "x", x)
        _checks.check_float_tensor(op, "weight", weight)
        _checks.check_same_device(op, x=x, weight=weight)
        d = x.shape[-1]
        _checks.check_hidden_size(op, "x", d)
        if weight.dim() != 1 or weight.shape[0] != d:
            raise ValueError(f"{op}: weight must have shape ({d},) to match x's last dim, got {tuple(weight.shape)}")
    if _dispatch.needs_autograd(x, weight):
        _dispatch.warn_autograd(op)
        return reference.rms_norm(x, weight, eps)
    name = _dispatch.resolve_backend(op, x.device, backend, dtype=x.dtype)
    if name == "reference" or x.numel() == 0:
        return reference.rms_norm(x, weight, eps)
    if not _checks.kernel_dtypes_ok(x, weight):
        _checks.check_backend_dtype(op, name, x)
        _checks.check_same_dtype(op, "x", x, weight=weight)
    grids = as_row_grid(x.shape, x, weight)
    return _same_shape(_grid_op(op, name)(*grids, float(eps)), x.shape)


# -- run-time probes of the GPU backends ------------------------------------------------------------------

def _probe(op_fn, ref_fn, make_inputs):
    def run(device: torch.device) -> bool:
        gen = torch.Generator(device="cpu").manual_seed(0)
        args = [t.to(device) for t in make_inputs(gen)]
        got = op_fn(*args)
        want = ref_fn(*[a.double() for a in args])
        got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
        return all(torch.allclose(g.double(), w, atol=1e-4, rtol=1e-4) for g, w in zip(got, want))
    return run


def _register_probes() -> None:
    def rows(gen):
        x = torch.randn(2, 3, 5, 256, generator=gen)
        mod = torch.randn(2, 3, 1, 768, generator=gen)
        return [x, *mod.chunk(3, dim=-1)]

    for backend in ("cuda", "triton"):
        _dispatch.register_probe("layer_norm_modulate", backend, _probe(
            lambda x, s, c, _b=backend: layer_norm_modulate(x, s, c, backend=_b),
            lambda x, s, c: reference.layer_norm_modulate(x, s, c), lambda g: rows(g)[:3]))
        _dispatch.register_probe("gated_residual_layer_norm_modulate", backend, _probe(
            lambda r, x, g, s, c, _b=backend: gated_residual_layer_norm_modulate(r, x, g, s, c, backend=_b),
            reference.gated_residual_layer_norm_modulate,
            lambda gen: [torch.randn(2, 3, 5, 256, generator=gen), *rows(gen)[:1], *rows(gen)[1:]]))
        _dispatch.register_probe("rms_norm", backend, _probe(
            lambda x, w, _b=backend: rms_norm(x, w, backend=_b), reference.rms_norm,
            lambda gen: [torch.randn(7, 3, 128, generator=gen), torch.randn(128, generator=gen)]))


_register_probes()
