"""What each model's patch plan (`diffusers_cosmos.py`, `diffusers_wan.py`) is built from: the options, the summary,
the in-place swaps, and the adaptive-norm ops as the diffusers blocks call them. `diffusers.py` applies the plans."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

import cosmos_kernels as ck
from cosmos_kernels import _checks
from cosmos_kernels.attention.ops import MAX_HEAD_DIM


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

