"""Shared scaffolding of the network tests of an FP8 GEMM with its epilogue fused (`fp8_linear_qk_norm_rope`,
`fp8_linear_head_norm`): the FP8 network with the fused op against the one with the composition it replaced."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch

import cosmos_policy.model.fp8 as fp8_blocks
from tests.model._dit_helpers import rel_error
from tests.model.test_dit_fp8 import _setup
from tests.numerics import cpu_backends


def check_fused_against_unfused(op: str, unfused: Callable, seed: int, backend: str, monkeypatch,
                                prepare: Callable | None = None) -> tuple:
    """The tiny FP8 network (bf16) with `fp8_blocks.<op>` as it is (backend "auto") or on its Triton kernel
    ("triton": the interpreter here, the rest on the automatic choice), then with `unfused` in its place: `unfused` is
    called once per block; the two outputs are within 6 % of each other, and the fused one no further from the fp32
    network than the unfused one (10 % and 0.005 of slack). `prepare(model)` changes the fp32 model's weights first.
    Returns `(model, inputs, unfused output)`, `fp8_blocks.<op>` left patched to `unfused`."""
    if backend == "triton" and "triton" not in cpu_backends():
        pytest.skip("Triton interpreter not available")
    gen = torch.Generator().manual_seed(seed)
    model, inputs = _setup(gen, torch.float32)
    if prepare is not None:
        prepare(model)
    want = model(**inputs)
    model = model.bfloat16()
    model.fp8 = True
    fused_op = getattr(fp8_blocks, op)
    if backend == "triton":
        monkeypatch.setattr(fp8_blocks, op, functools.partial(fused_op, backend="triton"))
    fused = model(**inputs)
    calls = []
    monkeypatch.setattr(fp8_blocks, op, lambda *a, **k: calls.append(1) or unfused(*a, **k))
    unfused_out = model(**inputs)
    assert len(calls) == model.config.num_blocks
    assert rel_error(fused, unfused_out) < 0.06
    assert rel_error(fused, want) < 1.1 * rel_error(unfused_out, want) + 0.005
    return model, inputs, unfused_out
