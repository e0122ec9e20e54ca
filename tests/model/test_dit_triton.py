"""The fused network with every op on its Triton kernel (through the interpreter on the CPU): the GEMM with the
GELU epilogue, the norms, qk_norm_rope and the flash-attention forward, against the reference network."""

import pytest
import torch

from cosmos_kernels import _dispatch
from cosmos_kernels.linear_gelu import ops as linear_gelu_ops
from tests.model._dit_helpers import random_dit, random_inputs, rel_error


@pytest.mark.skipif(not _dispatch.backend_available("triton", torch.device("cpu")),
                    reason="needs Triton's interpreter (TRITON_INTERPRET=1, set by the test setup without a GPU)")
def test_fused_on_triton_matches_reference_in_fp32(gen, monkeypatch):
    model = random_dit(gen)
    inputs = random_inputs(gen, model.config, t=3, h=4, w=4, n_text=5)
    inputs["crossattn_emb"] = torch.cat([inputs["crossattn_emb"], torch.zeros(1, 27, 64)], dim=1)  # T5 padding
    with torch.no_grad():
        model.backend = "reference"
        want = model(**inputs)
        monkeypatch.setenv(_dispatch.BACKEND_ENV, "triton")
        _dispatch.refresh_environment()
        launched = []
        original = torch.ops.cosmos_kernels.linear_gelu_triton.default

        def spy(*args):
            launched.append(args[0].shape)
            return original(*args)

        monkeypatch.setattr(linear_gelu_ops, "_linear_gelu_triton", spy)
        model.backend = "fused"
        got = model(**inputs)
    assert len(launched) == model.config.num_blocks  # every block's MLP ran the epilogue kernel
    assert rel_error(got, want) < 1e-5
