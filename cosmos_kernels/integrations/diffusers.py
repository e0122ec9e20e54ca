"""Drop-in cosmos_kernels for diffusers' video transformers: `apply_cosmos_kernels(model)`.

Supported: `CosmosTransformer3DModel` (Cosmos-Predict2 / 2.5, `diffusers_cosmos.py`), `WanTransformer3DModel`
(Wan 2.1 / 2.2, `diffusers_wan.py`) and the Wan 2.1 VAE `AutoencoderKLWan` (`diffusers_wan_vae.py`: its causal convs
and residual blocks' norms). The patch swaps, in place, the classes of the transformer blocks (a subclass
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

import torch

from cosmos_kernels.attention.ops import ATTENTION_BACKENDS
from cosmos_kernels.integrations.patching import KernelOptions, PatchSummary, Swap

__all__ = ["KernelOptions", "PatchSummary", "apply_cosmos_kernels", "is_patched", "remove_cosmos_kernels"]

OP_BACKENDS = ("reference", "cpu", "cuda", "triton")


_patches: weakref.WeakKeyDictionary[torch.nn.Module, tuple[list[Swap], PatchSummary]] = weakref.WeakKeyDictionary()


def _planners() -> dict[type, Callable[[torch.nn.Module, KernelOptions], tuple[list[Swap], PatchSummary]]]:
    """Model class -> planner; diffusers is imported here, on first use only."""
    from diffusers.models.autoencoders import AutoencoderKLWan
    from diffusers.models.transformers import CosmosTransformer3DModel, WanTransformer3DModel

    from cosmos_kernels.integrations import diffusers_cosmos, diffusers_wan, diffusers_wan_vae

    return {CosmosTransformer3DModel: diffusers_cosmos.plan, WanTransformer3DModel: diffusers_wan.plan,
            AutoencoderKLWan: diffusers_wan_vae.plan}


def _check_options(options: KernelOptions) -> None:
    for name in ("adaptive_norm", "attention"):
        if not isinstance(getattr(options, name), bool):
            raise TypeError(f"apply_cosmos_kernels: {name} must be a bool, got {getattr(options, name)!r}")
    if options.backend not in (None, *OP_BACKENDS):
        raise ValueError(f"apply_cosmos_kernels: backend must be None or one of {OP_BACKENDS}, got {options.backend!r}")
    if options.attention_backend not in (None, *ATTENTION_BACKENDS):
        raise ValueError(f"apply_cosmos_kernels: attention_backend must be None or one of {ATTENTION_BACKENDS}, got "
                         f"{options.attention_backend!r}")


def apply_cosmos_kernels(
    model: torch.nn.Module,
    *,
    adaptive_norm: bool = True,
    attention: bool = True,
    backend: str | None = None,
    attention_backend: str | None = None,
) -> PatchSummary:
    """Patch a diffusers `CosmosTransformer3DModel`, `WanTransformer3DModel` or `AutoencoderKLWan` in place to run on
    cosmos_kernels.

    `adaptive_norm`: the blocks' LayerNorm + modulation and gated residuals (in the VAE: its RMS norm + SiLU pairs;
    its causal convs are always patched). `attention`: the attention processors
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
