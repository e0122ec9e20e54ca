"""Builds cosmos_kernels._C (op schemas + C++ CPU kernels, always) and cosmos_kernels._C_cuda.

COSMOS_BUILD_CUDA: "auto" (default) builds the CUDA kernels when nvcc and a CUDA build of PyTorch are
present, and a failed CUDA build only warns; "1" requires it; "0" skips it.
TORCH_CUDA_ARCH_LIST overrides the GPU architectures (default: sm_80, sm_86, sm_89, sm_90a, and the
Blackwell targets this nvcc supports). COSMOS_CPU_FLAGS overrides the CPU ISA flags (default: AVX-512 or AVX2+FMA
on x86-64 build machines that have them, since at::vec kernels compile for one ISA).
"""

from __future__ import annotations

import glob
import os
import platform
import subprocess
import sys
import warnings

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _cpu_flags() -> list[str]:
    if "COSMOS_CPU_FLAGS" in os.environ:
        return os.environ["COSMOS_CPU_FLAGS"].split()
    if platform.machine() in ("x86_64", "AMD64"):
        try:
            with open("/proc/cpuinfo") as f:
                info = f.read()
        except OSError:
            info = ""
        if all(f" {f} " in info for f in ("avx512f", "avx512bw", "avx512vl", "avx512dq", "fma")):
            return ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
                    "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]
        if " avx2 " in info and " fma " in info:
            return ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return ["-DCPU_CAPABILITY=DEFAULT"]


def _nvcc_arch_flags() -> list[str]:
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return []  # torch.utils.cpp_extension turns TORCH_CUDA_ARCH_LIST into -gencode flags
    archs = ["80", "86", "89", "90a"]
    try:
        from torch.utils.cpp_extension import CUDA_HOME

        out = subprocess.run([os.path.join(CUDA_HOME, "bin", "nvcc"), "--list-gpu-arch"],
                             capture_output=True, text=True, check=True).stdout
        archs += [a for a in ("100a", "120a") if f"compute_{a[:-1]}" in out]
    except Exception:
        pass
    flags = []
    for a in archs:
        flags.append(f"-gencode=arch=compute_{a},code=sm_{a}")
    return flags


def _extensions():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    include = [os.path.join(ROOT, "csrc", "include")]
    cxx = ["-O3", "-std=c++20", "-fopenmp", *_cpu_flags()]
    cpu_sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    exts = [CppExtension("cosmos_kernels._C", cpu_sources, include_dirs=include,
                         extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])]

    mode = os.environ.get("COSMOS_BUILD_CUDA", "auto").lower()
    if mode not in ("auto", "0", "1"):
        sys.exit(f"COSMOS_BUILD_CUDA must be auto, 0 or 1, got {mode!r}")
    cuda_possible = torch.version.cuda is not None and CUDA_HOME is not None
    if mode == "1" and not cuda_possible:
        sys.exit("COSMOS_BUILD_CUDA=1 needs a CUDA build of PyTorch and nvcc (set CUDA_HOME)")
    if mode == "1" or (mode == "auto" and cuda_possible):
        cuda_sources = sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
        nvcc = ["-O3", "-std=c++20", "--use_fast_math", "--expt-relaxed-constexpr", "-lineinfo",
                *_nvcc_arch_flags()]
        exts.append(CUDAExtension("cosmos_kernels._C_cuda", cuda_sources, include_dirs=include,
                                  extra_compile_args={"cxx": ["-O3", "-std=c++20"], "nvcc": nvcc}))
    return exts, mode


def _build_ext_class(mode: str):
    from torch.utils.cpp_extension import BuildExtension

    class Build(BuildExtension):
        def build_extension(self, ext):
            if ext.name.endswith("_C_cuda") and mode == "auto":
                try:
                    return super().build_extension(ext)
                except Exception as exc:  # auto never fails the install
                    warnings.warn(f"cosmos_kernels: CUDA kernels not built ({exc}); "
                                  "Triton and CPU kernels remain available.", stacklevel=1)
                    return None
            return super().build_extension(ext)

    return Build.with_options(use_ninja=True)


exts, mode = _extensions()
setup(ext_modules=exts, cmdclass={"build_ext": _build_ext_class(mode)})
