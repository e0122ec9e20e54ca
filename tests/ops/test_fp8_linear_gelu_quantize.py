"""`fp8_linear_gelu_quantize` (the MLP's first FP8 GEMM with the exact GELU and the group-wise e4m3 quantization of
its output in the epilogue) against a float64 evaluation of its reference, on every backend here (Triton through
its interpreter); `quantize_groupwise` itself; registration, fake, dispatch count and errors."""

import pytest
import torch
import torch.nn.functional as F

from cosmos_kernels import fp8
from cosmos_kernels.fp8 import reference
from cosmos_kernels.tools.dispatch_counter import DispatchCounter
from tests.numerics import assert_e4m3_rows, cpu_backends

BACKENDS = [b for b in cpu_backends() if b in ("reference", "triton")]
TRITON = pytest.mark.skipif("triton" not in BACKENDS, reason="needs Triton (its interpreter on the CPU)")
U32 = 2.0 ** -24
# (leading dims of x, K, N): N = 200 and 300 end in a partial group, K is no multiple of a K tile, the rows no
# multiple of BLOCK_M (the interpreter's tiles are 64 x 128 x 64)
SHAPES = [((70,), 200, 300), ((2, 33), 130, 200), ((5,), 64, 128), ((1, 3, 1), 96, 256), ((129,), 300, 129)]


def assert_e4m3_groups(values, scales, x64, x_err=None, group=128) -> None:
    """`assert_e4m3_rows` on every group of `group` columns of every row (a partial last group padded with zeros,
    which change neither its amax nor its values)."""
    n = x64.shape[-1]
    g = -(-n // group)
    assert values.shape == x64.shape and scales.shape == (*x64.shape[:-1], g), (values.shape, scales.shape)
    pad = (0, g * group - n)

    def grouped(t):
        return F.pad(t, pad).reshape(*t.shape[:-1], g, group)

    err = None if x_err is None else grouped(x_err)
    assert_e4m3_rows(grouped(values.float()).to(torch.float8_e4m3fn), scales.unsqueeze(-1), grouped(x64), err)


def _operands(lead, k, n, gen):
    """e4m3 x with row scales of very different magnitudes, e4m3 weight with per-channel scales."""
    x = torch.randn(*lead, k, generator=gen) * torch.exp(torch.randn(*lead, 1, generator=gen)) * 2
    w = torch.randn(n, k, generator=gen) * torch.exp(0.5 * torch.randn(n, 1, generator=gen)) / k ** 0.5
    return (*reference.quantize_rowwise(x), *reference.quantize_weight(w))


def _gelu64(x, x_scale, weight, weight_scale):
    """(GELU of the float64 product, a bound on the error of an fp32 evaluation in each element).

    The products of e4m3 values are exact in fp32; a sum of K of them in any order is within K ulp-units of the
    sum of their magnitudes, and the two scales (applied to the operands or to the sum) add a few more. GELU's
    slope is below 1.13, and its fp32 evaluation is within 8 * 2^-24 * (|y| + |GELU(y)|) (see test_fp8_gelu)."""
    a = reference.dequantize(x, x_scale, torch.float64)
    b = reference.dequantize(weight, weight_scale, torch.float64)
    y = a @ b.T
    g = F.gelu(y)
    gemm_err = (x.shape[-1] + 4) * U32 * (a.abs() @ b.abs().T)
    return g, 1.13 * gemm_err + 8 * U32 * (y.abs() + g.abs())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_float64_reference(backend, shape, gen):
    x, xs, w, ws = _operands(*shape, gen)
    values, scales = fp8.fp8_linear_gelu_quantize(x, xs, w, ws, backend=backend)
    assert values.is_contiguous() and scales.is_contiguous() and scales.dtype == torch.float32
    assert_e4m3_groups(values, scales, *_gelu64(x, xs, w, ws))


@TRITON
@pytest.mark.parametrize("name", ["large", "large_small_k", "small", "small_small_k"])
def test_gpu_tiles_compute_across_edges(name, gen):
    """Each GPU tile configuration, run by the interpreter on sizes one past its tiles (and a partial last group),
    with and without a K tail."""
    from cosmos_kernels.fp8 import linear_gelu_quantize_triton as tk

    cfg = tk.CONFIGS[name]
    for k in (cfg.block_k, cfg.block_k + 40):
        x, xs, w, ws = _operands((cfg.block_m + 1,), k, 2 * 128 + 44, gen)
        values, scales = tk.fp8_linear_gelu_quantize(x, xs.view(-1), w, ws.view(-1), config=cfg)
        assert_e4m3_groups(values, scales, *_gelu64(x, xs, w, ws))


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_operands(backend, gen):
    """x read through its strides (sliced columns, permuted leading dims), strided scales and a transposed weight."""
    x, xs, w, ws = _operands((4, 3, 2), 230, 300, gen)
    base = torch.zeros(4, 3, 2, 250).to(torch.float8_e4m3fn)
    base[..., 11:241] = x
    scale_base = torch.ones(4, 3, 2, 3)
    scale_base[..., 1:2] = xs
    w_t = w.t().contiguous().t()
    for xv, sv in ((base[..., 11:241], scale_base[..., 1:2]),
                   (base.transpose(0, 1)[..., 11:241], scale_base.transpose(0, 1)[..., 1:2])):
        assert not xv.is_contiguous() and not sv.is_contiguous()
        values, scales = fp8.fp8_linear_gelu_quantize(xv, sv, w_t, ws.view(1, -1), backend=backend)
        assert values.shape == (*xv.shape[:-1], 300) and scales.shape == (*xv.shape[:-1], 3)
        assert_e4m3_groups(values, scales, *_gelu64(xv, sv, w, ws))


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_groups_tails_and_outputs_fully_written(backend, gen):
    """Outputs allocated NaN-filled (conftest) come back NaN-free; a zero row of x and a group of zero weight
    channels give values 0 and the floor scale 2^-126; a row of large negative products sits in GELU's tail; the
    largest value of a partial last group scales it."""
    x, xs, w, ws = _operands((67,), 150, 300, gen)
    x[0] = 0
    w[128:256] = 0
    x[1] = x[1].float().abs().to(torch.float8_e4m3fn)
    w[:128] = (-w[:128].float().abs()).to(torch.float8_e4m3fn)  # row 1, group 0: all products negative
    values, scales = fp8.fp8_linear_gelu_quantize(x, xs, w, ws, backend=backend)
    assert not values.float().isnan().any() and not scales.isnan().any()
    assert_e4m3_groups(values, scales, *_gelu64(x, xs, w, ws))
    assert (scales[0] == 2.0 ** -126).all() and not values[0].float().any()
    assert (scales[:, 1] == 2.0 ** -126).all() and not values[:, 128:256].float().any()
    assert scales[1, 0] < scales[1, 2] * 1e-3  # the tail is tiny next to the positive group
    g64, _ = _gelu64(x, xs, w, ws)
    top = g64[2, 256:].abs().argmax()
    assert values[2, 256 + top].float().abs().item() == 448.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_k_zero(backend):
    e4m3 = torch.float8_e4m3fn
    w = torch.ones(200, 64).to(e4m3)
    values, scales = fp8.fp8_linear_gelu_quantize(torch.ones(0, 5, 64).to(e4m3), torch.ones(0, 5, 1), w,
                                                  torch.ones(200, 1), backend=backend)
    assert values.shape == (0, 5, 200) and scales.shape == (0, 5, 2)
    values, scales = fp8.fp8_linear_gelu_quantize(torch.ones(3, 0).to(e4m3), torch.ones(3, 1),
                                                  torch.ones(200, 0).to(e4m3), torch.ones(200, 1), backend=backend)
    assert not values.float().any() and (scales == 2.0 ** -126).all() and scales.shape == (3, 2)


def test_other_groups_run_the_reference(gen):
    x, xs, w, ws = _operands((9,), 40, 70, gen)
    values, scales = fp8.fp8_linear_gelu_quantize(x, xs, w, ws, group=32)
    assert scales.shape == (9, 3)
    assert_e4m3_groups(values, scales, *_gelu64(x, xs, w, ws), group=32)
    with pytest.raises(ValueError, match="fp8_linear_gelu_quantize: .*group=128 only.*got group=32"):
        fp8.fp8_linear_gelu_quantize(x, xs, w, ws, group=32, backend="triton")


def test_float64_scales_evaluate_the_reference_in_float64(gen):
    x, xs, w, ws = _operands((9,), 40, 70, gen)
    values, scales = reference.fp8_linear_gelu_quantize(x, xs.double(), w, ws.double())
    assert scales.dtype == torch.float64
    want_v, want_s = reference.quantize_groupwise(_gelu64(x, xs, w, ws)[0])
    assert torch.equal(values.float(), want_v.float()) and torch.equal(scales, want_s)


def test_autograd_runs_the_reference(gen):
    x, xs, w, ws = _operands((3,), 32, 40, gen)
    with pytest.warns(RuntimeWarning, match="fp8_linear_gelu_quantize: inputs require grad"):
        values, scales = fp8.fp8_linear_gelu_quantize(x, xs.requires_grad_(), w, ws)
    assert values.dtype == torch.float8_e4m3fn and scales.requires_grad


@TRITON
def test_opcheck_and_inputs_left_alone(gen):
    """opcheck without its schema test (that one compares the inputs before and after with `allclose`, which has no
    e4m3 kernel on the CPU); the inputs are compared bit for bit here instead."""
    op = torch.ops.cosmos_kernels.fp8_linear_gelu_quantize_triton.default
    for lead, k, n in (((70,), 200, 300), ((5,), 64, 128)):
        x, xs, w, ws = _operands(lead, k, n, gen)
        args = (x, xs.view(-1), w, ws.view(-1))
        before = [a.clone() for a in args]
        torch.library.opcheck(op, args, test_utils=("test_autograd_registration", "test_faketensor",
                                                    "test_aot_dispatch_dynamic"))
        assert all(torch.equal(a.view(torch.uint8) if a.dtype == torch.float8_e4m3fn else a,
                               b.view(torch.uint8) if b.dtype == torch.float8_e4m3fn else b)
                   for a, b in zip(args, before))


def test_one_launch_in_the_dispatch_counter():
    """On the meta device (as on CUDA), at the 2B's MLP shape: one FP8 GEMM reading its operands and writing the
    e4m3 hidden activation and its group scales, counted at the FP8 rate."""
    from cosmos_kernels.backends import meta_as_cuda
    from cosmos_policy.cli.roofline_cards import FP8_OPS

    m, k, n = 1764, 2048, 8192
    e4m3 = torch.float8_e4m3fn
    args = (torch.empty(1, m, k, dtype=e4m3, device="meta"), torch.empty(1, m, 1, device="meta"),
            torch.empty(n, k, dtype=e4m3, device="meta"), torch.empty(n, 1, device="meta"))
    with meta_as_cuda(), DispatchCounter() as counter:
        values, scales = fp8.fp8_linear_gelu_quantize(*args)
    (record,) = [r for r in counter.records if r.cost.launches]
    assert record.name == "cosmos_kernels::fp8_linear_gelu_quantize_triton" and record.name in FP8_OPS
    assert record.cost.flops == 2 * m * n * k
    assert (record.cost.bytes_read, record.cost.bytes_written) == (m * k + 4 * m + n * k + 4 * n,
                                                                     m * n + 4 * m * (n // 128))
    assert values.shape == (1, m, n) and values.dtype == e4m3 and scales.shape == (1, m, n // 128)


# -- quantize_groupwise -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("group", [128, 5])
@pytest.mark.parametrize("shape", [(3, 300), (4, 2, 23), (2, 256), (1, 7)])
def test_quantize_groupwise(group, shape, gen):
    x = torch.randn(shape, generator=gen) * torch.exp(3 * torch.randn(*shape[:-1], 1, generator=gen))
    x[0] = 0  # an all-zero row
    values, scales = fp8.quantize_groupwise(x, group)
    assert scales.shape == (*shape[:-1], -(-shape[-1] // group)) and values.is_contiguous()
    assert_e4m3_groups(values, scales, x.double(), group=group)
    assert (scales[0] == 2.0 ** -126).all() and not values[0].float().any()
    # the partial last group (or the whole row) is quantized as a row of its own
    start = (shape[-1] - 1) // group * group
    tail_v, tail_s = reference.quantize_rowwise(x[..., start:])
    assert torch.equal(values[..., start:].float(), tail_v.float()) and torch.equal(scales[..., -1:], tail_s)


def test_quantize_groupwise_float64_and_bad_group():
    values, scales = fp8.quantize_groupwise(torch.randn(2, 9, dtype=torch.float64), 4)
    assert scales.dtype == torch.float64 and scales.shape == (2, 3) and values.dtype == torch.float8_e4m3fn
    for group in (0, -3, 2.0, True):
        with pytest.raises(ValueError, match="quantize_groupwise: group must be a positive int"):
            fp8.quantize_groupwise(torch.randn(2, 9), group)


# -- bad input: one case each -----------------------------------------------------------------------------------

def _good():
    e4m3 = torch.float8_e4m3fn
    return {"x": torch.ones(3, 64).to(e4m3), "x_scale": torch.ones(3, 1), "weight": torch.ones(130, 64).to(e4m3),
            "weight_scale": torch.ones(130, 1)}


@pytest.mark.parametrize("name, value, error, match", [
    ("x", torch.ones(3, 64), TypeError, "x must be float8_e4m3fn"),
    ("x", [1.0], TypeError, "x must be a torch.Tensor"),
    ("x_scale", torch.ones(3, 1, dtype=torch.float64), TypeError, "x_scale must be float32"),
    ("weight", torch.ones(130, 64, dtype=torch.bfloat16), TypeError, "weight must be float8_e4m3fn"),
    ("weight_scale", torch.ones(130, 1, dtype=torch.bfloat16), TypeError, "weight_scale must be float32"),
    ("x", torch.ones(3, 65).to(torch.float8_e4m3fn), ValueError, "x has shape .* in_features 64"),
    ("weight", torch.ones(2, 130, 64).to(torch.float8_e4m3fn), ValueError, "weight must be \\(out_features"),
    ("x_scale", torch.ones(3), ValueError, "x_scale must have shape \\(3, 1\\)"),
    ("weight_scale", torch.ones(129, 1), ValueError, "weight_scale must hold one scale per output channel"),
    ("weight_scale", torch.ones(130, 1, device="meta"), ValueError, "weight_scale is on meta"),
])
def test_rejects_bad_operands(name, value, error, match):
    args = {**_good(), name: value}
    with pytest.raises(error, match="fp8_linear_gelu_quantize: " + match):
        fp8.fp8_linear_gelu_quantize(**args)


@pytest.mark.parametrize("group", [0, 1.5, None])
def test_rejects_a_bad_group(group):
    with pytest.raises(ValueError, match="fp8_linear_gelu_quantize: group must be a positive int"):
        fp8.fp8_linear_gelu_quantize(**_good(), group=group)


def test_rejects_an_unknown_backend():
    with pytest.raises(ValueError, match="fp8_linear_gelu_quantize: backend must be one of"):
        fp8.fp8_linear_gelu_quantize(**_good(), backend="cuda")


def test_every_gpu_tile_is_in_the_compile_report():
    tk = pytest.importorskip("cosmos_kernels.fp8.linear_gelu_quantize_triton")
    from cosmos_kernels._registry import TRITON_KERNELS

    reported = {(c.constexprs["BLOCK_M"], c.constexprs["BLOCK_N"], c.constexprs["BLOCK_K"], c.constexprs["GROUP_M"],
                 c.num_warps, c.num_stages) for c in TRITON_KERNELS["fp8.fp8_linear_gelu_quantize"].configs}
    cuda = torch.device("cuda")
    for m, n, k in ((1764, 8192, 2048), (40, 512, 128), (1764, 8192, 64), (3, 200, 32), (4096, 300, 100)):
        cfg = tk.gemm_config(cuda, m, n, k)
        assert cfg.block_n == 128
        assert (cfg.block_m, cfg.block_n, cfg.block_k, cfg.group_m, cfg.num_warps, cfg.num_stages) in reported
