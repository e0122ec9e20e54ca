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
         residual: torch.Tensor | None = None, out: torch.Tensor | None = None):
    s = None
    if residual is not None:
        s = layout.empty_like_layout(x)
        torch.add(x, residual, out=s)
        x = s
    per_channel = (1, x.shape[1], 1, 1, 1)
    xf = x.float()
    inv = torch.linalg.vector_norm(xf, dim=1, keepdim=True).clamp_min_(eps).reciprocal_().mul_(x.shape[1] ** 0.5)
    out = layout.empty_like_layout(x) if out is None else out
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


@torch.library.custom_op(f"{_NS}::causal_channel_rms_norm_silu", mutates_args=(), device_types="cpu")
def _causal_norm_cpu(x: torch.Tensor, gamma: torch.Tensor, bias: torch.Tensor | None, eps: float,
                     past: torch.Tensor | None, past_frames: int) -> torch.Tensor:
    window = layout.empty_like_layout(x, past_frames)
    _cpu(x, gamma, bias, eps, out=layout.fill_past(window, past, past_frames))
    return window


@torch.library.custom_op(f"{_NS}::causal_channel_rms_norm_silu_triton", mutates_args=())
def _causal_norm_triton(x: torch.Tensor, gamma: torch.Tensor, bias: torch.Tensor | None, eps: float,
                        past: torch.Tensor | None, past_frames: int) -> torch.Tensor:
    window = layout.empty_like_layout(x, past_frames)
    _triton_kernels().channel_rms_norm_silu(x, gamma, bias, eps, out=layout.fill_past(window, past, past_frames))
    return window


@torch.library.custom_op(f"{_NS}::residual_causal_channel_rms_norm_silu", mutates_args=(), device_types="cpu")
def _residual_causal_norm_cpu(x: torch.Tensor, residual: torch.Tensor, gamma: torch.Tensor, bias: torch.Tensor | None,
                              eps: float, past: torch.Tensor | None,
                              past_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    window = layout.empty_like_layout(x, past_frames)
    s, _ = _cpu(x, gamma, bias, eps, residual, out=layout.fill_past(window, past, past_frames))
    return s, window


@torch.library.custom_op(f"{_NS}::residual_causal_channel_rms_norm_silu_triton", mutates_args=())
def _residual_causal_norm_triton(x: torch.Tensor, residual: torch.Tensor, gamma: torch.Tensor,
                                 bias: torch.Tensor | None, eps: float, past: torch.Tensor | None,
                                 past_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    window = layout.empty_like_layout(x, past_frames)
    s, _ = _triton_kernels().channel_rms_norm_silu(x, gamma, bias, eps, residual,
                                                   out=layout.fill_past(window, past, past_frames))
    return s, window


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


def _fake_causal(x: torch.Tensor, gamma, bias, eps, past, past_frames: int) -> torch.Tensor:
    return layout.fake_like_layout(x, past_frames)


def _fake_residual_causal(x: torch.Tensor, residual, gamma, bias, eps, past,
                          past_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    return layout.fake_like_layout(x), layout.fake_like_layout(x, past_frames)


def _residual_causal_launches(x, residual, gamma, bias, eps, past, past_frames, *, out) -> int:
    return _causal_launches(x, gamma, bias, eps, past, past_frames, out=out)


def _causal_launches(x, gamma, bias, eps, past, past_frames, *, out) -> int:
    """The norm kernel, plus the zero fill and the copy of the past frames where there are any."""
    have = 0 if past is None else past.shape[2]
    return 1 + (past_frames > have) + (have > 0)


for _op, _f in ((_norm_cpu, _fake), (_residual_norm_cpu, _fake_residual), (_norm_triton, _fake),
                (_residual_norm_triton, _fake_residual), (_causal_norm_cpu, _fake_causal),
                (_causal_norm_triton, _fake_causal), (_residual_causal_norm_cpu, _fake_residual_causal),
                (_residual_causal_norm_triton, _fake_residual_causal)):
    _op.register_fake(_f)
for _name in ("channel_rms_norm_silu", "residual_channel_rms_norm_silu"):
    for _suffix in ("", "_triton"):
        dispatch_counter.register_cost(f"{_NS}::{_name}{_suffix}", dispatch_counter.no_matrix_flops)
for _suffix in ("", "_triton"):
    dispatch_counter.register_cost(f"{_NS}::causal_channel_rms_norm_silu{_suffix}", dispatch_counter.no_matrix_flops,
                                   launches=_causal_launches)
    dispatch_counter.register_cost(f"{_NS}::residual_causal_channel_rms_norm_silu{_suffix}",
                                   dispatch_counter.no_matrix_flops, launches=_residual_causal_launches)

_OPS = {("channel_rms_norm_silu", "cpu"): _norm_cpu, ("channel_rms_norm_silu", "triton"): _norm_triton,
        ("residual_channel_rms_norm_silu", "cpu"): _residual_norm_cpu,
        ("residual_channel_rms_norm_silu", "triton"): _residual_norm_triton,
        ("causal_channel_rms_norm_silu", "cpu"): _causal_norm_cpu,
        ("causal_channel_rms_norm_silu", "triton"): _causal_norm_triton,
        ("residual_causal_channel_rms_norm_silu", "cpu"): _residual_causal_norm_cpu,
        ("residual_causal_channel_rms_norm_silu", "triton"): _residual_causal_norm_triton}


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


def _check_past(op: str, x: torch.Tensor, past: object, past_frames: object) -> None:
    if not isinstance(past_frames, int) or isinstance(past_frames, bool) or past_frames < 0:
        raise ValueError(f"{op}: past_frames must be an int >= 0, got {past_frames!r}")
    if past is None:
        return
    _checks.check_float_tensor(op, "past", past)
    b, c, _, h, w = x.shape
    if past.dim() != 5 or (past.shape[0], past.shape[1], past.shape[3], past.shape[4]) != (b, c, h, w):
        raise ValueError(f"{op}: past must be (B, C, t, H, W) = ({b}, {c}, t, {h}, {w}) to match x, got shape "
                         f"{tuple(past.shape)}")
    if past.shape[2] > past_frames:
        raise ValueError(f"{op}: past has {past.shape[2]} frames, more than past_frames={past_frames}")
    if past.dtype != x.dtype:
        raise TypeError(f"{op}: past has dtype {past.dtype} but x has {x.dtype}")
    _checks.check_same_device(op, x=x, past=past)


def _run(op: str, backend: str | None, x, gamma, bias, eps, residual=None, past=None, past_frames=None):
    _check(op, x, gamma, bias, residual)
    causal = past_frames is not None
    if causal:
        _check_past(op, x, past, past_frames)
    operands = (x, gamma, bias, residual, past)
    if causal:
        head = (x, gamma) if residual is None else (x, residual, gamma)
        ref_args, tail = (*head, bias, eps, past, past_frames), (past, past_frames)
    else:
        ref_args, tail = ((x, gamma, bias, eps) if residual is None else (x, residual, gamma, bias, eps)), ()
    ref = getattr(reference, op)
    if _dispatch.needs_autograd(*operands):
        _dispatch.warn_autograd(op)
        return ref(*ref_args)
    name = _dispatch.resolve_backend(op, x.device, backend, supported=BACKENDS, cuda_order=("triton",),
                                     dtype=x.dtype)
    if name == "reference" or x.numel() == 0:
        return ref(*ref_args)
    _checks.check_backend_dtype(op, name, x)
    head = ref_args[: len(ref_args) - len(tail) - 1]
    return _OPS[(op, name)](*head, float(eps), *tail)


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


def causal_channel_rms_norm_silu(x: torch.Tensor, gamma: torch.Tensor, bias: torch.Tensor | None = None,
                                 eps: float = reference.EPS, past: torch.Tensor | None = None, past_frames: int = 0,
                                 *, backend: str | None = None) -> torch.Tensor:
    """`channel_rms_norm_silu` written into the time window a causal conv reads: returns (B, C, past_frames + T,
    H, W), the first frames zeros and then `past` (B, C, t, H, W) with t <= `past_frames` (the feature cache of
    the previous chunk), the rest the normed `x`. Replaces norm, `torch.cat` and `F.pad` (one write of the
    activations instead of three); layout as `channel_rms_norm_silu`."""
    return _run("causal_channel_rms_norm_silu", backend, x, gamma, bias, eps, past=past, past_frames=past_frames)


def residual_causal_channel_rms_norm_silu(x: torch.Tensor, residual: torch.Tensor, gamma: torch.Tensor,
                                          bias: torch.Tensor | None = None, eps: float = reference.EPS,
                                          past: torch.Tensor | None = None, past_frames: int = 0, *,
                                          backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`s = x + residual` and `causal_channel_rms_norm_silu(s, gamma, bias, eps, past, past_frames)` in one pass;
    returns `(s, window)` (`s` in `x`'s layout, the normed frames computed from the rounded `s`): a residual sum
    fused into the norm that reads it next, which also writes it for whoever needs it after (a shortcut)."""
    return _run("residual_causal_channel_rms_norm_silu", backend, x, gamma, bias, eps, residual, past=past,
                past_frames=past_frames)


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
        window = causal_channel_rms_norm_silu(x, g, b, past=x[:, :, :1], past_frames=2, backend="triton")
        s3, window3 = residual_causal_channel_rms_norm_silu(x, x, g, None, past=None, past_frames=1,
                                                            backend="triton")
        return bool(torch.allclose(got.double(), want, atol=1e-4, rtol=1e-4)
                    and torch.equal(s, 2 * x) and torch.allclose(got2.double(), want2, atol=1e-4, rtol=1e-4)
                    and torch.equal(window[:, :, :2], torch.cat([torch.zeros_like(x[:, :, :1]), x[:, :, :1]], 2))
                    and torch.allclose(window[:, :, 2:].double(), want, atol=1e-4, rtol=1e-4)
                    and torch.equal(s3, 2 * x) and not window3[:, :, :1].any()
                    and torch.allclose(window3[:, :, 1:].double(), want2, atol=1e-4, rtol=1e-4))

    for op in ("channel_rms_norm_silu", "residual_channel_rms_norm_silu", "causal_channel_rms_norm_silu",
               "residual_causal_channel_rms_norm_silu"):
        _dispatch.register_probe(op, "triton", check)


_register_probes()
