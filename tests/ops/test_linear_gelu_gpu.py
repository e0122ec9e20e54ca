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


def test_auto_choice_is_timed_kept_and_captured(gen, tmp_path, monkeypatch):
    _triton()
    from cosmos_kernels import picker

    monkeypatch.setenv(picker.CACHE_ENV, str(tmp_path))
    x = torch.randn(1764, 2048, generator=gen).to("cuda", torch.bfloat16)
    w = (torch.randn(8192, 2048, generator=gen) * 2048 ** -0.5).to("cuda", torch.bfloat16)
    eager = ck.linear_gelu(x, w)  # auto: timed against cuBLAS + GELU once, at this first eager call
    choices = {k: v for k, v in picker.saved_choices().items() if k.startswith("linear_gelu")}
    assert len(choices) == 1 and next(iter(choices.values())) in ("triton", "reference")
    assert torch.equal(eager, ck.linear_gelu(x, w, backend=next(iter(choices.values()))))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = ck.linear_gelu(x, w)  # the kept choice: nothing timed inside the capture
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, eager) and _dispatch.run_deferred()
