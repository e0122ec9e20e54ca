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


def assert_e4m3_rows(values: torch.Tensor, scales: torch.Tensor, x64: torch.Tensor,
                     x_err: torch.Tensor | None = None) -> None:
    """`(values, scales)` quantize the rows of `x64` (float64) as `cosmos_kernels.fp8.reference` specifies: each
    scale within one fp32 ulp of `max(amax / 448, 2^-126)`, and each value the e4m3 number nearest to `x / scale`
    (either neighbour where `x / scale` lies within 2^-20 of a rounding tie, relatively).

    `x_err` (float64, x's shape): where the kernel computes x itself (a GELU in fp32), a bound on its error in each
    element; the scale may then also be off by the row's largest bound / 448, a value by its bound / scale."""
    assert values.dtype == torch.float8_e4m3fn and scales.dtype == torch.float32
    assert values.shape == x64.shape and scales.shape == (*x64.shape[:-1], 1), (values.shape, scales.shape)
    v = values.double()
    s = scales.double()
    assert not torch.isnan(v).any() and not torch.isnan(s).any(), "output has NaN (an element was not written)"
    if not x64.numel():
        return
    want_s = (x64.abs().amax(-1, keepdim=True) / 448.0).clamp_min(2.0 ** -126)
    ulp32 = torch.exp2(torch.floor(torch.log2(want_s)) - 23)
    err = torch.zeros_like(x64) if x_err is None else x_err
    scale_err = (((s - want_s).abs() - err.amax(-1, keepdim=True) / 448.0) / ulp32).max().item()
    assert scale_err <= 1.0, f"scale off by {scale_err:.2f} fp32 ulp"
    exact = x64 / s
    a = exact.abs()
    ulp8 = torch.where(a >= 2.0 ** -6, torch.exp2(torch.floor(torch.log2(a.clamp_min(2.0 ** -6))) - 3),
                       torch.full_like(a, 2.0 ** -9))
    excess = (v - exact).abs() - (0.5 * ulp8 + a * 2.0 ** -20 + 2.0 ** -40 + err / s)
    worst = excess.max().item()
    assert worst <= 0, f"a value is not the e4m3 number nearest to x / scale (off by {worst:.3e} beyond half an ulp)"
