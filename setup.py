"""Builds cosmos_kernels._C (op schemas + C++ CPU kernels, always) and cosmos_kernels._C_cuda.

COSMOS_BUILD_CUDA:
  "auto" (default) builds the CUDA kernels for the GPUs this machine can see, when a CUDA build of PyTorch and
         the CUDA toolkit are present; with no GPU visible it skips them, and any failure only warns. The CUDA
         extension is optional in this mode: an install never fails because of it.
  "1"    requires the CUDA kernels, for every supported architecture (sm_80, sm_86, sm_89, sm_90a and the
         Blackwell targets this nvcc supports), e.g. to build on a machine without a GPU.
  "0"    skips them.
TORCH_CUDA_ARCH_LIST overrides the architectures in every mode. COSMOS_CPU_FLAGS overrides the CPU ISA flags
(default: AVX-512 or AVX2+FMA on x86-64 build machines that have them, since at::vec kernels compile for one ISA).

The CUDA toolkit is found without CUDA_HOME: torch's guess is checked (a `nvcc` wrapper script on the PATH makes
it guess wrong), then the toolkit that nvcc itself reports, /usr/local/cuda*, and the toolkit's pip wheels.
Why the CUDA kernels were or were not built is written to cosmos_kernels/_build_info.json, which the package
reads at run time (`cosmos_kernels.build_info()`).
"""

from __future__ import annotations

import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = ("8.0", "8.6", "8.9", "9.0a")
BLACKWELL_ARCHS = ("10.0a", "12.0a")
BUILD_INFO = "_build_info.json"


def _note(message: str) -> None:
    print(f"cosmos-kernels: {message}", file=sys.stderr, flush=True)


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


# -- the CUDA toolkit ---------------------------------------------------------------------------------------------

def _is_toolkit(home: str | None) -> bool:
    """A usable toolkit has nvcc, the runtime headers and libcudart (lib64/ or targets/<arch>/lib)."""
    if not home or not os.path.isfile(os.path.join(home, "bin", "nvcc")):
        return False
    if not os.path.isfile(os.path.join(home, "include", "cuda_runtime.h")):
        return False
    libs = [os.path.join(home, d) for d in ("lib64", "lib")] + glob.glob(os.path.join(home, "targets", "*", "lib"))
    return any(glob.glob(os.path.join(d, "libcudart.so*")) for d in libs)


def _home_reported_by_nvcc(nvcc: str) -> str | None:
    """The toolkit an nvcc belongs to, as nvcc itself reports it (`TOP=` of a dry run), so that a wrapper script
    on the PATH leads to the real installation."""
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "probe.cu")
        open(source, "w").close()
        try:
            out = subprocess.run([nvcc, "-dryrun", "-c", source, "-o", os.path.join(tmp, "probe.o")],
                                 capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return None
    for line in (out.stdout + out.stderr).splitlines():
        if line.startswith("#$ TOP="):
            return os.path.realpath(line[len("#$ TOP="):].strip())  # "<home>/bin/.."
    return None


def find_cuda_home() -> tuple[str | None, str]:
    """(toolkit directory or None, where it was found / why none was)."""
    tried = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home:
            if _is_toolkit(home):
                return home, f"${var}"
            tried.append(f"${var}={home}")
    nvcc = shutil.which("nvcc")
    if nvcc:
        for home in (os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), _home_reported_by_nvcc(nvcc)):
            if _is_toolkit(home):
                return home, f"the toolkit of {nvcc}"
        tried.append(f"nvcc at {nvcc}")
    purelib = sysconfig.get_paths()["purelib"]
    candidates = ["/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True), "/opt/cuda",
                  *sorted(glob.glob(os.path.join(purelib, "nvidia", "cu1*"))),
                  os.path.join(purelib, "nvidia", "cuda_nvcc")]
    for home in candidates:
        if _is_toolkit(home):
            return home, home
    tried.append("/usr/local/cuda*, the nvidia pip wheels")
    return None, "no CUDA toolkit found (tried " + ", ".join(tried) + "; set CUDA_HOME)"


def _supported_archs(cuda_home: str) -> list[str]:
    try:
        listed = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--list-gpu-arch"],
                                capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        listed = ""
    archs = [a for a in DEFAULT_ARCHS if not listed or f"compute_{a.replace('.', '').rstrip('a')}" in listed]
    archs += [a for a in BLACKWELL_ARCHS if f"compute_{a.replace('.', '').rstrip('a')}" in listed]
    return archs


def _visible_archs() -> list[str]:
    """The architectures of the GPUs this machine can see ("9.0a" for Hopper: the kernels use its features)."""
    import torch

    try:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken driver: as good as no GPU
        count = 0
    archs = []
    for i in range(count):
        major, minor = torch.cuda.get_device_capability(i)
        arch = f"{major}.{minor}" + ("a" if major in (9, 10, 12) else "")
        if arch not in archs:
            archs.append(arch)
    return archs


def _cuda_plan(mode: str) -> tuple[list[str] | None, str]:
    """(architectures to build, or None to skip the CUDA kernels; a one-line reason)."""
    import torch

    if torch.version.cuda is None:
        return None, (f"CUDA kernels skipped: torch {torch.__version__} is a CPU build; install a CUDA build of "
                      "torch and reinstall to get them")
    cuda_home, where = find_cuda_home()
    if cuda_home is not None:
        os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension when it is first imported
    if mode == "0":
        return None, "CUDA kernels skipped (COSMOS_BUILD_CUDA=0)"
    if cuda_home is None:
        return None, f"CUDA kernels skipped: {where}"
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        archs = os.environ["TORCH_CUDA_ARCH_LIST"].replace(",", ";").replace(" ", ";").split(";")
        return [a for a in archs if a], f"CUDA kernels for TORCH_CUDA_ARCH_LIST ({cuda_home})"
    if mode == "1":
        return _supported_archs(cuda_home), f"CUDA kernels for every supported architecture ({cuda_home})"
    visible = _visible_archs()
    if not visible:
        return None, ("CUDA kernels skipped: no GPU visible; COSMOS_BUILD_CUDA=1 builds them for every supported "
                      "architecture (Triton and CPU kernels need no build)")
    return visible, f"CUDA kernels for the visible GPUs ({cuda_home})"


def _gencode(archs: list[str]) -> list[str]:
    flags = []
    for arch in archs:
        num = arch.replace(".", "").replace("+PTX", "")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
    return flags


# -- extensions ---------------------------------------------------------------------------------------------------

def _system_includes() -> list[str]:
    """torch's headers as system headers: their warnings at -O3 bury a real error in thousands of lines, while
    ours stay on (GCC ignores a -I for a directory that is also given as -isystem)."""
    from torch.utils.cpp_extension import include_paths

    return [flag for path in include_paths() for flag in ("-isystem", path)]


def _extensions(mode: str):
    archs, reason = _cuda_plan(mode)
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    include = [os.path.join(ROOT, "csrc")]
    quiet = _system_includes()
    # GCC reports -Wmaybe-uninitialized inside its own AVX-512 intrinsics once torch's vector code is inlined into
    # ours (hundreds of lines per file at -O3, none about our code), system headers or not
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-Wno-maybe-uninitialized", *quiet, *_cpu_flags()]
    cpu_sources = sorted(["csrc/common/registration.cpp", *glob.glob("csrc/*/*_cpu.cpp")])
    exts = [CppExtension("cosmos_kernels._C", cpu_sources, include_dirs=include,
                         extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])]
    if archs is not None:
        nvcc = ["-O3", "-std=c++20", "--use_fast_math", "--expt-relaxed-constexpr", "-lineinfo",
                *quiet, *_gencode(archs)]
        cuda_sources = sorted(glob.glob("csrc/*/*.cu") + ["csrc/common/registration_cuda.cpp"])  # .cpp: the module
        cuda = CUDAExtension("cosmos_kernels._C_cuda", cuda_sources, include_dirs=include,
                             extra_compile_args={"cxx": ["-O3", "-std=c++20", *quiet], "nvcc": nvcc})
        cuda.optional = mode == "auto"  # setuptools then neither fails the build nor copies a missing library
        exts.append(cuda)
    return exts, {"mode": mode, "cuda": archs is not None, "cuda_archs": archs or [], "note": reason}


def _build_ext_class(info: dict):
    from torch.utils.cpp_extension import BuildExtension

    class Build(BuildExtension):
        def build_extension(self, ext):
            if ext.name.endswith("_C_cuda") and info["mode"] == "auto":
                try:
                    return super().build_extension(ext)
                except Exception as exc:  # auto never fails the install
                    first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
                    info.update(cuda=False, note=f"CUDA kernels not built ({first[:200]}); rerun with "
                                                 "COSMOS_BUILD_CUDA=1 pip install -v ... to see the error")
                    _note(info["note"])
                    return None
            return super().build_extension(ext)

        def run(self):
            super().run()
            self._write_build_info()

        def _write_build_info(self):
            # beside the built library, and in the source tree for in-place / editable builds
            targets = {os.path.dirname(self.get_ext_fullpath("cosmos_kernels._C"))}
            if self.inplace or getattr(self, "editable_mode", False):
                targets.add(os.path.join(ROOT, "cosmos_kernels"))
            for directory in targets:
                os.makedirs(directory, exist_ok=True)
                with open(os.path.join(directory, BUILD_INFO), "w") as f:
                    json.dump(info, f, indent=1)

    return Build.with_options(use_ninja=True)


def main() -> None:
    mode = os.environ.get("COSMOS_BUILD_CUDA", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        sys.exit(f"cosmos-kernels: COSMOS_BUILD_CUDA must be auto, 0 or 1, got {mode!r}")
    if mode == "1":
        archs, reason = _cuda_plan(mode)
        if archs is None:
            sys.exit(f"cosmos-kernels: COSMOS_BUILD_CUDA=1, but {reason.split(': ', 1)[-1]}")
    exts, info = _extensions(mode)
    _note(info["note"])
    setup(ext_modules=exts, cmdclass={"build_ext": _build_ext_class(info)})


main()
