"""Public attention ops: input checks, backend choice, and the `torch.ops.cosmos_kernels` registrations.

`cosmos_kernels::qk_norm_rope` is the C++ op (CPU and CUDA kernels), `cosmos_kernels::qk_norm_rope_triton`
and `cosmos_kernels::attention_triton` are Triton custom ops. They take `(B, L, heads, head_dim)` tensors
with any strides whose last dim is contiguous (strided views of one packed QKV projection are read in
place), norm weights and RoPE tables in fp32 or None.

Attention backends: "triton" (our flash-attention forward with the norm and RoPE fused into the tile
loads), "flash_attn" (FA3 / FA4 / FA2 when importable, `flash.py`), "sdpa" (`qk_norm_rope`, then PyTorch's
scaled_dot_product_attention) and "reference". Automatic choice: "sdpa" on the CPU; on CUDA the usable
candidates are timed on the device once per (GPU, versions, shapes, norm, rope) at first eager use and the
fastest is kept, also on disk (`picker.py`). `COSMOS_KERNELS_DETERMINISTIC=1` replaces the timing with the
fixed choice "sdpa". An explicit
`backend` wins over `COSMOS_KERNELS_ATTENTION`, which wins over `COSMOS_KERNELS_BACKEND` (where that names
an attention backend, e.g. "reference" or "triton"), which wins over the automatic choice.
"""

from __future__ import annotations

import math
import os

import torch

from cosmos_kernels import _checks, _dispatch, _ext, picker
from cosmos_kernels.attention import flash, reference, sdpa
from cosmos_kernels.tools import dispatch_counter

_NS = "cosmos_kernels"
ATTENTION_ENV = "COSMOS_KERNELS_ATTENTION"
ATTENTION_BACKENDS = ("reference", "sdpa", "triton", "flash_attn")
QK_NORM_ROPE_BACKENDS = ("reference", "cpu", "cuda", "triton")
MAX_HEAD_DIM = 256


# -- Triton custom ops and fakes -------------------------------------------------------------------------

@torch.library.custom_op(f"{_NS}::qk_norm_rope_triton", mutates_args=())
def _qk_norm_rope_triton(
    q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor | None, k_weight: torch.Tensor | None,
    cos: torch.Tensor | None, sin: torch.Tensor | None, eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    from cosmos_kernels.attention import triton as triton_kernels  # Triton is optional

    return triton_kernels.qk_norm_rope(q, k, q_weight, k_weight, cos, sin, eps)


@torch.library.custom_op(f"{_NS}::attention_triton", mutates_args=())
def _attention_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_weight: torch.Tensor | None,
    k_weight: torch.Tensor | None, cos: torch.Tensor | None, sin: torch.Tensor | None, scale: float, eps: float,
    last_key_repeats: int,
) -> torch.Tensor:
    from cosmos_kernels.attention import triton as triton_kernels  # Triton is optional

    return triton_kernels.attention(q, k, v, q_weight, k_weight, cos, sin, scale, eps, last_key_repeats)


def _fake_qk(q: torch.Tensor, k: torch.Tensor, *args: object) -> tuple[torch.Tensor, torch.Tensor]:
    return q.new_empty(q.shape), k.new_empty(k.shape)


def _fake_attention(q: torch.Tensor, *args: object) -> torch.Tensor:
    return q.new_empty(q.shape)


_qk_norm_rope_triton.register_fake(_fake_qk)
_attention_triton.register_fake(_fake_attention)

if _ext.has_cpu_extension():
    torch.library.register_fake(f"{_NS}::qk_norm_rope")(_fake_qk)

# One kernel per call (q and k in one launch; attention with its norm and RoPE in its tile loads).
dispatch_counter.register_cost(f"{_NS}::qk_norm_rope", dispatch_counter.no_matrix_flops)
dispatch_counter.register_cost(f"{_NS}::qk_norm_rope_triton", dispatch_counter.no_matrix_flops)
# attention_triton: its kernel, plus one qk_norm_rope launch first when K is normalised or rotated.
dispatch_counter.register_cost(f"{_NS}::attention_triton", dispatch_counter.attention_flops,
                               launches=lambda q, k, v, qw, kw, cos, *a, **kw_: 1 + (kw is not None or cos is not None))


# -- checks -----------------------------------------------------------------------------------------------

def _check_qkv_tensor(op: str, name: str, t: object) -> torch.Tensor:
    _checks.check_float_tensor(op, name, t)
    if t.dim() != 4:
        raise ValueError(f"{op}: {name} must be (B, L, heads, head_dim), got shape {tuple(t.shape)}")
    return t


def _check_pair_like(op: str, name: str, t: torch.Tensor, q: torch.Tensor, *, same_length: bool) -> None:
    """`t` matches q in batch, heads and head_dim (and length if asked) and in dtype."""
    if t.dtype != q.dtype:
        raise TypeError(f"{op}: {name} has dtype {t.dtype} but q has {q.dtype}; q, k and v must share one dtype")
    dims = (0, 2, 3) if not same_length else (0, 1, 2, 3)
    names = {0: "batch size", 1: "length", 2: "heads", 3: "head_dim"}
    for dim in dims:
        if t.shape[dim] != q.shape[dim]:
            raise ValueError(f"{op}: {name} has {names[dim]} {t.shape[dim]} (shape {tuple(t.shape)}) but q has "
                             f"{q.shape[dim]} (shape {tuple(q.shape)})")


def _check_weights(op: str, q_name: str, k_name: str, qw, kw, head_dim: int, device: torch.device):
    """Each side's norm weight is optional on its own (cross-attention over cached, normalised keys)."""
    out = []
    for name, w in ((q_name, qw), (k_name, kw)):
        if w is None:
            out.append(None)
            continue
        _checks.check_float_tensor(op, name, w)
        if w.dim() != 1 or w.shape[0] != head_dim:
            raise ValueError(f"{op}: {name} must have shape ({head_dim},) to match head_dim, got {tuple(w.shape)}")
        if w.device != device:
            raise ValueError(f"{op}: {name} is on {w.device} but q is on {device}")
        out.append(w)
    return tuple(out)


def _check_tables(op: str, cos, sin, q: torch.Tensor, k: torch.Tensor):
    if (cos is None) != (sin is None):
        raise ValueError(f"{op}: the RoPE tables cos and sin must both be given or both be None")
    if cos is None:
        return None, None
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"{op}: RoPE tables apply to self-attention only: q has length {q.shape[1]} but k has "
                         f"{k.shape[1]} (pass no tables for cross-attention)")
    want = (q.shape[1], q.shape[3])
    for name, t in (("cos", cos), ("sin", sin)):
        _checks.check_float_tensor(op, name, t)
        if tuple(t.shape) != want:
            raise ValueError(f"{op}: RoPE table {name} must have shape (L, head_dim) = {want} to match q, got "
                             f"{tuple(t.shape)}")
        if t.device != q.device:
            raise ValueError(f"{op}: {name} is on {t.device} but q is on {q.device}")
    return cos, sin


def _check_head_dim_even(op: str, head_dim: int) -> None:
    if head_dim % 2 or not 2 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"{op}: head_dim must be even and at most {MAX_HEAD_DIM}, got {head_dim}")


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The kernels read (B, L, H, D) tensors with any strides but a contiguous last dim (copy otherwise)."""
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


def _fp32(t: torch.Tensor | None) -> torch.Tensor | None:
    """Norm weights and RoPE tables reach the kernels in fp32 (a no-op for fp32 tables)."""
    return None if t is None else _last_dim_contiguous(t.to(torch.float32))


# -- qk_norm_rope -------------------------------------------------------------------------------------------

def qk_norm_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor | None,
    k_weight: torch.Tensor | None,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
    eps: float = 1e-6,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head RMSNorm with weight, then the rotate-half RoPE, of q and k in one launch.

    q, k: `(B, L, heads, head_dim)`, possibly strided views of one packed QKV projection (read in place);
    k may be longer or shorter than q when no tables are given (cross-attention normalises q and k but
    rotates neither). `q_weight`, `k_weight`: `(head_dim,)` or None (that side is not normalised). `cos`, `sin`:
    `(L, head_dim)` tables (see `rope_3d_tables`) or both None (no RoPE). Computed in fp32; returns new
    tensors `(q_out, k_out)` in q's dtype.
    """
    op = "qk_norm_rope"
    _check_qkv_tensor(op, "q", q)
    _check_qkv_tensor(op, "k", k)
    device = _checks.check_same_device(op, q=q, k=k)
    _check_pair_like(op, "k", k, q, same_length=False)
    _check_head_dim_even(op, q.shape[3])
    q_weight, k_weight = _check_weights(op, "q_weight", "k_weight", q_weight, k_weight, q.shape[3], device)
    cos, sin = _check_tables(op, cos, sin, q, k)
    if _dispatch.needs_autograd(q, k, q_weight, k_weight, cos, sin):
        _dispatch.warn_autograd(op)
        return reference.qk_norm_rope(q, k, q_weight, k_weight, cos, sin, eps)
    name = _dispatch.resolve_backend(op, device, backend, supported=QK_NORM_ROPE_BACKENDS, dtype=q.dtype)
    if name == "reference":
        return reference.qk_norm_rope(q, k, q_weight, k_weight, cos, sin, eps)
    _checks.check_backend_dtype(op, name, q)
    return _qk_norm_rope_kernel(name, q, k, q_weight, k_weight, cos, sin, eps)


def _qk_norm_rope_kernel(name, q, k, q_weight, k_weight, cos, sin, eps, *, k_out: bool = True):
    """One launch. The C++ kernels normalise both sides or neither: a one-sided norm without tables runs them on
    the normalised side alone (the other side a zero-length view); `k_out=False` returns k itself then (the
    attention path reads it as it is). A one-sided norm with tables there is the reference's job."""
    q, k = _last_dim_contiguous(q), _last_dim_contiguous(k)
    args = (_fp32(q_weight), _fp32(k_weight), _fp32(cos), _fp32(sin), float(eps))
    if name == "triton":
        return torch.ops.cosmos_kernels.qk_norm_rope_triton.default(q, k, *args)
    fn = torch.ops.cosmos_kernels.qk_norm_rope.default
    if (q_weight is None) == (k_weight is None):
        return fn(q, k, *args)
    if cos is not None:
        return reference.qk_norm_rope(q, k, q_weight, k_weight, cos, sin, eps)
    if q_weight is not None:
        w = args[0]
        q_out = fn(q, k[:, :0], w, w, None, None, args[4])[0]
        return q_out, k.clone() if k_out else k
    w = args[1]
    k_norm = fn(k[:, :0], k, w, w, None, None, args[4])[1]
    return q.clone(), k_norm


# -- attention ---------------------------------------------------------------------------------------------

def _flash_attn_func():
    """The flash-attn library's `flash_attn_func` the "flash_attn" backend calls (FA3, FA4, FA2), or None."""
    return flash.flash_attn_func()


def _backend_usable(name: str, q: torch.Tensor, repeats: int = 1) -> bool:
    if name in ("reference", "sdpa"):
        return True
    if name == "triton":
        return _dispatch.triton_available(q.device)
    if name == "flash_attn":  # a repeated last key is corrected from the log-sum-exp the call returns
        return (q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16)
                and _flash_attn_func() is not None)
    return False


def _resolve_attention_backend(requested: str | None, q: torch.Tensor, repeats: int = 1) -> str | None:
    """explicit > COSMOS_KERNELS_ATTENTION > COSMOS_KERNELS_BACKEND (when it names an attention backend) > auto."""
    op = "attention"
    if requested is not None and requested != "auto":
        if requested not in ATTENTION_BACKENDS:
            raise ValueError(f"{op}: backend must be one of {ATTENTION_BACKENDS} or None, got {requested!r}")
        if not _backend_usable(requested, q, repeats):
            why = {"triton": " (Triton on CPU tensors needs TRITON_INTERPRET=1)",
                   "flash_attn": " (needs a flash-attn library, a CUDA device and fp16 / bf16 tensors)"}
            raise ValueError(f"{op}: backend {requested!r} is not available for {q.dtype} tensors on {q.device}"
                             + why.get(requested, ""))
        return requested
    for env_var in (ATTENTION_ENV, _dispatch.BACKEND_ENV):
        pinned = os.environ.get(env_var, "").strip().lower()
        if pinned in ("", "auto") or (env_var == _dispatch.BACKEND_ENV and pinned not in ATTENTION_BACKENDS):
            continue  # the package-wide pin counts only where it names an attention backend ("reference", ...)
        if pinned in ATTENTION_BACKENDS and _backend_usable(pinned, q, repeats):
            return pinned
        _dispatch.warn_once(f"{env_var}={pinned}:{q.device.type}:{q.dtype}",
                            f"{env_var}={pinned!r} is not usable for attention on {q.dtype} tensors on "
                            f"{q.device}; using the automatic choice")
        break
    return None


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    q_norm_weight: torch.Tensor | None = None,
    k_norm_weight: torch.Tensor | None = None,
    rope_cos: torch.Tensor | None = None,
    rope_sin: torch.Tensor | None = None,
    norm_eps: float = 1e-6,
    last_key_repeats: int = 1,
    backend: str | None = None,
) -> torch.Tensor:
    """Non-causal softmax attention, `(B, Lq, heads, d)` over `(B, Lk, heads, d)` -> `(B, Lq, heads, d)`.

    `Lq != Lk` is allowed (cross-attention). head_dim: a multiple of 16 up to 256 (64, 96, 128, ...);
    fp32, bf16, fp16. With norm weights (`(d,)`, each side's or None) and / or RoPE tables (`(L, d)`, both or
    neither, self-attention only) q and k first go through `qk_norm_rope`; the "triton" backend fuses the Q
    side into its tile loads. `last_key_repeats=n` makes the last key and value row stand for n equal rows
    (exact: the zero padding of a text embedding attends as one zero row with count n; "sdpa" adds a score bias in
    q's dtype whose last-key-minus-others difference is log(n) beyond q's precision (`sdpa.py`), "triton" adds
    log2(n) in fp32, "flash_attn", which takes no bias, corrects its output from the returned log-sum-exp).
    `scale` defaults to `1 / sqrt(d)`. Returns a new tensor in q's dtype. `attention_fp8` writes the output as
    e4m3 values with a scale per (token, head) instead.
    """
    qw, kw, cos, sin, scale, eps, repeats = check_attention_inputs(
        "attention", q, k, v, scale, q_norm_weight, k_norm_weight, rope_cos, rope_sin, norm_eps, last_key_repeats)
    if _dispatch.needs_autograd(q, k, v, qw, kw, cos, sin):
        _dispatch.warn_autograd("attention")
        return reference.attention(q, k, v, scale=scale, q_norm_weight=qw, k_norm_weight=kw, rope_cos=cos,
                                   rope_sin=sin, norm_eps=eps, last_key_repeats=repeats)
    name = _resolve_attention_backend(backend, q, repeats)
    if name is None:
        name = picker.auto_backend(run_backend, auto_candidates, q, k, v, qw, kw, cos, sin, scale, eps, repeats)
    if name not in ("reference", "sdpa"):
        _checks.check_backend_dtype("attention", name, q)
    return run_backend(name, q, k, v, qw, kw, cos, sin, scale, eps, repeats)


def check_attention_inputs(op: str, q, k, v, scale, q_norm_weight, k_norm_weight, rope_cos, rope_sin, norm_eps,
                           last_key_repeats) -> tuple:
    """Every check of an attention call, each failure naming its argument: `(q_norm_weight, k_norm_weight, rope_cos,
    rope_sin, scale, eps, last_key_repeats)` ready for a backend (the scale defaulted to `1 / sqrt(d)`)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_qkv_tensor(op, name, t)
    device = _checks.check_same_device(op, q=q, k=k, v=v)
    _check_pair_like(op, "k", k, q, same_length=False)
    _check_pair_like(op, "v", v, q, same_length=False)
    if v.shape[1] != k.shape[1]:
        raise ValueError(f"{op}: v has length {v.shape[1]} but k has {k.shape[1]} (shapes {tuple(v.shape)}, "
                         f"{tuple(k.shape)})")
    head_dim = q.shape[3]
    if head_dim % 16 or not 16 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"{op}: unsupported head_dim {head_dim}; supported: multiples of 16 up to {MAX_HEAD_DIM} "
                         "(64, 96, 128, ...)")
    qw, kw = _check_weights(op, "q_norm_weight", "k_norm_weight", q_norm_weight, k_norm_weight, head_dim, device)
    cos, sin = _check_tables(op, rope_cos, rope_sin, q, k)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    eps = float(norm_eps)
    return qw, kw, cos, sin, scale, eps, _check_repeats(op, last_key_repeats, k)


def _check_repeats(op: str, repeats: object, k: torch.Tensor) -> int:
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"{op}: last_key_repeats must be an int >= 1, got {repeats!r}")
    if repeats > 1 and k.shape[1] == 0:
        raise ValueError(f"{op}: last_key_repeats={repeats} needs at least one key, got k of shape {tuple(k.shape)}")
    return repeats


def run_backend(name: str, q, k, v, qw, kw, cos, sin, scale: float, eps: float, repeats: int = 1) -> torch.Tensor:
    """Run one attention backend on checked inputs."""
    if name == "reference" or (q.dtype not in _checks.KERNEL_DTYPES and name != "sdpa"):
        return reference.attention(q, k, v, scale=scale, q_norm_weight=qw, k_norm_weight=kw, rope_cos=cos,
                                   rope_sin=sin, norm_eps=eps, last_key_repeats=repeats)
    if name == "triton":
        return torch.ops.cosmos_kernels.attention_triton.default(*triton_operands(q, k, v, qw, kw, cos, sin),
                                                                 scale, eps, repeats)
    if qw is not None or kw is not None or cos is not None:
        if q.dtype in _checks.KERNEL_DTYPES:
            backend = _dispatch.resolve_backend("qk_norm_rope", q.device, None, supported=QK_NORM_ROPE_BACKENDS,
                                                dtype=q.dtype)
            if backend != "reference":
                q, k = _qk_norm_rope_kernel(backend, q, k, qw, kw, cos, sin, eps, k_out=False)
            else:
                q, k = reference.qk_norm_rope(q, k, qw, kw, cos, sin, eps)
        else:
            q, k = reference.qk_norm_rope(q, k, qw, kw, cos, sin, eps)
    if name == "flash_attn":
        out = flash.attention(q, k, v, scale, repeats)
        if out is not None:
            return out
        # a build that returns no log-sum-exp: the repeated last key goes through SDPA's bias instead
    return sdpa.attention(q, k, v, scale, repeats)


def triton_operands(q, k, v, qw, kw, cos, sin) -> tuple:
    """The Triton kernels' operands: q, k, v with a contiguous last dim (copied otherwise), weights and tables fp32."""
    return (*(_last_dim_contiguous(t) for t in (q, k, v)), *(_fp32(t) for t in (qw, kw, cos, sin)))


# -- automatic choice (timing and its disk cache live in picker.py) ---------------------------------------------

DETERMINISTIC_CHOICE = picker.DETERMINISTIC_CHOICE
chosen_backends = picker.chosen_backends


def auto_candidates(q: torch.Tensor, repeats: int = 1) -> list[str]:
    """The backends auto considers for these tensors, in the order they are timed: the Triton kernel only once
    its run-time probe has passed on this device."""
    if not _dispatch.as_cuda(q.device) or q.dtype not in _checks.KERNEL_DTYPES:
        return ["sdpa"]
    out = []
    for name in ("triton", "flash_attn", "sdpa"):
        if _backend_usable(name, q, repeats) and (name != "triton"
                                                 or _dispatch.probe_passed("attention", name, q.device)):
            out.append(name)
    return out
