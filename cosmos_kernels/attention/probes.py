"""Run-time probes of the GPU attention backends: each runs once per process and device before first use."""

from __future__ import annotations

import torch

from cosmos_kernels import _dispatch
from cosmos_kernels.attention import ops, reference


def _register_probes() -> None:
    # bf16 at head_dim 128, the model's case (tensor-core tiles, 16-byte packets); L = 40 is no multiple of
    # any block. A broken kernel is off by O(1); bf16 rounding stays far below the tolerance.
    def inputs(device):
        gen = torch.Generator(device="cpu").manual_seed(0)
        q, k, v = (torch.randn(1, 40, 2, 128, generator=gen) for _ in range(3))
        w = torch.rand(128, generator=gen) + 0.5
        cos, sin = reference.rope_3d_tables(2, 4, 5, 128)
        return [t.to(device) for t in (q.bfloat16(), k.bfloat16(), v.bfloat16(), w, cos, sin)]

    def close(got, want):
        return torch.allclose(got.double().cpu(), want.double().cpu(), atol=5e-2, rtol=2e-2)

    def qk_probe(backend):
        def run(device):
            q, k, _, w, cos, sin = inputs(device)
            got = ops.qk_norm_rope(q, k, w, w, cos, sin, backend=backend)
            want = reference.qk_norm_rope(q.double(), k.double(), w.double(), w.double(), cos.double(), sin.double())
            return all(close(g, x) for g, x in zip(got, want))
        return run

    def attention_probe(device):
        q, k, v, w, cos, sin = inputs(device)
        got = ops.attention(q, k, v, q_norm_weight=w, k_norm_weight=w, rope_cos=cos, rope_sin=sin, backend="triton")
        want = reference.attention(q.double(), k.double(), v.double(), q_norm_weight=w.double(),
                                   k_norm_weight=w.double(), rope_cos=cos.double(), rope_sin=sin.double())
        # and the cross-attention case: q-side norm only, 13 keys whose last stands for 500
        cross = ops.attention(q, k[:, :13], v[:, :13], q_norm_weight=w, last_key_repeats=500, backend="triton")
        want_cross = reference.attention(q.double(), k[:, :13].double(), v[:, :13].double(), q_norm_weight=w.double(),
                                         last_key_repeats=500)
        return close(got, want) and close(cross, want_cross)

    for backend in ("cuda", "triton"):
        _dispatch.register_probe("qk_norm_rope", backend, qk_probe(backend))
    _dispatch.register_probe("attention", "triton", attention_probe)


_register_probes()
