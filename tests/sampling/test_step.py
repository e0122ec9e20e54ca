"""The fused sampler step op against its reference, on every backend here (Triton via the interpreter)."""

from __future__ import annotations

import pytest
import torch

from cosmos_kernels.sampling import sampler_step
from cosmos_kernels.sampling.step import reference
from tests.numerics import assert_within_reference_error, cpu_backends

BACKENDS = cpu_backends()
KERNEL_BACKENDS = [b for b in BACKENDS if b != "reference"]


def make_inputs(gen, shape=(2, 3, 5, 4, 7), state=torch.float32, net=torch.float32, rows=4):
    b, _, t = shape[:3]
    v, x, p1, p2, clean = (torch.randn(shape, generator=gen) for _ in range(5))
    mask = (torch.rand(b, t, generator=gen) < 0.4).float()
    mask[0, 0], mask[-1, -1] = 1.0, 0.0  # both kinds of frame, always
    coeffs = torch.randn(rows, reference.NUM_COLUMNS, generator=gen, dtype=torch.float64)
    coeffs[0, reference.B1:reference.B2 + 1] = 0.0  # a first step: no history
    coeffs[1, reference.B2] = 0.0
    return [v.to(net), x.to(state), p1.to(state), p2.to(state), clean.to(state), mask, coeffs]


def want64(args, step):
    return reference.sampler_step(*[a.double() if a.dim() == 5 else a for a in args], step)


def check_against_reference(got, args, step):
    ref = reference.sampler_step(*args, step)
    want = want64(args, step)
    for g, r, w in zip(got, ref, want):
        assert g.dtype == r.dtype and g.shape == r.shape
        assert_within_reference_error(g, r, w, g.dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("state,net", [(torch.float32, torch.float32), (torch.float32, torch.bfloat16),
                                       (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float32)])
@pytest.mark.parametrize("shape", [(2, 3, 5, 4, 7), (1, 16, 3, 1, 1), (1, 2, 9, 28, 28)])
def test_matches_reference_at_every_step(backend, state, net, shape, gen):
    args = make_inputs(gen, shape, state, net)
    for k in range(4):
        step = torch.tensor([k])
        got = sampler_step(*args, step, backend=backend)
        check_against_reference(got, args, step)


@pytest.mark.parametrize("backend", BACKENDS)
def test_history_with_zero_coefficient_is_never_read(backend, gen):
    args = make_inputs(gen)
    args[2] = torch.full_like(args[2], float("nan"))
    args[3] = torch.full_like(args[3], float("inf"))
    x0, x_next, net_in = sampler_step(*args, torch.tensor([0]), backend=backend)
    assert torch.isfinite(x0).all() and torch.isfinite(x_next).all() and torch.isfinite(net_in).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_conditional_frames_are_clean_and_ignore_the_network_output(backend, gen):
    args = make_inputs(gen)
    v, mask = args[0], args[5]
    cond = mask.bool()
    v.permute(0, 2, 1, 3, 4)[cond] = float("nan")  # network output at clean frames is never used
    x0, _, net_in = sampler_step(*args, torch.tensor([3]), backend=backend)
    clean = args[4]
    sel = cond.view(*cond.shape[:1], 1, cond.shape[1], 1, 1).expand_as(x0)
    assert torch.equal(x0[sel], clean[sel]) and torch.equal(net_in[sel], clean[sel])
    assert torch.isfinite(x0).all() and torch.isfinite(net_in).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_inputs(backend, gen):
    shape = (2, 3, 5, 4, 6)
    args = make_inputs(gen, shape)
    wide = torch.randn(2, 6, 5, 4, 6, generator=gen)
    args[2] = wide[:, ::2]  # channel-strided view (read in place)
    tall = torch.randn(2, 3, 5, 7, 6, generator=gen)
    args[3] = tall[:, :, :, 2:6]  # row-sliced view
    args[0] = torch.randn(2, 3, 5, 6, 4, generator=gen).transpose(-1, -2)  # transposed: needs a copy
    args[4] = torch.randn(5, 3, 2, 4, 6, generator=gen).permute(2, 1, 0, 3, 4)
    for k in range(4):
        step = torch.tensor(k)  # a 0-d step index
        check_against_reference(sampler_step(*args, step, backend=backend), args, step)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bool_mask_int32_step_and_clamped_index(backend, gen):
    args = make_inputs(gen)
    bool_args = args[:5] + [args[5].bool(), args[6]]
    got = sampler_step(*bool_args, torch.tensor([2], dtype=torch.int32), backend=backend)
    check_against_reference(got, args, torch.tensor([2]))
    high = sampler_step(*args, torch.tensor([99]), backend=backend)
    low = sampler_step(*args, torch.tensor([-5]), backend=backend)
    check_against_reference(high, args, torch.tensor([3]))
    check_against_reference(low, args, torch.tensor([0]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_conditioning_and_new_outputs(backend, gen):
    args = make_inputs(gen)
    args[5] = torch.zeros_like(args[5])
    got = sampler_step(*args[:4], None, None, args[6], torch.tensor([1]), backend=backend)
    check_against_reference(got, args, torch.tensor([1]))
    ptrs = {a.data_ptr() for a in args}
    assert all(o.data_ptr() not in ptrs for o in got)


def test_float64_and_grad_run_the_reference(gen):
    args = [a.double() if a.dim() == 5 else a for a in make_inputs(gen)]
    got = sampler_step(*args, torch.tensor([1]))
    assert got[0].dtype == torch.float64
    args[0].requires_grad_(True)
    with pytest.warns(RuntimeWarning, match="grad"):
        x0, _, _ = sampler_step(*args, torch.tensor([1]))
    x0.sum().backward()
    assert args[0].grad is not None


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_opcheck(backend, gen):
    from cosmos_kernels.sampling.step.ops import _frames
    args = make_inputs(gen, (1, 2, 3, 2, 4), torch.float32, torch.bfloat16)
    lat = [_frames(a) for a in args[:5]]
    op = torch.ops.cosmos_kernels.sampler_step_triton if backend == "triton" else torch.ops.cosmos_kernels.sampler_step
    torch.library.opcheck(op.default, (*lat, args[5], args[6], torch.tensor([2])))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend, gen):
    args = make_inputs(gen, (1, 2, 3, 2, 4))
    step = torch.tensor([2])

    def fn(*a):
        x0, x_next, net_in = sampler_step(*a, backend=backend)
        return x0 * 2, x_next + 1, net_in

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="inductor" if backend == "cpu" else "aot_eager")
    got = compiled(*args, step)
    want = fn(*args, step)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("mutate,exc,match", [
    (lambda a: a.__setitem__(1, a[1][..., :-1]), ValueError, "x's shape"),
    (lambda a: a.__setitem__(0, a[0][0]), ValueError, "B, C, T, H, W"),
    (lambda a: a.__setitem__(2, a[2].double()), TypeError, "state dtype"),
    (lambda a: a.__setitem__(5, a[5][:, :-1]), ValueError, "cond_mask"),
    (lambda a: a.__setitem__(6, a[6].float()), TypeError, "float64"),
    (lambda a: a.__setitem__(6, a[6][:, :7]), ValueError, "coeffs"),
    (lambda a: a.__setitem__(7, torch.tensor([1.0])), TypeError, "step"),
    (lambda a: a.__setitem__(7, torch.tensor([1, 2])), TypeError, "step"),
    (lambda a: a.__setitem__(4, None), ValueError, "both"),
])
def test_bad_input(mutate, exc, match, gen):
    args = make_inputs(gen) + [torch.tensor([1])]
    mutate(args)
    with pytest.raises(exc, match=match):
        sampler_step(*args)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("state,net", [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.bfloat16),
                                       (torch.float32, torch.float32)])
@pytest.mark.parametrize("shape", [(1, 16, 9, 28, 28), (2, 3, 5, 3, 5)])
def test_gpu_backends_match_reference(backend, state, net, shape, gen):
    args = [a.cuda() for a in make_inputs(gen, shape, state, net)]
    for k in range(4):
        step = torch.tensor([k], device="cuda")
        check_against_reference(sampler_step(*args, step, backend=backend), args, step)
