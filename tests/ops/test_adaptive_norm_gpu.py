"""GPU-only checks of the adaptive-norm family (skipped without CUDA): CUDA and Triton kernels at the
model's shapes, and capture into a CUDA graph."""

import pytest
import torch

import cosmos_kernels as ck
from cosmos_kernels import _dispatch
from cosmos_kernels.adaptive_norm import reference
from tests.numerics import assert_within_reference_error

pytestmark = pytest.mark.gpu
GPU_BACKENDS = ["cuda", "triton"]


def _available(backend):
    if not torch.cuda.is_available() or not _dispatch.backend_available(backend, torch.device("cuda")):
        pytest.skip(f"{backend} backend not available")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 9, 196, 2048), (1, 11, 196, 2048), (2, 3, 7, 1000), (1, 1, 1, 96)])
def test_gpu_backends_match_reference(backend, dtype, shape, gen):
    _available(backend)
    x = torch.randn(shape, generator=gen).to("cuda", dtype)
    res = torch.randn(shape, generator=gen).to("cuda", dtype)
    mod = torch.randn(*shape[:2], 1, 3 * shape[-1], generator=gen).to("cuda", dtype)
    shift, scale, gate = mod.chunk(3, dim=-1)
    w = torch.randn(shape[-1], generator=gen).to("cuda", dtype)
    d64 = [t.double() for t in (res, x, gate, shift, scale, w)]
    assert_within_reference_error(ck.layer_norm_modulate(x, shift, scale, backend=backend),
                                  reference.layer_norm_modulate(x, shift, scale),
                                  reference.layer_norm_modulate(d64[1], d64[3], d64[4]), dtype)
    assert_within_reference_error(ck.gated_residual_layer_norm_modulate(res, x, gate, shift, scale, backend=backend),
                                  reference.gated_residual_layer_norm_modulate(res, x, gate, shift, scale),
                                  reference.gated_residual_layer_norm_modulate(*d64[:5]), dtype)
    assert_within_reference_error(ck.rms_norm(x, w, backend=backend), reference.rms_norm(x, w),
                                  reference.rms_norm(d64[1], d64[5]), dtype)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_cuda_graph_capture(backend, gen):
    _available(backend)
    x = torch.randn(1, 9, 196, 2048, generator=gen).cuda().bfloat16()
    mod = torch.randn(1, 9, 1, 6144, generator=gen).cuda().bfloat16()
    shift, scale, gate = mod.chunk(3, dim=-1)
    ck.gated_residual_layer_norm_modulate(x, x, gate, shift, scale, backend=backend)  # warm-up, probes
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        res, normed = ck.gated_residual_layer_norm_modulate(x, x, gate, shift, scale, backend=backend)
    x.copy_(torch.randn(x.shape, generator=gen).to(x))
    graph.replay()
    want = reference.gated_residual_layer_norm_modulate(x, x, gate, shift, scale)
    torch.testing.assert_close(res, want[0])
    torch.testing.assert_close(normed, want[1], atol=6e-2, rtol=2e-2)
