"""Host cost of one op call on a tiny tensor: the fused op against the eager ops it replaces.

With tensors of a few hundred elements the kernels take no time, so what is measured is the Python and dispatch
cost of a call: what an eager GPU pass pays per op before the GPU sees any work (about 400 calls per 2B pass).
The target (DESIGN.md): fused <= 1.5x the eager reference. Shapes are the network's: tokens `(B, T, S, D)`,
per-frame modulation `(B, T, 1, D)` as `chunk(3, dim=-1)` views, attention `(B, L, heads, head_dim)` views of a
packed projection. CPU tensors, one thread (the host's own cost, not its parallelism).
"""

from __future__ import annotations

import pytest
import torch

import cosmos_kernels as ck
from bench import summary
from bench.conftest import measure
from cosmos_kernels.adaptive_norm import reference as norm_ref
from cosmos_kernels.attention import reference as attention_ref
from cosmos_kernels.linear_gelu import reference as linear_gelu_ref

CALLS = 200  # calls per measured round: one call is a few microseconds


def _norm_inputs():
    gen = torch.Generator().manual_seed(0)
    x, residual = torch.randn(2, 1, 2, 3, 64, generator=gen)
    shift, scale, gate = torch.randn(1, 2, 1, 192, generator=gen).chunk(3, dim=-1)
    return x, residual, shift, scale, gate, torch.rand(64, generator=gen) + 0.5


def _attention_inputs():
    gen = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(1, 6, 3, 2, 64, generator=gen).unbind(2)
    cos, sin = ck.rope_3d_tables(1, 2, 3, 64)
    return q, k, v, torch.rand(64, generator=gen) + 0.5, cos, sin


def _workloads():
    x, residual, shift, scale, gate, w = _norm_inputs()
    q, k, v, qw, cos, sin = _attention_inputs()
    w_mlp = torch.randn(96, 64, generator=torch.Generator().manual_seed(2)) * 0.125
    return {
        "layer_norm_modulate": (lambda: ck.layer_norm_modulate(x, shift, scale),
                                lambda: norm_ref.layer_norm_modulate(x, shift, scale)),
        "gated_residual_layer_norm_modulate": (
            lambda: ck.gated_residual_layer_norm_modulate(residual, x, gate, shift, scale),
            lambda: norm_ref.gated_residual_layer_norm_modulate(residual, x, gate, shift, scale)),
        "rms_norm": (lambda: ck.rms_norm(q, qw), lambda: norm_ref.rms_norm(q, qw)),
        "qk_norm_rope": (lambda: ck.qk_norm_rope(q, k, qw, qw, cos, sin),
                         lambda: attention_ref.qk_norm_rope(q, k, qw, qw, cos, sin)),
        # the MLP's first layer on the CPU, where the GEMM and its GELU stay two ops: the cost of the checks
        "linear_gelu": (lambda: ck.linear_gelu(x, w_mlp), lambda: linear_gelu_ref.linear_gelu(x, w_mlp)),
    }


@pytest.fixture
def one_thread():
    """One CPU thread for the test and for the interleaved rounds that follow its group's last variant."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("variant", [summary.FUSED, summary.REFERENCE])
@pytest.mark.parametrize("op", ["layer_norm_modulate", "gated_residual_layer_norm_modulate", "rms_norm",
                                "qk_norm_rope", "linear_gelu"])
def test_host_cost(benchmark, one_thread, op, variant):
    fused, eager = _workloads()[op]
    fn = fused if variant == summary.FUSED else eager

    def calls():
        for _ in range(CALLS):
            fn()

    measure(benchmark, f"host_cost[{op}]", variant, calls, device="cpu", calls_per_round=CALLS,
            target="fused <= 1.5 x reference")
