"""Package-level promises: importing never initialises CUDA nor needs Triton; the ops are registered."""

import subprocess
import sys

import pytest
import torch

from cosmos_kernels import _ext

_NO_TRITON = """
import sys
import torch
sys.modules["triton"] = None  # `import triton` now fails, as on a CPU-only torch install
import cosmos_kernels as ck
x, s = torch.randn(3, 64), torch.randn(64)
ck.layer_norm_modulate(x, s, s)
assert not ck._dispatch.backend_available("triton", torch.device("cpu"))
print("ok")
"""


def test_import_does_not_initialise_cuda():
    code = "import torch, cosmos_kernels; assert not torch.cuda.is_initialized(); print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_works_without_triton():
    out = subprocess.run([sys.executable, "-c", _NO_TRITON], capture_output=True, text=True,
                         env={"TRITON_INTERPRET": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr


def test_ops_are_registered():
    if not _ext.has_cpu_extension():
        pytest.skip("cosmos_kernels._C not built")
    for name in ("layer_norm_modulate", "gated_residual_layer_norm_modulate", "rms_norm"):
        assert hasattr(torch.ops.cosmos_kernels, name)
        assert hasattr(torch.ops.cosmos_kernels, name + "_triton")
