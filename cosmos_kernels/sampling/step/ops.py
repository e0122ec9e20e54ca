"""The public fused sampler step: input checks, backend choice, and its `torch.ops.cosmos_kernels` ops.

The C++ op `cosmos_kernels::sampler_step` (CPU and CUDA kernels) and the Triton op
`cosmos_kernels::sampler_step_triton` take `(B, C, T, S)` views of the latents (S = H * W, contiguous
last dim), a `(B, T)` float32 mask, a `(K, 8)` float64 table and a one-element int64 step index.
`sampler_step()` takes the `(B, C, T, H, W)` latents and builds those views without copying where the
strides allow.
"""

from __future__ import annotations

import torch

from cosmos_kernels import _checks, _dispatch, _ext
from cosmos_kernels.sampling.step import reference
from cosmos_kernels.tools import dispatch_counter

_NS = "cosmos_kernels"
OP = "sampler_step"


@torch.library.custom_op(f"{_NS}::sampler_step_triton", mutates_args=())
def _sampler_step_triton(
    v: torch.Tensor, x: torch.Tensor, x0_prev: torch.Tensor, x0_prev2: torch.Tensor, cond_latent: torch.Tensor,
    cond_mask: torch.Tensor, coeffs: torch.Tensor, step: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from cosmos_kernels.sampling.step import triton as triton_kernels  # Triton is optional

    return triton_kernels.sampler_step(v, x, x0_prev, x0_prev2, cond_latent, cond_mask, coeffs, step)


def _fake_step(v: torch.Tensor, x: torch.Tensor, *args: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    state = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    return state, torch.empty_like(state), torch.empty(x.shape, dtype=v.dtype, device=x.device)


_sampler_step_triton.register_fake(_fake_step)
if _ext.has_cpu_extension():
    torch.library.register_fake(f"{_NS}::sampler_step")(_fake_step)

# One element-wise kernel per step, on every GPU backend.
dispatch_counter.register_cost(f"{_NS}::sampler_step", dispatch_counter.no_matrix_flops)
dispatch_counter.register_cost(f"{_NS}::sampler_step_triton", dispatch_counter.no_matrix_flops)


def _frames(t: torch.Tensor) -> torch.Tensor:
    """`(B, C, T, H, W)` -> `(B, C, T, H * W)` view with a contiguous last dim (a copy only if impossible)."""
    b, c, f, h, w = t.shape
    try:
        out = t.view(b, c, f, h * w)
    except RuntimeError:
        out = t.contiguous().view(b, c, f, h * w)
    if h * w > 1 and out.stride(-1) != 1:
        out = out.contiguous()
    return out


def _check_latent(name: str, t: object, like: torch.Tensor | None) -> torch.Tensor:
    t = _checks.check_float_tensor(OP, name, t)
    if t.dim() != 5:
        raise ValueError(f"{OP}: {name} must be a (B, C, T, H, W) latent, got shape {tuple(t.shape)}")
    if like is not None and t.shape != like.shape:
        raise ValueError(f"{OP}: {name} has shape {tuple(t.shape)}, expected {tuple(like.shape)} (x's shape)")
    return t


def sampler_step(
    v: torch.Tensor,
    x: torch.Tensor,
    x0_prev: torch.Tensor,
    x0_prev2: torch.Tensor,
    cond_latent: torch.Tensor | None,
    cond_mask: torch.Tensor | None,
    coeffs: torch.Tensor,
    step: torch.Tensor,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One fused step between two network passes; returns new tensors `(x0, x_next, net_in)`.

    `v` is the network output at the state `x` (both `(B, C, T, H, W)`); `x0_prev`, `x0_prev2` are the
    two previous x0 predictions (read only where their coefficient is nonzero); `cond_latent` holds the
    clean values of the frames where `cond_mask` `(B, T)` is nonzero (both None: no conditional frames).
    `coeffs` is a `(K, 8)` float64 table (see `reference.py` for its columns) and `step` a one-element
    integer tensor, both on x's device: the row is selected on the device, so no host sync happens and
    the call can be captured in a CUDA graph. x, x0_prev, x0_prev2 and cond_latent share the state dtype
    (x0 and x_next are returned in it); net_in has v's dtype.
    """
    x = _check_latent("x", x, None)
    v = _check_latent("v", v, x)
    x0_prev = _check_latent("x0_prev", x0_prev, x)
    x0_prev2 = _check_latent("x0_prev2", x0_prev2, x)
    if (cond_latent is None) != (cond_mask is None):
        raise ValueError(f"{OP}: cond_latent and cond_mask must both be given or both be None")
    if cond_latent is None:
        cond_latent = x
        cond_mask = torch.zeros(x.shape[0], x.shape[2], dtype=torch.float32, device=x.device)
    cond_latent = _check_latent("cond_latent", cond_latent, x)
    if not isinstance(cond_mask, torch.Tensor) or tuple(cond_mask.shape) != (x.shape[0], x.shape[2]):
        raise ValueError(f"{OP}: cond_mask must be a (B, T) = {(x.shape[0], x.shape[2])} tensor, got "
                         f"{tuple(getattr(cond_mask, 'shape', ())) or type(cond_mask).__name__}")
    for name, t in (("x0_prev", x0_prev), ("x0_prev2", x0_prev2), ("cond_latent", cond_latent)):
        if t.dtype != x.dtype:
            raise TypeError(f"{OP}: {name} has dtype {t.dtype} but x has {x.dtype}; they share the state dtype")
    if not isinstance(coeffs, torch.Tensor) or coeffs.dtype != torch.float64:
        raise TypeError(f"{OP}: coeffs must be a float64 tensor, got {getattr(coeffs, 'dtype', type(coeffs))}")
    if coeffs.dim() != 2 or coeffs.shape[0] < 1 or coeffs.shape[1] != reference.NUM_COLUMNS:
        raise ValueError(f"{OP}: coeffs must have shape (K >= 1, {reference.NUM_COLUMNS}), got {tuple(coeffs.shape)}")
    if not isinstance(step, torch.Tensor) or step.numel() != 1 or step.is_floating_point() or step.is_complex():
        raise TypeError(f"{OP}: step must be a one-element integer tensor, got "
                        f"{getattr(step, 'dtype', type(step))} of shape {tuple(getattr(step, 'shape', ()))}")
    device = _checks.check_same_device(OP, x=x, v=v, x0_prev=x0_prev, x0_prev2=x0_prev2, cond_latent=cond_latent,
                                       cond_mask=cond_mask, coeffs=coeffs, step=step)
    args = (v, x, x0_prev, x0_prev2, cond_latent, cond_mask, coeffs, step)
    if _dispatch.needs_autograd(v, x, x0_prev, x0_prev2, cond_latent):
        _dispatch.warn_autograd(OP)
        return reference.sampler_step(*args)
    wide = torch.float64 if torch.float64 in (x.dtype, v.dtype) else x.dtype
    name = _dispatch.resolve_backend(OP, device, backend, dtype=wide)
    if name == "reference" or x.numel() == 0:
        return reference.sampler_step(*args)
    _checks.check_backend_dtype(OP, name, x)
    _checks.check_backend_dtype(OP, name, v)
    mask = cond_mask if cond_mask.dtype == torch.float32 else cond_mask.to(torch.float32)
    x0, x_next, net_in = kernel_op(name)(
        _frames(v), _frames(x), _frames(x0_prev), _frames(x0_prev2), _frames(cond_latent), mask.contiguous(),
        coeffs.contiguous(), step.reshape(1).to(torch.int64))
    return x0.view(x.shape), x_next.view(x.shape), net_in.view(x.shape)


def kernel_op(backend: str):
    """The op overload of a kernel backend ("cpu", "cuda": the C++ op; "triton"): takes `(B, C, T, S)` views
    (see `frames`), a contiguous float32 `(B, T)` mask, the float64 table and a one-element int64 step."""
    if backend == "triton":
        return torch.ops.cosmos_kernels.sampler_step_triton.default
    return torch.ops.cosmos_kernels.sampler_step.default


frames = _frames


# -- run-time probes of the GPU backends ------------------------------------------------------------------

def _probe(backend: str):
    def run(device: torch.device) -> bool:
        gen = torch.Generator(device="cpu").manual_seed(0)
        shape = (1, 3, 4, 5, 8)
        lat = [torch.randn(shape, generator=gen).to(device) for _ in range(5)]
        mask = torch.tensor([[1.0, 0.0, 1.0, 0.0]], device=device)
        coeffs = torch.randn(3, reference.NUM_COLUMNS, generator=gen, dtype=torch.float64).to(device)
        step = torch.tensor([2], device=device)
        got = sampler_step(*lat, mask, coeffs, step, backend=backend)
        want = reference.sampler_step(*[t.double() for t in lat], mask, coeffs, step)
        return all(torch.allclose(g.double(), w, atol=1e-4, rtol=1e-4) for g, w in zip(got, want))
    return run


for _backend in ("cuda", "triton"):
    _dispatch.register_probe(OP, _backend, _probe(_backend))
