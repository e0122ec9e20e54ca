"""Numerical comparison helpers: errors against a float64 evaluation of the reference."""

from __future__ import annotations

import torch

from cosmos_kernels import _dispatch


def error_floor(dtype: torch.dtype) -> float:
    """Half an ulp at unit scale: the bound granted even when the reference happens to be exact."""
    return 0.5 * torch.finfo(dtype).eps


def max_abs_error(got: torch.Tensor, want64: torch.Tensor) -> float:
    assert got.shape == want64.shape, (got.shape, want64.shape)
    assert not torch.isnan(got).any(), "output has NaN (an element was not written)"
    return (got.double() - want64).abs().max().item() if got.numel() else 0.0


def assert_within_reference_error(got, ref_same_dtype, want64, dtype: torch.dtype, factor: float = 2.0) -> None:
    """The fused result's error is at most `factor` times the reference's error in the same dtype."""
    got_t = got if isinstance(got, tuple) else (got,)
    ref_t = ref_same_dtype if isinstance(ref_same_dtype, tuple) else (ref_same_dtype,)
    want_t = want64 if isinstance(want64, tuple) else (want64,)
    for i, (g, r, w) in enumerate(zip(got_t, ref_t, want_t)):
        err, ref_err = max_abs_error(g, w), max_abs_error(r, w)
        scale = max(1.0, w.abs().max().item()) if w.numel() else 1.0
        bound = factor * ref_err + error_floor(dtype) * scale
        assert err <= bound, f"output {i}: error {err:.3e} > {factor} x reference error {ref_err:.3e} (+floor)"


def cpu_backends() -> list[str]:
    """Backends that run CPU tensors here (Triton through its interpreter)."""
    dev = torch.device("cpu")
    return [b for b in ("reference", "cpu", "triton") if _dispatch.backend_available(b, dev)]
