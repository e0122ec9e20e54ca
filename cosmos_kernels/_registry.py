"""Kernels register here for the ahead-of-time compile report (`python -m cosmos_kernels.tools.compile_report`).

A Triton kernel registers itself with the configurations it is launched with at the model's shapes; the
report compiles each for sm_90a without a GPU. `matrix=True` marks kernels whose SASS must use HGMMA.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TritonConfig:
    label: str
    signature: dict[str, str]
    constexprs: dict[str, Any]
    num_warps: int = 4
    num_stages: int = 3
    # Arguments the launch sees divisible by 16 (pointers 16-byte aligned, sizes and strides multiples of 16):
    # Triton specialises on it at run time, and it decides vector widths and asynchronous copies.
    divisible: tuple[str, ...] = ()
    # False for dots in IEEE fp32: they run on the FMA units, so a matrix kernel's HGMMA is not expected there.
    tensor_cores: bool = True


@dataclass
class TritonKernelEntry:
    name: str
    kernel: Any  # triton.JITFunction
    configs: list[TritonConfig] = field(default_factory=list)
    matrix: bool = False


TRITON_KERNELS: dict[str, TritonKernelEntry] = {}
# CUDA kernel name substrings (mangled names contain them) whose SASS must contain HGMMA.
CUDA_MATRIX_KERNELS: set[str] = set()


def register_triton_kernel(name: str, kernel: Any, configs: list[TritonConfig], *, matrix: bool = False) -> None:
    TRITON_KERNELS[name] = TritonKernelEntry(name, kernel, list(configs), matrix)


def register_cuda_matrix_kernel(name_substring: str) -> None:
    CUDA_MATRIX_KERNELS.add(name_substring)
