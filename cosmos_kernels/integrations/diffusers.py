"""Drop-in cosmos_kernels for diffusers' video transformers: `apply_cosmos_kernels(model)`.

Supported: `CosmosTransformer3DModel` (Cosmos-Predict2 / 2.5, `diffusers_cosmos.py`) and `WanTransformer3DModel`
(Wan 2.1 / 2.2, `diffusers_wan.py`). The patch swaps, in place, the classes of the transformer blocks (a subclass
whose `forward` calls the fused adaptive-norm ops) and the attention processors (ours call the attention ops);
parameters, buffers and state-dict keys are never touched, so `remove_cosmos_kernels` restores the original
modules bit-exactly. Everything is decided before the first swap: a refused model is left as it was.

```python
from cosmos_kernels.integrations.diffusers import apply_cosmos_kernels

summary = apply_cosmos_kernels(transformer)   # what was patched, what was left alone and why
print(summary)
```
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import cosmos_kernels as ck
from cosmos_kernels import _checks
from cosmos_kernels.attention.ops import ATTENTION_BACKENDS, MAX_HEAD_DIM

__all__ = ["KernelOptions", "PatchSummary", "apply_cosmos_kernels", "is_patched", "remove_cosmos_kernels"]

OP_BACKENDS = ("reference", "cpu", "cuda", "triton")


@dataclass(frozen=True)
class KernelOptions:
    """What to patch, and the op backends to call (None: each op's automatic choice)."""

    adaptive_norm: bool = True
    attention: bool = True
    backend: str | None = None
    attention_backend: str | None = None


@dataclass
class PatchSummary:
    """`patched`: part -> qualified module names; `left_alone`: part -> why it runs diffusers' own code."""

    model: str
    patched: dict[str, list[str]] = field(default_factory=dict)
    left_alone: dict[str, str] = field(default_factory=dict)

    def add(self, part: str, name: str) -> None:
        self.patched.setdefault(part, []).append(name)

    def __str__(self) -> str:
        lines = [f"cosmos_kernels on {self.model}:"]
        for part, names in self.patched.items():
            lines.append(f"  patched  {part}: {len(names)} module(s)")
        for part, why in self.left_alone.items():
            lines.append(f"  left     {part}: {why}")
        return "\n".join(lines)


@dataclass
class Swap:
    """One in-place change: `module.__class__ = new` (kind "class") or `module.processor = new` ("processor")."""

    kind: str
    module: torch.nn.Module
    new: object
    old: object = None

    def apply(self) -> None:
        if self.kind == "class":
            self.old, self.module.__class__ = self.module.__class__, self.new
        else:
            self.old, self.module.processor = self.module.processor, self.new

    def undo(self) -> None:
        if self.kind == "class":
            self.module.__class__ = self.old
        else:
            self.module.processor = self.old


_patches: weakref.WeakKeyDictionary[torch.nn.Module, tuple[list[Swap], PatchSummary]] = weakref.WeakKeyDictionary()


def _planners() -> dict[type, Callable[[torch.nn.Module, KernelOptions], tuple[list[Swap], PatchSummary]]]:
    """Model class -> planner; diffusers is imported here, on first use only."""
    from diffusers.models.transformers import CosmosTransformer3DModel, WanTransformer3DModel

    from cosmos_kernels.integrations import diffusers_cosmos, diffusers_wan

    return {CosmosTransformer3DModel: diffusers_cosmos.plan, WanTransformer3DModel: diffusers_wan.plan}


def _check_options(options: KernelOptions) -> None:
    for name in ("adaptive_norm", "attention"):
        if not isinstance(getattr(options, name), bool):
            raise TypeError(f"apply_cosmos_kernels: {name} must be a bool, got {getattr(options, name)!r}")
    if options.backend not in (None, *OP_BACKENDS):
        raise ValueError(f"apply_cosmos_kernels: backend must be None or one of {OP_BACKENDS}, got {options.backend!r}")
    if options.attention_backend not in (None, *ATTENTION_BACKENDS):
        raise ValueError(f"apply_cosmos_kernels: attention_backend must be None or one of {ATTENTION_BACKENDS}, got "
                         f"{options.attention_backend!r}")


def with_backend(cls: type, backend: str | None) -> type:
    """The fused class itself for the automatic backend, else a subclass that pins the ops' backend."""
    if backend is None:
        return cls
    return type(cls.__name__, (cls,), {"_ck_backend": backend, "__module__": cls.__module__})


def _grid(t: torch.Tensor) -> torch.Tensor:
    return t.unsqueeze(-3) if t.dim() == 3 else t


# The diffusers models hand the norms (B, L, D) tokens with (B, 1, D) or (B, L, D) modulation. Viewed as
# (B, 1, L, D) they take the ops' 4-D row-grid path: the same numbers, and under torch.compile the 3-D path's
# as_strided views of compiled intermediates have read wrong memory.
def layer_norm_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float,
                        backend: str | None) -> torch.Tensor:
    out = ck.layer_norm_modulate(_grid(x), _grid(shift), _grid(scale), eps, backend=backend)
    return out.squeeze(-3) if x.dim() == 3 else out


def gated_residual_layer_norm_modulate(residual: torch.Tensor, x: torch.Tensor, gate: torch.Tensor,
                                       shift: torch.Tensor, scale: torch.Tensor, eps: float,
                                       backend: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    new, normed = ck.gated_residual_layer_norm_modulate(_grid(residual), _grid(x), _grid(gate), _grid(shift),
                                                        _grid(scale), eps, backend=backend)
    return (new.squeeze(-3), normed.squeeze(-3)) if residual.dim() == 3 else (new, normed)


def check_head_dim(model_name: str, head_dim: int) -> None:
    """The attention op's head sizes; a model outside them needs attention=False."""
    if head_dim % 16 or not 16 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"apply_cosmos_kernels: {model_name} has attention_head_dim={head_dim}; the attention op "
                         f"takes multiples of 16 up to {MAX_HEAD_DIM}: pass attention=False to patch the rest")


def check_hidden(model_name: str, hidden: int) -> None:
    if hidden > _checks.MAX_HIDDEN:
        raise ValueError(f"apply_cosmos_kernels: {model_name} has hidden size {hidden}; the adaptive-norm ops take up "
                         f"to {_checks.MAX_HIDDEN}: pass adaptive_norm=False to patch the rest")


def apply_cosmos_kernels(
    model: torch.nn.Module,
    *,
    adaptive_norm: bool = True,
    attention: bool = True,
    backend: str | None = None,
    attention_backend: str | None = None,
) -> PatchSummary:
    """Patch a diffusers `CosmosTransformer3DModel` or `WanTransformer3DModel` in place to run on cosmos_kernels.

    `adaptive_norm`: the blocks' LayerNorm + modulation and gated residuals. `attention`: the attention processors
    (QK RMSNorm + RoPE + attention core). `backend` / `attention_backend` pin the ops' backends. Returns the summary
    of what was patched and what was left alone (and why). Raises `TypeError` for a model class it does not know
    and `ValueError` for an option or model configuration it does not cover; the model is then left untouched.
    """
    options = KernelOptions(adaptive_norm, attention, backend, attention_backend)
    _check_options(options)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"apply_cosmos_kernels: expected a diffusers transformer module, got {type(model).__name__}")
    planners = _planners()
    planner = planners.get(type(model))
    if planner is None:
        known = ", ".join(sorted(c.__name__ for c in planners))
        raise TypeError(f"apply_cosmos_kernels: unsupported model class {type(model).__qualname__}; supported: {known}")
    if model in _patches:
        raise ValueError("apply_cosmos_kernels: the model is already patched; call remove_cosmos_kernels first")
    swaps, summary = planner(model, options)  # raises before any change
    for swap in swaps:
        swap.apply()
    _patches[model] = (swaps, summary)
    return summary


def remove_cosmos_kernels(model: torch.nn.Module) -> bool:
    """Undo `apply_cosmos_kernels`: every swapped class and processor is restored. False if it was not patched."""
    entry = _patches.pop(model, None)
    if entry is None:
        return False
    for swap in reversed(entry[0]):
        swap.undo()
    return True


def is_patched(model: torch.nn.Module) -> bool:
    return model in _patches
