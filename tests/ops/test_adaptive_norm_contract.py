"""The op contract of the adaptive-norm family: registration, fakes, torch.compile, errors."""

import pytest
import torch

import cosmos_kernels as ck
from cosmos_kernels import _ext
from cosmos_kernels._layout import as_row_grid
from cosmos_kernels.adaptive_norm import reference
from tests.numerics import cpu_backends

NATIVE = pytest.mark.skipif(not _ext.has_cpu_extension(), reason="cosmos_kernels._C not built")


def _grids(gen, shape=(2, 3, 5, 64)):
    x = torch.randn(shape, generator=gen)
    mod = torch.randn(shape[0], shape[1], 1, 3 * shape[-1], generator=gen)
    shift, scale, gate = mod.chunk(3, dim=-1)
    return as_row_grid(x.shape, x, shift, scale, gate)


@NATIVE
@pytest.mark.parametrize("suffix", ["", "_triton"])
def test_opcheck(suffix, gen):
    if suffix and "triton" not in cpu_backends():
        pytest.skip("Triton interpreter not available")
    ops = torch.ops.cosmos_kernels
    x, shift, scale, gate = _grids(gen)
    torch.library.opcheck(getattr(ops, "layer_norm_modulate" + suffix).default, (x, shift, scale, 1e-6))
    torch.library.opcheck(getattr(ops, "gated_residual_layer_norm_modulate" + suffix).default,
                          (x, x.clone(), gate, shift, scale, 1e-6))
    w = torch.randn(64, generator=gen).expand(x.shape)
    torch.library.opcheck(getattr(ops, "rms_norm" + suffix).default, (x, w, 1e-6))


class _AdaLNBlock(torch.nn.Module):
    """Two sub-layers of a DiT block, written with the fused ops."""

    def __init__(self, d: int, backend: str | None):
        super().__init__()
        self.backend = backend
        self.proj = torch.nn.Linear(d, d, bias=False)
        self.mlp = torch.nn.Linear(d, d, bias=False)
        self.norm_weight = torch.nn.Parameter(torch.randn(d))

    def forward(self, x, mod_a, mod_b):
        shift_a, scale_a, gate_a = mod_a.chunk(3, dim=-1)
        shift_b, scale_b, gate_b = mod_b.chunk(3, dim=-1)
        h = ck.layer_norm_modulate(x, shift_a, scale_a, backend=self.backend)
        x, h = ck.gated_residual_layer_norm_modulate(x, self.proj(h), gate_a, shift_b, scale_b, backend=self.backend)
        h = ck.rms_norm(self.mlp(h), self.norm_weight, backend=self.backend)
        return x + gate_b * h


@NATIVE
@torch.inference_mode()
def test_block_compiles_fullgraph_and_matches_eager(gen):
    torch._dynamo.reset()
    torch.manual_seed(0)
    block = _AdaLNBlock(64, backend="cpu")
    x = torch.randn(1, 3, 5, 64, generator=gen)
    mod_a = torch.randn(1, 3, 1, 192, generator=gen)
    mod_b = torch.randn(1, 3, 1, 192, generator=gen)
    eager = block(x, mod_a, mod_b)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")(x, mod_a, mod_b)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    block.backend = "reference"
    torch.testing.assert_close(block(x, mod_a, mod_b), eager, rtol=1e-4, atol=1e-4)


@NATIVE
@torch.inference_mode()
def test_auto_backend_compiles_with_inductor(gen):
    torch._dynamo.reset()
    x = torch.randn(4, 96, generator=gen)
    s = torch.randn(96, generator=gen)
    fn = torch.compile(lambda x, s: ck.layer_norm_modulate(x, s, s), fullgraph=True)
    torch.testing.assert_close(fn(x, s), reference.layer_norm_modulate(x, s, s), rtol=1e-5, atol=1e-5)


@NATIVE
@torch.inference_mode()
@pytest.mark.parametrize("shape", [(2, 7, 96), (2, 3, 5, 7, 96)], ids=["BLD", "5d"])
def test_inductor_chunked_modulation_of_an_intermediate(gen, shape):
    """Modulation chunked from a compiled intermediate (diffusers' AdaLN): inductor may give the intermediate other
    strides than the ones seen while tracing, so the ops' row grids must be views it tracks, not as_strided."""
    torch._dynamo.reset()
    d = shape[-1]
    weight = torch.randn(3 * d, d, generator=gen) * 0.1
    x = torch.randn(shape, generator=gen)
    emb = torch.randn(shape[0], *([1] * (len(shape) - 2)), d, generator=gen)

    def block(x, emb):
        shift, scale, gate = (torch.nn.functional.linear(emb, weight) + 1).chunk(3, dim=-1)
        y = ck.layer_norm_modulate(x, shift, scale)
        return (y, *ck.gated_residual_layer_norm_modulate(x, y, gate, shift, scale))

    for got, want in zip(torch.compile(block, fullgraph=True)(x, emb), block(x, emb)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# -- bad input: one test per case ---------------------------------------------------------------------------

def test_mismatched_hidden_size():
    with pytest.raises(ValueError, match="shift.*last dimension 32.*expected 64"):
        ck.layer_norm_modulate(torch.randn(2, 64), torch.randn(32), torch.randn(64))


def test_modulation_that_does_not_broadcast():
    with pytest.raises(ValueError, match="scale of shape \\(3, 1, 64\\) does not broadcast"):
        ck.layer_norm_modulate(torch.randn(2, 5, 64), torch.randn(64), torch.randn(3, 1, 64))


def test_modulation_that_would_enlarge_x():
    with pytest.raises(ValueError, match="gate .* does not broadcast to residual"):
        ck.gated_residual_layer_norm_modulate(torch.randn(5, 64), torch.randn(5, 64), torch.randn(2, 5, 64),
                                              torch.randn(64), torch.randn(64))


def test_integer_tensor():
    with pytest.raises(TypeError, match="x must be float32, bfloat16, float16 or float64, got torch.int64"):
        ck.layer_norm_modulate(torch.ones(2, 64, dtype=torch.long), torch.randn(64), torch.randn(64))


def test_not_a_tensor():
    with pytest.raises(TypeError, match="weight must be a torch.Tensor, got list"):
        ck.rms_norm(torch.randn(2, 4), [1.0, 1.0, 1.0, 1.0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_tensors_on_different_devices():
    with pytest.raises(ValueError, match="shift is on cuda"):
        ck.layer_norm_modulate(torch.randn(2, 64), torch.randn(64, device="cuda"), torch.randn(64))


def test_tensors_on_different_devices_meta():
    # meta stands in for a second device on machines without a GPU
    with pytest.raises(ValueError, match="shift is on meta but x is on cpu"):
        ck.layer_norm_modulate(torch.randn(2, 64), torch.randn(64, device="meta"), torch.randn(64))


def test_hidden_size_above_limit():
    with pytest.raises(ValueError, match="hidden size 16385; the supported maximum is 16384"):
        ck.rms_norm(torch.randn(1, 16385), torch.randn(16385))


def test_rms_norm_weight_shape():
    with pytest.raises(ValueError, match=r"weight must have shape \(64,\)"):
        ck.rms_norm(torch.randn(2, 64), torch.randn(2, 64))


@NATIVE
def test_mixed_dtypes_on_fused_backend():
    with pytest.raises(TypeError, match="shift has dtype torch.float32 but x has torch.bfloat16"):
        ck.layer_norm_modulate(torch.randn(2, 64).bfloat16(), torch.randn(64), torch.randn(64).bfloat16(),
                               backend="cpu")


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        ck.layer_norm_modulate(torch.randn(2, 64), torch.randn(64), torch.randn(64), backend="tpu")


def test_unavailable_backend():
    with pytest.raises(ValueError, match="backend 'cuda' is not available for tensors on cpu"):
        ck.layer_norm_modulate(torch.randn(2, 64), torch.randn(64), torch.randn(64), backend="cuda")


def test_float64_on_fused_backend():
    if "cpu" not in cpu_backends():
        pytest.skip("cpu backend not built")
    with pytest.raises(TypeError, match="use backend='reference' for float64"):
        ck.rms_norm(torch.randn(2, 64, dtype=torch.float64), torch.randn(64, dtype=torch.float64), backend="cpu")


def test_environment_pin(monkeypatch, gen):
    monkeypatch.setenv("COSMOS_KERNELS_BACKEND", "reference")
    from cosmos_kernels import _dispatch

    _dispatch.refresh_environment()
    assert _dispatch.resolve_backend("layer_norm_modulate", torch.device("cpu"), None) == "reference"
    assert _dispatch.resolve_backend("layer_norm_modulate", torch.device("cpu"), "cpu") == "cpu"


def test_environment_is_read_once_until_refreshed(monkeypatch):
    from cosmos_kernels import _dispatch

    cpu = torch.device("cpu")
    monkeypatch.delenv("COSMOS_KERNELS_BACKEND", raising=False)
    _dispatch.refresh_environment()
    auto = _dispatch.resolve_backend("layer_norm_modulate", cpu, None)
    monkeypatch.setenv("COSMOS_KERNELS_BACKEND", "reference")
    assert _dispatch.resolve_backend("layer_norm_modulate", cpu, None) == auto  # the cached value
    _dispatch.refresh_environment()
    assert _dispatch.resolve_backend("layer_norm_modulate", cpu, None) == "reference"
    monkeypatch.delenv("COSMOS_KERNELS_BACKEND")
    _dispatch.refresh_environment()
    assert _dispatch.resolve_backend("layer_norm_modulate", cpu, None) == auto


_X = (2, 3, 5, 64)
_BAD_OPERANDS = {
    "int dtype": (torch.zeros(_X), torch.zeros(64, dtype=torch.int32)),
    "not a tensor": (torch.zeros(_X), [0.0] * 64),
    "other device": (torch.zeros(_X), torch.zeros(64, device="meta")),
    "last dim": (torch.zeros(_X), torch.zeros(2, 3, 1, 32)),
    "broadcast last dim": (torch.zeros(_X), torch.zeros(2, 3, 1, 1)),
    "no broadcast": (torch.zeros(_X), torch.zeros(2, 2, 1, 64)),
    "enlarges x": (torch.zeros(_X), torch.zeros(4, 2, 3, 5, 64)),
    "0-d": (torch.zeros(_X), torch.tensor(1.0)),
    "0-d x": (torch.tensor(1.0), torch.zeros(1)),
    "hidden size": (torch.zeros(1, 16385), torch.zeros(16385)),
}


@pytest.mark.parametrize("case", list(_BAD_OPERANDS))
def test_one_pass_check_refuses_what_the_checks_refuse(case):
    from cosmos_kernels import _checks

    x, other = _BAD_OPERANDS[case]
    assert not _checks.broadcast_operands_ok(x, other)
    assert not _checks.broadcast_operands_ok(x, x, other)  # a bad operand after a good one
    with pytest.raises((TypeError, ValueError)):
        _checks.check_broadcast_operands("op", "x", x, shift=other)
    with pytest.raises((TypeError, ValueError)):
        ck.layer_norm_modulate(x, other, other)


@pytest.mark.parametrize("shape", [_X, (3, 5, 64), (5, 64), (64,), (1, 1, 1, 64), (2, 1, 5, 64), (3, 1, 64)])
def test_one_pass_check_accepts_what_the_checks_accept(shape):
    from cosmos_kernels import _checks

    x, other = torch.zeros(_X), torch.zeros(shape)
    assert _checks.broadcast_operands_ok(x, other, other[..., :64])
    assert _checks.check_broadcast_operands("op", "x", x, shift=other) == x.device
