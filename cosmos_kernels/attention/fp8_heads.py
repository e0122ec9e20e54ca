"""What the FP8 GEMMs whose output is split in attention heads share: the argument checks (each error naming its
argument), the head widths their Triton kernel (`fp8_qkv_triton.py`) computes, the choice of backend, and their FLOP
count.

A weight of `sections * num_heads * head_dim` rows: `fp8_linear_qk_norm_rope` packs `[q; k; v]` (three sections),
`fp8_linear_head_norm` one section of normed heads.
"""

from __future__ import annotations

import torch

from cosmos_kernels import _checks, _dispatch
from cosmos_kernels.fp8.ops import OUT_DTYPES
from cosmos_kernels.fp8.reference import E4M3

MIN_HALF, MAX_HEAD_DIM = 16, 256  # the kernel's limits (fp8_qkv_triton.py, which needs Triton to import)


def check_tensor(op: str, name: str, t: object, dtype: torch.dtype, ndim: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise TypeError(f"{op}: {name} must be {str(dtype)[6:]}, got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{op}: {name} must have {ndim} dimensions, got shape {tuple(t.shape)}")


def check_gemm(op: str, x: object, x_scale: object, weight: object, weight_scale: object, num_heads: object,
               out_dtype: object, sections: int) -> int:
    """The GEMM's operands, `num_heads` and `out_dtype`; returns the head dim, `weight rows / (sections *
    num_heads)`."""
    check_tensor(op, "x", x, E4M3, 3)
    check_tensor(op, "weight", weight, E4M3, 2)
    check_tensor(op, "x_scale", x_scale, torch.float32, 3)
    if not isinstance(weight_scale, torch.Tensor) or weight_scale.dtype != torch.float32:
        check_tensor(op, "weight_scale", weight_scale, torch.float32, 2)
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"{op}: num_heads must be an int >= 1, got {num_heads!r}")
    if out_dtype not in OUT_DTYPES:
        raise TypeError(f"{op}: out_dtype must be bfloat16, float16 or float32, got {out_dtype}")
    b, seq, k = x.shape
    n = weight.shape[0]
    if weight.shape[1] != k:
        raise ValueError(f"{op}: weight has shape {tuple(weight.shape)}, its in_features must be x's last dimension "
                         f"{k}")
    if n == 0 or n % (sections * num_heads):
        layout = "3 * num_heads * head_dim ([q; k; v], " if sections == 3 else "num_heads * head_dim ("
        raise ValueError(f"{op}: weight has {n} rows, which must be {layout}num_heads={num_heads})")
    if tuple(x_scale.shape) != (b, seq, 1):
        raise ValueError(f"{op}: x_scale must have shape {(b, seq, 1)} (one scale per row of x), got "
                         f"{tuple(x_scale.shape)}")
    if weight_scale.numel() != n or weight_scale.dim() > 2:
        raise ValueError(f"{op}: weight_scale must hold one scale per output channel, shape ({n},) or ({n}, 1), got "
                         f"{tuple(weight_scale.shape)}")
    return n // (sections * num_heads)


def check_norm_weight(op: str, name: str, w: object, head_dim: int) -> None:
    _checks.check_float_tensor(op, name, w)
    if tuple(w.shape) != (head_dim,):
        raise ValueError(f"{op}: {name} must have shape ({head_dim},) (the head dim), got {tuple(w.shape)}")


def kernel_unsupported_reason(head_dim: int) -> str | None:
    """Why the Triton kernel cannot compute heads of `head_dim`, or None."""
    if head_dim % 2:
        return f"head_dim {head_dim} is odd (the kernel computes each head as two halves)"
    if head_dim // 2 < MIN_HALF:
        return f"head_dim {head_dim} is below {2 * MIN_HALF} (each half of a head is one tl.dot, at least 16 wide)"
    if head_dim > MAX_HEAD_DIM:
        return f"head_dim {head_dim} is above {MAX_HEAD_DIM}"
    return None


def choose_backend(op: str, device: torch.device, backend: str | None, head_dim: int,
                   supported: tuple[str, ...]) -> str:
    """The backend that runs heads of `head_dim`: the resolved one, or "reference" where the Triton kernel cannot
    compute them (an error when `backend="triton"` was asked for)."""
    name = _dispatch.resolve_backend(op, device, backend, supported=supported, cuda_order=("triton",))
    why = kernel_unsupported_reason(head_dim) if name == "triton" else None
    if why is not None:
        if backend == "triton":
            raise ValueError(f"{op}: backend 'triton' cannot run these heads: {why}")
        name = "reference"
    return name


def channel_scales(weight_scale: torch.Tensor) -> torch.Tensor:
    """The weight's channel scales as the kernel reads them: one contiguous row of fp32 values."""
    ws = weight_scale.reshape(-1)
    return ws if ws.is_contiguous() else ws.contiguous()


def gemm_flops(x: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, *args: object, out: object = None,
               **kwargs: object) -> int:
    """2 * M * N * K: the matrix FLOPs of `x (B, L, K) @ weight (N, K)^T` (the epilogue's are not matrix work)."""
    return 2 * x.shape[0] * x.shape[1] * weight.shape[0] * weight.shape[1]


def as_fp32(t: torch.Tensor | None) -> torch.Tensor | None:
    """A contiguous fp32 copy (or t itself when it is one already), as the kernel reads norm weights and tables."""
    return None if t is None else t.to(torch.float32).contiguous()
