"""Ahead-of-time sm_90a compile report of every kernel in the package; no GPU needed.

    python -m cosmos_kernels.tools.compile_report [--json] [--no-cuda] [--no-triton]

Triton kernels (registered through `cosmos_kernels._registry`) are compiled with `triton.compile` for
`GPUTarget("cuda", 90, 32)`; their PTX goes through Triton's bundled ptxas (`-v`) and their cubin through
cuobjdump. CUDA sources in csrc/<family>/ are compiled with `nvcc -cubin -arch sm_90a -Xptxas -v`. One row per
kernel and configuration: registers, shared memory, spill bytes, HGMMA count. Exit status 1 on any spill,
on a matrix kernel without HGMMA (configurations whose dots are IEEE fp32 run on the FMA units and are exempt),
or on a kernel that fails to compile.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ARCH = "sm_90a"
_ENTRY = re.compile(r"Compiling entry function '([^']+)' for")
_REGS = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_STACK = re.compile(r"(\d+) bytes stack frame")


@dataclasses.dataclass
class Row:
    name: str
    config: str
    registers: int | None = None
    shared_bytes: int | None = None
    spill_bytes: int | None = None
    hgmma: int | None = None
    matrix: bool = False
    error: str | None = None

    def failures(self) -> list[str]:
        out = []
        if self.error:
            out.append(f"does not compile: {self.error}")
        if self.spill_bytes:
            out.append(f"spills {self.spill_bytes} bytes")
        if self.matrix and not self.hgmma:
            out.append("is a matrix kernel without HGMMA instructions")
        return out


def _triton_tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def parse_ptxas(log: str) -> dict[str, dict[str, int]]:
    """Per-function registers / shared / spill bytes from `ptxas -v` output."""
    stats: dict[str, dict[str, int]] = {}
    current = None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            current = stats.setdefault(m.group(1), {"registers": 0, "shared": 0, "spill": 0, "stack": 0})
        elif current is not None:
            if m := _SPILL.search(line):
                current["spill"] = int(m.group(1)) + int(m.group(2))
            if m := _STACK.search(line):
                current["stack"] = int(m.group(1))
            if m := _REGS.search(line):
                current["registers"] = int(m.group(1))
            if m := _SMEM.search(line):
                current["shared"] = int(m.group(1))
    return stats


def count_hgmma(cubin: Path) -> dict[str, int]:
    """Warp-group MMA instructions per function in a cubin's SASS: HGMMA (16-bit operands) and QGMMA (FP8)."""
    sass = subprocess.run([_triton_tool("cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True,
                          check=True).stdout
    counts: dict[str, int] = {}
    current = None
    for line in sass.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            current = m.group(1)
            counts[current] = 0
        elif current is not None and ("HGMMA" in line or "QGMMA" in line):
            counts[current] += 1
    return counts


def import_kernel_modules() -> list[Row]:
    """Import every module of the package so that each kernel registers itself (Triton kernels live in
    modules named `triton`, which the ops import only on first launch). A module that needs an absent optional
    package (the diffusers integrations on a machine without diffusers) is skipped with a note on stderr; a
    kernel module that fails to import is a failing row."""
    import cosmos_kernels

    rows = []
    for info in pkgutil.walk_packages(cosmos_kernels.__path__, "cosmos_kernels."):
        if ".tools" in info.name:
            continue
        try:
            importlib.import_module(info.name)
        except ModuleNotFoundError as exc:
            if info.name.rsplit(".", 1)[-1] == "triton" or (exc.name or "").startswith("cosmos_kernels"):
                rows.append(Row(info.name, "-", error=f"does not import: {exc}"))
            else:
                print(f"note: {info.name} skipped ({exc}); it registers no kernels", file=sys.stderr)
    return rows


def triton_rows() -> list[Row]:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from cosmos_kernels._registry import TRITON_KERNELS

    rows = []
    target = GPUTarget("cuda", 90, 32)
    for entry in TRITON_KERNELS.values():
        for cfg in entry.configs:
            row = Row(entry.name, cfg.label, matrix=entry.matrix and cfg.tensor_cores)
            rows.append(row)
            try:
                attrs = {(entry.kernel.arg_names.index(name),): [["tt.divisibility", 16]] for name in cfg.divisible}
                src = ASTSource(fn=entry.kernel, signature=cfg.signature, constexprs=cfg.constexprs, attrs=attrs)
                compiled = triton.compile(src, target=target,
                                          options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
                row.shared_bytes = int(compiled.metadata.shared)
                with tempfile.TemporaryDirectory() as tmp:
                    ptx, cubin = Path(tmp, "k.ptx"), Path(tmp, "k.cubin")
                    ptx.write_text(compiled.asm["ptx"])
                    log = subprocess.run([_triton_tool("ptxas"), "-v", f"--gpu-name={ARCH}", str(ptx), "-o",
                                          str(cubin)], capture_output=True, text=True, check=True)
                    stats = next(iter(parse_ptxas(log.stdout + log.stderr).values()))
                    cubin.write_bytes(compiled.asm["cubin"])
                    row.hgmma = sum(count_hgmma(cubin).values())
                row.registers = stats["registers"]
                row.spill_bytes = stats["spill"]
            except Exception as exc:  # reported as a failing row
                row.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    return rows


def _demangle(names: list[str]) -> dict[str, str]:
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
        return dict(zip(names, out.splitlines()))
    except (OSError, subprocess.CalledProcessError):
        return {n: n for n in names}


def cuda_rows(source_dir: Path) -> list[Row]:
    from torch.utils.cpp_extension import include_paths

    from cosmos_kernels._registry import CUDA_MATRIX_KERNELS

    rows = []
    cuda_home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    if not os.path.exists(nvcc):
        return [Row("csrc", "-", error=f"{nvcc} not found (set CUDA_HOME)")]
    includes = [f"-I{p}" for p in [str(source_dir), *include_paths("cuda")]]
    for src in sorted(source_dir.glob("*/*.cu")):
        with tempfile.TemporaryDirectory() as tmp:
            cubin = Path(tmp, "k.cubin")
            cmd = [nvcc, "-cubin", f"-gencode=arch=compute_90a,code={ARCH}", "-O3", "-std=c++20",
                   "--expt-relaxed-constexpr", "--use_fast_math", "-Xptxas", "-v", *includes, str(src),
                   "-o", str(cubin)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                rows.append(Row(src.name, "-", error=proc.stderr.strip().splitlines()[-1] if proc.stderr else "nvcc"))
                continue
            stats = parse_ptxas(proc.stdout + proc.stderr)
            hgmma = count_hgmma(cubin)
        names = _demangle(list(stats))
        for mangled, st in stats.items():
            pretty = names.get(mangled, mangled).replace("(anonymous namespace)::", "")
            kernel = pretty.split("(")[0]
            base, _, config = kernel.partition("<")
            matrix = any(s in mangled or s in pretty for s in CUDA_MATRIX_KERNELS)
            rows.append(Row(f"{src.stem}:{base.split('::')[-1]}", ("<" + config) if config else "-",
                            st["registers"], st["shared"], st["spill"], hgmma.get(mangled, 0), matrix))
    return rows


def _print_table(rows: list[Row]) -> None:
    header = f"{'kernel':36} {'config':44} {'regs':>5} {'smem':>7} {'spill':>6} {'hgmma':>6}  status"
    print(header)
    print("-" * len(header))
    for r in rows:
        status = "; ".join(r.failures()) or "ok"
        fmt = lambda v: "-" if v is None else str(v)  # noqa: E731
        print(f"{r.name[:36]:36} {r.config[:44]:44} {fmt(r.registers):>5} {fmt(r.shared_bytes):>7} "
              f"{fmt(r.spill_bytes):>6} {fmt(r.hgmma):>6}  {status}")


def main(argv: list[str] | None = None) -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        # Kernels defined under the interpreter cannot be compiled: run again without it.
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        cmd = [sys.executable, "-m", "cosmos_kernels.tools.compile_report", *(sys.argv[1:] if argv is None else argv)]
        return subprocess.run(cmd, env=env).returncode
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA sources")
    parser.add_argument("--no-triton", action="store_true", help="skip the Triton kernels")
    parser.add_argument("--csrc", type=Path, default=Path(__file__).resolve().parents[2] / "csrc",
                        help="directory of the CUDA sources (default: the source checkout's csrc)")
    args = parser.parse_args(argv)
    rows: list[Row] = []
    if not args.no_triton:
        rows += import_kernel_modules()
        rows += triton_rows()
    if not args.no_cuda:
        if args.csrc.is_dir():
            rows += cuda_rows(args.csrc)
        else:
            rows.append(Row("csrc", "-", error=f"{args.csrc} not found (pass --csrc or --no-cuda)"))
    if args.json:
        keys = ("name", "config", "registers", "shared_bytes", "spill_bytes", "hgmma")
        print(json.dumps([{k: getattr(r, k) for k in keys} for r in rows], indent=1))
    else:
        _print_table(rows)
    failed = [r for r in rows if r.failures()]
    for r in failed:
        print(f"FAIL {r.name} [{r.config}]: {'; '.join(r.failures())}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
