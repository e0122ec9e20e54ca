"""Public VAE norm ops: input checks, backend choice, and the `torch.ops.cosmos_kernels` registrations.

Backends: "cpu" is a vectorised PyTorch evaluation in four passes over the activations (norm over C, scale, affine,
SiLU in place; diffusers' module takes about eight), "triton" the kernel of `triton.py` (GPUs, and CPU tensors
through the interpreter), "reference" the specification. Outputs follow the input's layout (channels-last-3d in,
channels-last-3d out; anything else in, contiguous out).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cosmos_kernels import _checks, _dispatch
from cosmos_kernels.tools import dispatch_counter
from cosmos_kernels.vae_norm import layout, reference

_NS = "cosmos_kernels"
BACKENDS = ("reference", "cpu", "triton")


def _triton_kernels():
    from cosmos_kernels.vae_norm import triton as kernels

    return kernels


def _cpu(x: torch.Tensor, gamma: torch.Tensor, bias: torch.Tensor | None, eps: float,
         residual: torch.Tensor | None = None):
    s = None
    if residual is not None:
        s = layout.empty_like_layout(x)
        torch.add(x, residual, out=s)
        x = s
    per_channel = (1, x.shape[1], 1, 1, 1)
    xf = x.float()
    inv = torch.linalg.vector_norm(xf, dim=1, keepdim=True).clamp_min_(eps).reciprocal_().mul_(x.shape[1] ** 0.5)
    out = layout.empty_like_layout(x)
    y = torch.mul(xf, inv, out=out) if x.dtype == torch.float32 else xf * inv
    y.mul_(gamma.float().view(per_channel))
    if bias is not None:
        y.add_(bias.float().view(per_channel))
    F.silu(y, inplace=True)
    if y is not out:
        out.copy_(y)
    return out if s is None else (s, out)


@torch.library.custom_op(f"{_NS}::channel_rms_norm_silu", mutates_args=(), device_types="cpu")
def _norm_cpu(x: torch.Tensor, gamma: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    return _cpu(x, gamma, bias, eps)


@torch.library.custom_op(f"{_NS}::residual_channel_rms_norm_silu", mutates_args=(), device_types="cpu")
def _residual_norm_cpu(x: torch.Tensor, residual: torch.Tensor, gamma: torch.Tensor, bias: torch.Tensor | None,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _cpu(x, gamma, bias, eps, residual)


@torch.library.custom_op(f"{_NS}::channel_rms_norm_silu_triton", mutates_args=())
def _norm_triton(x: torch.Tensor, gamma: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    return _triton_kernels().channel_rms_norm_silu(x, gamma, bias, eps)


@torch.library.custom_op(f"{_NS}::residual_channel_rms_norm_silu_triton", mutates_args=())
def _residual_norm_triton(x: torch.Tensor, residual: torch.Tensor, gamma: torch.Tensor, bias: torch.Tensor | None,
                          eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _triton_kernels().channel_rms_norm_silu(x, gamma, bias, eps, residual)


def _fake(x: torch.Tensor, *args: object) -> torch.Tensor:
    return layout.fake_like_layout(x)


def _fake_residual(x: torch.Tensor, *args: object) -> tuple[torch.Tensor, torch.Tensor]:
    return layout.fake_like_layout(x), layout.fake_like_layout(x)


for _op, _f in ((_norm_cpu, _fake), (_residual_norm_cpu, _fake_residual), (_norm_triton, _fake),
                (_residual_norm_triton, _fake_residual)):
    _op.register_fake(_f)
for _name in ("channel_rms_norm_silu", "residual_channel_rms_norm_silu"):
    for _suffix in ("", "_triton"):
        dispatch_counter.register_cost(f"{_NS}::{_name}{_suffix}", dispatch_counter.no_matrix_flops)

_OPS = {("channel_rms_norm_silu", "cpu"): _norm_cpu, ("channel_rms_norm_silu", "triton"): _norm_triton,
        ("residual_channel_rms_norm_silu", "cpu"): _residual_norm_cpu,
        ("residual_channel_rms_norm_silu", "triton"): _residual_norm_triton}


def _check(op: str, x: object, gamma: object, bias: object, residual: object = None) -> None:
    _checks.check_float_tensor(op, "x", x)
    if x.dim() != 5:
        raise ValueError(f"{op}: x must be (B, C, T, H, W), got shape {tuple(x.shape)}")
    c = x.shape[1]
    _checks.check_hidden_size(op, "x", c)
    _checks.check_float_tensor(op, "gamma", gamma)
    if gamma.shape != (c,):
        raise ValueError(f"{op}: gamma must have shape ({c},) to match x's channels, got {tuple(gamma.shape)}")
    if bias is not None:
        _checks.check_float_tensor(op, "bias", bias)
        if bias.shape != (c,):
            raise ValueError(f"{op}: bias must have shape ({c},) to match x's channels, got {tuple(bias.shape)}")
    if residual is not None:
        _checks.check_float_tensor(op, "residual", residual)
        if residual.shape != x.shape:
            raise ValueError(f"{op}: residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
        if residual.dtype != x.dtype:
            raise TypeError(f"{op}: residual has dtype {residual.dtype} but x has {x.dtype}")
    _checks.check_same_device(op, x=x, gamma=gamma, bias=bias, residual=residual)


def _run(op: str, backend: str | None, x, gamma, bias, eps, residual=None):
    _check(op, x, gamma, bias, residual)
    operands = (x, gamma, bias, residual)
    ref_args = (x, gamma, bias, eps) if residual is None else (x, residual, gamma, bias, eps)
    ref = getattr(reference, op)
    if _dispatch.needs_autograd(*operands):
        _dispatch.warn_autograd(op)
        return ref(*ref_args)
    name = _dispatch.resolve_backend(op, x.device, backend, supported=BACKENDS, cuda_order=("triton",),
                                     dtype=x.dtype)
    if name == "reference" or x.numel() == 0:
        return ref(*ref_args)
    _checks.check_backend_dtype(op, name, x)
    return _OPS[(op, name)](*ref_args[:-1], float(eps))


def channel_rms_norm_silu(x: torch.Tensor, gamma: torch.Tensor, bias: torch.Tensor | None = None,
                          eps: float = reference.EPS, *, backend: str | None = None) -> torch.Tensor:
    """`silu(x / max(||x||_2 over C, eps) * sqrt(C) * gamma + bias)` for `x` (B, C, T, H, W), `gamma` and `bias`
    `(C,)`: diffusers' `WanRMS_norm` (channel-first) followed by SiLU, in one pass. Returns a new tensor in `x`'s
    layout (channels-last-3d stays channels-last-3d)."""
    return _run("channel_rms_norm_silu", backend, x, gamma, bias, eps)


def residual_channel_rms_norm_silu(x: torch.Tensor, residual: torch.Tensor, gamma: torch.Tensor,
                                   bias: torch.Tensor | None = None, eps: float = reference.EPS, *,
                                   backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`s = x + residual` and `channel_rms_norm_silu(s, gamma, bias, eps)` in one pass; returns `(s, normed)`,
    `normed` computed from the rounded `s`."""
    return _run("residual_channel_rms_norm_silu", backend, x, gamma, bias, eps, residual)


def _register_probes() -> None:
    def inputs(gen):
        return [torch.randn(2, 96, 3, 5, 7, generator=gen), torch.rand(96, generator=gen) + 0.5,
                torch.randn(96, generator=gen)]

    def check(device: torch.device) -> bool:
        gen = torch.Generator(device="cpu").manual_seed(0)
        x, g, b = (t.to(device) for t in inputs(gen))
        got = channel_rms_norm_silu(x, g, b, backend="triton")
        s, got2 = residual_channel_rms_norm_silu(x, x, g, None, backend="triton")
        want = reference.channel_rms_norm_silu(x.double(), g.double(), b.double())
        want2 = reference.channel_rms_norm_silu((2 * x).double(), g.double())
        return bool(torch.allclose(got.double(), want, atol=1e-4, rtol=1e-4)
                    and torch.equal(s, 2 * x) and torch.allclose(got2.double(), want2, atol=1e-4, rtol=1e-4))

    for op in ("channel_rms_norm_silu", "residual_channel_rms_norm_silu"):
        _dispatch.register_probe(op, "triton", check)


_register_probes()
