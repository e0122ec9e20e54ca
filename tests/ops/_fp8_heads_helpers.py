"""Shared scaffolding of the tests of the FP8 GEMMs whose output is split in attention heads (`fp8_linear_qk_norm_rope`,
`fp8_linear_head_norm`): the closeness check against float64, strided views of the rows, the tiles a launch can pick,
opcheck on e4m3 inputs, the count of `torch._scaled_mm` calls; the backends here and a mark for the tests that
need Triton."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.numerics import cpu_backends

BACKENDS = [b for b in cpu_backends() if b in ("reference", "triton")]
needs_triton = pytest.mark.skipif("triton" not in BACKENDS, reason="needs Triton (its interpreter on the CPU)")
MANTISSA = {torch.float32: 23, torch.bfloat16: 7, torch.float16: 10}
MIN_EXP = {torch.float32: -126, torch.bfloat16: -126, torch.float16: -14}
OPCHECK_UTILS = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_static",
                 "test_aot_dispatch_dynamic")


def assert_close(got, want, bounds, out_dtype: torch.dtype) -> None:
    """Each output within one ulp of out_dtype (the one rounding, moved by the fp32 error) plus the fp32 bound."""
    for name, g, w, e in zip("qkv", got, want, bounds):
        assert g.dtype == out_dtype and g.shape == w.shape, (name, g.dtype, g.shape)
        assert not torch.isnan(g).any(), f"{name}: an element was not written"
        mag = (w.abs() + e).clamp_min(2.0 ** MIN_EXP[out_dtype])
        ulp = torch.exp2(torch.floor(torch.log2(mag)) - MANTISSA[out_dtype])
        excess = (g.double() - w).abs() - (ulp + e)
        assert (excess <= 0).all(), f"{name}: off by {excess.max().item():.3e} beyond the bound"


def strided_rows(xq: torch.Tensor, xs: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`(x, x_scale)` pairs equal to `(xq, xs)` but not contiguous: x a slice of wider rows (its scale a slice of
    wider rows too), and a batch-transposed view."""
    b, seq, k = xq.shape
    wide = torch.zeros(b, seq, k + 20).to(torch.float8_e4m3fn)
    wide[..., 7:7 + k] = xq
    wide_scale = torch.zeros(b, seq, 3)
    wide_scale[..., 1:2] = xs
    swapped = xq.transpose(0, 1).contiguous().transpose(0, 1)
    pairs = [(wide[..., 7:7 + k], wide_scale[..., 1:2]), (swapped, xs)]
    for x, _ in pairs:
        assert not x.is_contiguous() and torch.equal(x.float(), xq.float())
    return pairs


def reported_tiles(name: str, capability: tuple[int, int], monkeypatch) -> set[tuple[int, int, int, int]]:
    """`(BLOCK_M, BLOCK_K, num_warps, num_stages)` of every configuration the compile report lists for kernel `name`,
    with torch.cuda answering as a card of `capability` and 132 SMs."""
    from cosmos_kernels._registry import TRITON_KERNELS

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: SimpleNamespace(
        multi_processor_count=132))
    return {(c.constexprs["BLOCK_M"], c.constexprs["BLOCK_K"], c.num_warps, c.num_stages)
            for c in TRITON_KERNELS[name].configs}


def opcheck_e4m3(op, args: tuple) -> None:
    """`torch.library.opcheck` of `op` on `args`. Its schema test compares the inputs bit for bit before and after,
    which torch cannot do for e4m3 tensors ("mul" is not implemented for them): the inputs are compared here as bytes
    instead."""
    before = [a.clone() for a in args if isinstance(a, torch.Tensor)]
    torch.library.opcheck(op, args, test_utils=OPCHECK_UTILS)
    after = [a for a in args if isinstance(a, torch.Tensor)]
    assert all(torch.equal(b.view(torch.uint8), a.view(torch.uint8)) for b, a in zip(before, after))


class CountScaledMm(TorchDispatchMode):
    """Counts the `torch._scaled_mm` calls dispatched inside it."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += func.overloadpacket.__name__ == "_scaled_mm"
        return func(*args, **(kwargs or {}))


def scaled_mm_calls(fn: Callable[[], object]) -> int:
    """How many `torch._scaled_mm` calls `fn()` dispatches."""
    with CountScaledMm() as count:
        fn()
    return count.calls
