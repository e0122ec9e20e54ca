"""GPU-only checks of `linear_gelu` (skipped without CUDA): the Triton GEMM at the 2B's MLP shapes in bf16, and
capture into a CUDA graph."""

import pytest
import torch

import cosmos_kernels as ck
from cosmos_kernels import _dispatch
from cosmos_kernels.linear_gelu import reference
from tests.numerics import assert_within_reference_error

pytestmark = pytest.mark.gpu


def _triton():
    if not torch.cuda.is_available() or not _dispatch.backend_available("triton", torch.device("cuda")):
        pytest.skip("Triton is not available")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("m,k,n", [(1764, 2048, 8192), (1764, 2048, 160), (37, 200, 150), (3528, 2048, 8192)])
def test_matches_float64_reference(dtype, m, k, n, gen):
    _triton()
    x = torch.randn(m, k, generator=gen).to("cuda", dtype)
    w = (torch.randn(n, k, generator=gen) * k ** -0.5).to("cuda", dtype)
    got = ck.linear_gelu(x, w, backend="triton")
    want = reference.linear_gelu(x.double(), w.double())
    assert_within_reference_error(got, reference.linear_gelu(x, w), want, dtype)


def test_auto_choice_and_cuda_graph(gen):
    _triton()
    x = torch.randn(1764, 2048, generator=gen).to("cuda", torch.bfloat16)
    w = (torch.randn(8192, 2048, generator=gen) * 2048 ** -0.5).to("cuda", torch.bfloat16)
    eager = ck.linear_gelu(x, w)  # auto: the Triton kernel once its probe passed
    assert torch.equal(eager, ck.linear_gelu(x, w, backend="triton"))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = ck.linear_gelu(x, w)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, eager)
