"""`linear_gelu` against a float64 evaluation of its reference, on every backend here (Triton through its
interpreter), on odd and strided shapes; its checks, its registration and its cost."""

import pytest
import torch

import cosmos_kernels as ck
from cosmos_kernels import _dispatch
from cosmos_kernels.linear_gelu import reference
from cosmos_kernels.tools.dispatch_counter import DispatchCounter
from tests.numerics import assert_within_reference_error, cpu_backends

BACKENDS = [b for b in cpu_backends() if b in ("reference", "triton")]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (leading shape of x, in_features, out_features): nothing a multiple of a tile, a single row, K below one
# tile, and the 2B's MLP row width with a LIBERO frame's tokens.
CASES = [((37,), 50, 70), ((1,), 96, 130), ((2, 5), 20, 33), ((3, 1, 4), 64, 64), ((196,), 2048, 160)]


def _skip_interpreted_bf16(backend, dtype):
    if backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter's tl.dot does not compute bf16 products (the GPU tests cover bf16)")


def _inputs(gen, lead, k, n, dtype):
    x = torch.randn(*lead, k, generator=gen).to(dtype)
    w = (torch.randn(n, k, generator=gen) * k ** -0.5).to(dtype)  # nn.Linear's scale: outputs of order 1
    return x, w


def _check(got, x, w, dtype, backend):
    """Element-wise against float64, within the worst-case error of an fp32-accumulated dot product of length K
    (K * 2^-24 * sum |x_k w_k|, Higham's bound; GELU's slope is below 1.13) plus the output's rounding in its dtype
    (and, for the unfused reference, the product's rounding before the GELU). Summation order is free (tiles,
    split K), so the bound is the textbook one, not the CPU reference's luck."""
    assert got.dtype == dtype and got.shape == (*x.shape[:-1], w.shape[0])
    assert not torch.isnan(got).any(), "output has NaN (an element was not written)"
    x64, w64 = x.double(), w.double()
    want = reference.linear_gelu(x64, w64)
    k = x.shape[-1]
    eps = torch.finfo(dtype).eps
    bound = 1.13 * k * 2.0 ** -24 * (x64.abs() @ w64.abs().T) + eps * want.abs() + 1e-30
    if backend == "reference":
        bound += 1.13 * eps * (x64 @ w64.T).abs()
    excess = (got.double() - want).abs() - bound
    assert excess.max().item() <= 0, f"error above the bound by {excess.max().item():.3e}"
    # and no worse than the unfused pair in the same dtype by more than the rounding it skips
    assert_within_reference_error(got, reference.linear_gelu(x, w), want, dtype, factor=4.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead,k,n", CASES)
def test_matches_float64_reference(backend, dtype, lead, k, n, gen):
    _skip_interpreted_bf16(backend, dtype)
    x, w = _inputs(gen, lead, k, n, dtype)
    _check(ck.linear_gelu(x, w, backend=backend), x, w, dtype, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_strided_operands_are_read_in_place(backend, dtype, gen):
    """x a column slice of a wider activation, transposed rows; the weight the middle rows of a packed one and,
    separately, a transposed (column-major) matrix."""
    wide = torch.randn(45, 3 * 40, generator=gen).to(dtype)
    x = wide[:, 40:80]  # row stride 120
    packed = (torch.randn(3 * 52, 40, generator=gen) * 40 ** -0.5).to(dtype)
    w = packed[52:104]
    _check(ck.linear_gelu(x, w, backend=backend), x, w, dtype, backend)
    x_t = torch.randn(40, 45, generator=gen).to(dtype).t()  # (45, 40), column-major
    w_t = (torch.randn(40, 52, generator=gen) * 40 ** -0.5).to(dtype).t()
    _check(ck.linear_gelu(x_t, w_t, backend=backend), x_t, w_t, dtype, backend)
    # leading dims that do not collapse into one stride: copied, still right
    x4 = torch.randn(3, 40, 7, generator=gen).to(dtype).transpose(1, 2)
    _check(ck.linear_gelu(x4, w, backend=backend), x4, w, dtype, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_zero_width(backend):
    w = torch.randn(6, 8)
    assert ck.linear_gelu(torch.randn(0, 8), w, backend=backend).shape == (0, 6)
    out = ck.linear_gelu(torch.randn(4, 0), torch.randn(6, 0), backend=backend)
    assert torch.equal(out, torch.zeros(4, 6))  # an empty sum is 0, and gelu(0) = 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_gelu_is_exact_erf_not_tanh(backend):
    # At x = -3 the tanh approximation differs from the erf GELU by about 3e-4: far above fp32 rounding.
    x = torch.full((1, 1), -3.0)
    got = ck.linear_gelu(x, torch.ones(1, 1), backend=backend).item()
    assert got == pytest.approx(torch.nn.functional.gelu(x).item(), abs=1e-7)
    assert abs(got - torch.nn.functional.gelu(x, approximate="tanh").item()) > 1e-4


def test_float64_runs_the_reference_automatically(gen):
    x, w = _inputs(gen, (5,), 12, 7, torch.float64)
    assert torch.equal(ck.linear_gelu(x, w), reference.linear_gelu(x, w))


def test_autograd_runs_the_differentiable_reference(gen):
    x, w = _inputs(gen, (5,), 12, 7, torch.float32)
    w.requires_grad_(True)
    with pytest.warns(RuntimeWarning, match="inference-only"):
        out = ck.linear_gelu(x, w)
    out.sum().backward()
    assert w.grad is not None and w.grad.shape == w.shape


@pytest.mark.parametrize("call, error, match", [
    (lambda: ck.linear_gelu(torch.randn(3, 4), torch.randn(4)), ValueError, "weight must be"),
    (lambda: ck.linear_gelu(torch.randn(3, 4), torch.randn(5, 3)), ValueError, "x has last dimension 4"),
    (lambda: ck.linear_gelu(torch.ones(3, 4, dtype=torch.int32), torch.randn(5, 4)), TypeError, "x must be"),
    (lambda: ck.linear_gelu(torch.randn(3, 4), "w"), TypeError, "weight must be a torch.Tensor"),
    (lambda: ck.linear_gelu(torch.randn(3, 4), torch.randn(5, 4, device="meta")), ValueError, "device"),
    (lambda: ck.linear_gelu(torch.randn(3, 4), torch.randn(5, 4), backend="cuda"), ValueError, "backend must be"),
])
def test_bad_input_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.skipif("triton" not in BACKENDS, reason="needs Triton (its interpreter on the CPU)")
def test_kernel_backend_refuses_mixed_and_float64_operands():
    with pytest.raises(TypeError, match="weight has dtype"):
        ck.linear_gelu(torch.randn(3, 4), torch.randn(5, 4).half(), backend="triton")
    with pytest.raises(TypeError, match="float64"):
        ck.linear_gelu(torch.randn(3, 4).double(), torch.randn(5, 4).double(), backend="triton")


@pytest.mark.skipif("triton" not in BACKENDS, reason="needs Triton (its interpreter on the CPU)")
def test_opcheck(gen):
    x, w = _inputs(gen, (9,), 40, 24, torch.float32)
    torch.library.opcheck(torch.ops.cosmos_kernels.linear_gelu_triton.default, (x, w))


def test_counted_as_one_gemm_launch_on_a_gpu():
    """On CUDA (meta tensors dispatched as CUDA) 16-bit operands take the epilogue kernel: one launch, the GEMM's
    FLOPs, each operand read once and the output written once; fp32 stays on cuBLAS and its own GELU."""
    x = torch.empty(1764, 2048, dtype=torch.bfloat16, device="meta")
    w = torch.empty(8192, 2048, dtype=torch.bfloat16, device="meta")
    with _dispatch.meta_as_cuda(), DispatchCounter() as counter:
        out = ck.linear_gelu(x, w)
    launched = [r for r in counter.records if r.cost.launches]
    assert out.shape == (1764, 8192) and [r.name for r in launched] == ["cosmos_kernels::linear_gelu_triton"]
    cost = launched[0].cost
    assert (cost.launches, cost.flops) == (1, 2 * 1764 * 2048 * 8192)
    assert (cost.bytes_read, cost.bytes_written) == (2 * (1764 + 8192) * 2048, 2 * 1764 * 8192)
    x, w = x.float(), w.float()
    with _dispatch.meta_as_cuda(), DispatchCounter() as counter:
        ck.linear_gelu(x, w)
    assert [r.name for r in counter.records if r.cost.launches] == ["aten.mm", "aten.gelu"]


# -- GPU launch settings ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("capability", [(7, 5), (8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0)])
def test_gpu_tiles_per_dtype(capability, monkeypatch):
    """fp32 takes its own tiles on every card (the 16-bit ones spill and overflow shared memory in fp32), and
    every tile a launch can pick is in the compile report with its dtype and precision."""
    tk = pytest.importorskip("cosmos_kernels.linear_gelu.triton")
    from cosmos_kernels._registry import TRITON_KERNELS

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    cuda = torch.device("cuda")
    assert tk.gemm_config(cuda, 1764, 8192, torch.float32) == tk.FP32_CONFIG
    assert tk.gemm_config(cuda, 1764, 8192, torch.bfloat16) != tk.FP32_CONFIG
    reported = {(c.label.split()[0], c.constexprs["BLOCK_M"], c.constexprs["BLOCK_N"], c.constexprs["BLOCK_K"],
                 c.num_warps, c.num_stages, c.constexprs["PRECISION"])
                for c in TRITON_KERNELS["linear_gelu.linear_gelu"].configs}
    for dtype, name in ((torch.float32, "fp32"), (torch.float16, "fp16"), (torch.bfloat16, "bf16")):
        for m, n in ((1764, 8192), (40, 64)):
            cfg = tk.gemm_config(cuda, m, n, dtype)
            precision = "ieee" if dtype == torch.float32 else "tf32"
            assert (name, cfg.block_m, cfg.block_n, cfg.block_k, cfg.num_warps, cfg.num_stages, precision) in reported


@pytest.mark.skipif("triton" not in BACKENDS, reason="needs Triton (its interpreter on the CPU)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gpu_tiles_compute_across_edges(dtype, gen):
    """Each GPU tile configuration, run by the interpreter on sizes one past its tiles, with and without a K tail."""
    from cosmos_kernels.linear_gelu import triton as tk

    configs = {*tk.CONFIGS.values(), tk.FP32_CONFIG} if dtype == torch.float16 else {tk.FP32_CONFIG,
                                                                                      tk.CONFIGS["small"]}
    for cfg in sorted(configs, key=str):
        for k in (2 * cfg.block_k, 2 * cfg.block_k + 7):
            x, w = _inputs(gen, (cfg.block_m + 3,), k, cfg.block_n + 5, dtype)
            _check(tk.linear_gelu(x, w, config=cfg), x, w, dtype, "triton")
