"""The dispatch counter on toy code whose launches, FLOPs and bytes are known by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import cosmos_kernels
from cosmos_kernels import _dispatch
from cosmos_kernels.tools import dispatch_counter as dc
from cosmos_kernels.tools.dispatch_counter import DispatchCounter, footprint

META = torch.device("meta")
F32 = 4  # bytes


def test_linear_gelu_custom_op_by_hand():
    lin = torch.nn.Linear(64, 32, device=META)
    weight = torch.empty(32, device=META)
    x = torch.empty(4, 64, device=META)
    with torch.no_grad(), DispatchCounter() as counter:
        y = F.gelu(lin(x))
        out = torch.ops.cosmos_kernels.rms_norm_triton.default(y, weight, 1e-6)
    assert out.shape == (4, 32)
    launched = [(r.name, r.cost.launches) for r in counter.records if r.cost.launches]
    assert launched == [("aten.addmm", 1), ("aten.gelu", 1), ("cosmos_kernels::rms_norm_triton", 1)]
    totals = counter.totals()
    assert totals.launches == 3
    assert totals.flops == 2 * 4 * 64 * 32  # the GEMM only; GELU and the norm do no matrix work
    addmm = (32 + 4 * 64 + 64 * 32) * F32 + 4 * 32 * F32  # bias, x, weight read; y written
    gelu = 2 * 4 * 32 * F32
    norm = (4 * 32 + 32) * F32 + 4 * 32 * F32
    assert totals.bytes == addmm + gelu + norm
    assert totals.nonmatmul_bytes == gelu + norm
    assert totals.by_op["aten.addmm"] == [1, 1, 2 * 4 * 64 * 32, addmm]


def test_views_and_allocations_launch_nothing():
    x = torch.empty(2, 3, 8, device=META)
    with DispatchCounter() as counter:
        y = x.view(6, 8).t().unsqueeze(0).expand(5, 8, 6)
        torch.empty(10, device=META)
        torch.empty_like(x)
        x.detach().as_strided((2, 2), (1, 1))
        y.transpose(1, 2).reshape(5, 48)  # a view here
        x.permute(2, 0, 1).contiguous()  # a copy: one launch
    assert counter.totals().launches == 1
    assert [r.name for r in counter.records if r.cost.launches] == ["aten.clone"]


def test_broadcast_dimensions_count_once():
    row = torch.empty(1, 8, device=META).expand(5, 8)
    assert footprint(row) == 8 * F32
    x = torch.empty(5, 8, device=META)
    with DispatchCounter() as counter:
        x + row
    assert counter.totals().bytes == (40 + 8 + 40) * F32


def test_copy_does_not_read_its_destination():
    dst, src = torch.empty(16, device=META), torch.empty(16, dtype=torch.bfloat16, device=META)
    with DispatchCounter() as counter:
        dst.copy_(src)
    (record,) = counter.records
    assert (record.cost.launches, record.cost.bytes_read, record.cost.bytes_written) == (1, 16 * 2, 16 * F32)


def test_an_out_buffer_is_written_not_read():
    a, b = torch.empty(8, 16, device=META), torch.empty(8, 16, device=META)
    dest = torch.empty(8, 20, device=META)[:, :16]  # a strided view: written once, never read
    with DispatchCounter() as counter:
        torch.add(a, b, out=dest)
    (record,) = counter.records
    assert record.name == "aten.add"
    assert (record.cost.bytes_read, record.cost.bytes_written) == (2 * 8 * 16 * F32, 8 * 16 * F32)


def test_sdpa_is_one_fused_kernel_with_the_gpu_layout():
    b, h, lq, lk, d = 1, 2, 7, 5, 16
    q, k, v = (torch.empty(b, h, n, d, device=META) for n in (lq, lk, lk))
    with DispatchCounter() as counter:
        out = F.scaled_dot_product_attention(q, k, v)
        out.transpose(1, 2).flatten(2)  # a view of the GPU kernels' (B, L, heads, d) output
    assert out.shape == (b, h, lq, d)
    (record,) = [r for r in counter.records if r.cost.launches]
    assert record.name == "scaled_dot_product_attention"
    assert record.cost.flops == 4 * b * h * lq * lk * d
    assert record.cost.bytes_read == (lq + 2 * lk) * h * d * F32 and record.cost.bytes_written == lq * h * d * F32
    assert counter.totals().launches == 1


def test_host_ops_are_not_recorded():
    with DispatchCounter() as counter:
        torch.ones(4) * 2
    assert counter.records == []


@torch.library.custom_op("cosmos_counter_test::three_kernels", mutates_args=())
def _three_kernels(x: torch.Tensor) -> torch.Tensor:
    return (x * 2 + 1).sin()


@_three_kernels.register_fake
def _(x):
    return torch.empty_like(x)


def test_a_custom_op_counts_its_registered_launches(monkeypatch):
    monkeypatch.setattr(dc, "CUSTOM_NAMESPACES", (*dc.CUSTOM_NAMESPACES, "cosmos_counter_test"))
    monkeypatch.setattr(dc, "_COSTS", dict(dc._COSTS))
    x = torch.empty(10, device=META)
    with pytest.raises(KeyError, match="no registered cost"), DispatchCounter():
        _three_kernels(x)
    dc.register_cost("cosmos_counter_test::three_kernels", lambda x, out: 7, launches=3)
    with DispatchCounter() as counter:
        _three_kernels(x)
    (record,) = counter.records  # the op's own aten calls are not seen: it counts as registered
    assert (record.cost.launches, record.cost.flops) == (3, 7)
    assert (record.cost.bytes_read, record.cost.bytes_written) == (40, 40)


def test_every_public_custom_op_registers_its_cost():
    names = {n for n in torch._C._dispatch_get_all_op_names() if n.startswith("cosmos_kernels::")}
    public = {n for n in names if not n.split("::")[1].startswith("_")}
    assert public, "no cosmos_kernels ops registered"
    assert public <= dc.registered_costs()


def test_attention_formula():
    q = torch.empty(2, 9, 3, 64, device=META)
    k = torch.empty(2, 4, 3, 64, device=META)
    assert dc.attention_flops(q, k, k) == 4 * 2 * 3 * 9 * 4 * 64


def test_meta_dispatches_like_cuda_only_when_asked():
    x, w = torch.empty(3, 5, 128, device=META), torch.empty(128, device=META)
    with DispatchCounter() as plain:
        cosmos_kernels.rms_norm(x, w)
    with _dispatch.meta_as_cuda(), DispatchCounter() as as_cuda:
        cosmos_kernels.rms_norm(x, w)
    assert all(r.name.startswith("aten.") for r in plain.records) and plain.totals().launches > 1
    (record,) = [r for r in as_cuda.records if r.cost.launches]
    assert record.name in ("cosmos_kernels::rms_norm", "cosmos_kernels::rms_norm_triton")
    assert not _dispatch.as_cuda(META)


def test_sections_split_the_records():
    x = torch.empty(4, device=META)
    with DispatchCounter() as counter:
        with counter.section("a"):
            x + 1
        with counter.section("b"):
            x * 2
            x * 3
    assert counter.totals("a").launches == 1 and counter.totals("b").launches == 2
    assert counter.totals().launches == 3


def test_in_place_ops_are_launches():
    x = torch.empty(8, device=META)
    with DispatchCounter() as counter:
        x.add_(1)
        x.zero_()
    add, zero = counter.records
    assert (add.cost.launches, add.cost.bytes_read, add.cost.bytes_written) == (1, 32, 32)
    assert (zero.cost.launches, zero.cost.bytes_read, zero.cost.bytes_written) == (1, 0, 32)
