"""The sm_90a compile report: its parsing, and that it catches spills and matrix kernels without HGMMA."""

import json
import os
import subprocess
import sys

from cosmos_kernels.tools import compile_report

PTXAS_LOG = """ptxas info    : Compiling entry function 'k_a' for 'sm_90a'
ptxas info    : Function properties for k_a
    16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 1024 bytes smem, 400 bytes cmem[0]
ptxas info    : Compiling entry function 'k_b' for 'sm_90a'
ptxas info    : Function properties for k_b
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 0 barriers, 380 bytes cmem[0]
"""

# Runs in a child process without TRITON_INTERPRET (interpreted kernels cannot be compiled ahead of time).
_CHILD = """
import json, dataclasses
from cosmos_kernels import _registry
from cosmos_kernels.tools import compile_report
from tests.tools import _report_kernels as k
_registry.TRITON_KERNELS.clear()
_registry.register_triton_kernel("test.scale", k.scale_kernel, [_registry.TritonConfig(
    "fp32", {"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"}, {"BLOCK": 256})], matrix=True)
_registry.register_triton_kernel("test.fma", k.scale_kernel, [_registry.TritonConfig(
    "fp32 ieee", {"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"}, {"BLOCK": 256},
    tensor_cores=False)], matrix=True)
_registry.register_triton_kernel("test.matmul", k.matmul_tile_kernel, [_registry.TritonConfig(
    "fp16 64x64x32", {"a_ptr": "*fp16", "b_ptr": "*fp16", "c_ptr": "*fp32", "M": "constexpr", "N": "constexpr",
    "K": "constexpr"}, {"M": 64, "N": 64, "K": 32})], matrix=True)
_registry.register_triton_kernel("test.matmul_fp8", k.matmul_tile_kernel, [_registry.TritonConfig(
    "e4m3 64x64x64", {"a_ptr": "*fp8e4nv", "b_ptr": "*fp8e4nv", "c_ptr": "*fp32", "M": "constexpr",
    "N": "constexpr", "K": "constexpr"}, {"M": 64, "N": 64, "K": 64})], matrix=True)
rows = compile_report.triton_rows()
print(json.dumps([dict(dataclasses.asdict(r), failures=r.failures()) for r in rows]))
"""


def test_parse_ptxas():
    stats = compile_report.parse_ptxas(PTXAS_LOG)
    assert stats["k_a"] == {"registers": 255, "shared": 1024, "spill": 12, "stack": 16}
    assert stats["k_b"]["spill"] == 0 and stats["k_b"]["registers"] == 40


def test_row_failures():
    assert compile_report.Row("k", "c", spill_bytes=12).failures() == ["spills 12 bytes"]
    assert compile_report.Row("k", "c", spill_bytes=0, hgmma=0, matrix=True).failures()
    assert compile_report.Row("k", "c", spill_bytes=0, hgmma=16, matrix=True).failures() == []


def test_matrix_kernels_are_checked_for_hgmma():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, cwd=root, capture_output=True, text=True, check=True)
    scale, fma, matmul, matmul_fp8 = json.loads(out.stdout.strip().splitlines()[-1])
    assert scale["error"] is None and scale["spill_bytes"] == 0 and scale["registers"] > 0
    assert scale["hgmma"] == 0 and scale["failures"] == ["is a matrix kernel without HGMMA instructions"]
    assert fma["hgmma"] == 0 and fma["failures"] == []  # IEEE fp32 dots run on the FMA units: none expected
    assert matmul["error"] is None and matmul["hgmma"] > 0 and matmul["failures"] == []
    # e4m3 operands run QGMMA, Hopper's FP8 warp-group MMA: counted as well
    assert matmul_fp8["error"] is None and matmul_fp8["hgmma"] > 0 and matmul_fp8["failures"] == []


def test_modules_needing_absent_packages_are_skipped_but_kernel_modules_fail(monkeypatch, capsys):
    """On a machine without diffusers the integrations do not import; the kernels still get their report."""
    import importlib
    import pkgutil
    from types import SimpleNamespace

    names = ["cosmos_kernels.integrations.diffusers_cosmos", "cosmos_kernels.norms.triton", "cosmos_kernels.ok"]
    missing = {names[0]: "diffusers", names[1]: "triton"}

    def import_module(name):
        if name in missing:
            raise ModuleNotFoundError(f"No module named '{missing[name]}'", name=missing[name])

    monkeypatch.setattr(pkgutil, "walk_packages", lambda *args, **kwargs: [SimpleNamespace(name=n) for n in names])
    monkeypatch.setattr(importlib, "import_module", import_module)
    rows = compile_report.import_kernel_modules()
    assert [(r.name, bool(r.failures())) for r in rows] == [("cosmos_kernels.norms.triton", True)]
    assert "diffusers_cosmos skipped" in capsys.readouterr().err
