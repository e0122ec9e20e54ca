"""`cosmos-policy backends`: what this machine can run, op by op and device by device.

Prints the build of the installed extensions, the backends each op can use on each available device (with the
results of the GPU probes that ran, all of them with `--probe`), the attention backends that import (SDPA, Triton,
flash-attn 3 / 4 / 2) and the attention choices the picker keeps on disk (`COSMOS_KERNELS_CACHE_DIR`).
`--json` prints one JSON object only.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

import torch

from cosmos_kernels.attention.flash import FLASH_MODULES, flash_attn_func  # in the order the attention op tries them

from ..errors import UsageError

# op -> the backends it accepts (what `resolve_backend` is given as `supported` for it)
OPS: dict[str, tuple[str, ...]] = {
    "layer_norm_modulate": ("reference", "cpu", "cuda", "triton"),
    "gated_residual_layer_norm_modulate": ("reference", "cpu", "cuda", "triton"),
    "rms_norm": ("reference", "cpu", "cuda", "triton"),
    "qk_norm_rope": ("reference", "cpu", "cuda", "triton"),
    "sampler_step": ("reference", "cpu", "cuda", "triton"),
    "linear_gelu": ("reference", "triton"),
    "layer_norm_modulate_fp8": ("reference", "triton"),
    "gated_residual_layer_norm_modulate_fp8": ("reference", "triton"),
    "quantize_rowwise": ("reference", "triton"),
    "gelu_quantize_rowwise": ("reference", "triton"),
    "fp8_linear_gated_residual": ("reference", "triton"),
    "fp8_linear_qk_norm_rope": ("reference", "triton"),
    "fp8_linear_head_norm": ("reference", "triton"),
    "attention_fp8": ("reference", "triton"),
    "channel_rms_norm_silu": ("reference", "cpu", "triton"),
    "residual_channel_rms_norm_silu": ("reference", "cpu", "triton"),
    "causal_channel_rms_norm_silu": ("reference", "cpu", "triton"),
    "residual_causal_channel_rms_norm_silu": ("reference", "cpu", "triton"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.add_argument("--probe", action="store_true",
                        help="run the probe of every fast GPU backend (on each CUDA device) before reporting")


def _devices() -> list[torch.device]:
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices += [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return devices


def _op_backends(devices: list[torch.device], probe: bool) -> dict[str, dict[str, dict[str, object]]]:
    """op -> device -> {"available": [...], "probes": {backend: passed}} (probes only where one ran)."""
    import cosmos_kernels  # noqa: F401  (registers the ops and their probes)
    from cosmos_kernels import backends as kernel_backends
    from cosmos_kernels.attention import ops as attention_ops

    ops = {**OPS, "attention": tuple(attention_ops.ATTENTION_BACKENDS)}
    report: dict[str, dict[str, dict[str, object]]] = {}
    for op, supported in ops.items():
        per_device: dict[str, dict[str, object]] = {}
        for device in devices:
            if op == "attention":  # flash-attn also needs fp16 / bf16 tensors and no repeated key
                available = [b for b in supported if b in ("reference", "sdpa")
                             or (b == "triton" and kernel_backends.triton_available(device))
                             or (b == "flash_attn" and device.type == "cuda"
                                 and flash_attn_func() is not None)]
            else:
                available = [b for b in supported if kernel_backends.backend_available(b, device)]
            probes: dict[str, bool] = {}
            for backend in available:
                if probe and device.type == "cuda" and kernel_backends.has_probe(op, backend):
                    kernel_backends.probe_passed(op, backend, device)
                result = kernel_backends.probe_result(op, backend, device)
                if result is not None:
                    probes[backend] = result
            per_device[str(device)] = {"available": available, "probes": probes}
        report[op] = per_device
    return report


def _version(module: str) -> dict[str, object]:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # absent or broken: say which
        return {"importable": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    return {"importable": True, "version": str(getattr(mod, "__version__", "?")),
            "flash_attn_func": hasattr(mod, "flash_attn_func")}


def _attention_backends() -> dict[str, object]:
    import torch.backends.cuda as cuda_backends

    sdpa = {"importable": True, "version": torch.__version__}
    if torch.cuda.is_available():
        sdpa["flash_sdp"] = bool(cuda_backends.flash_sdp_enabled())
        sdpa["mem_efficient_sdp"] = bool(cuda_backends.mem_efficient_sdp_enabled())
        sdpa["cudnn_sdp"] = bool(cuda_backends.cudnn_sdp_enabled())
    flash = {label: {"module": module, **_version(module)} for module, label in FLASH_MODULES}
    used = next((label for module, label in FLASH_MODULES
                 if flash[label]["importable"] and flash[label]["flash_attn_func"]), None)
    return {"sdpa": sdpa, "triton": _version("triton") | {"flash_attn_func": None},
            "flash_attn": {**flash, "used": used}}


def _cached_choices() -> dict[str, object]:
    """The picker's file as it is on disk (not this process's choices): path, entries, or why it was not read."""
    from cosmos_kernels import picker

    path = picker.choices_path()
    out: dict[str, object] = {"path": str(path), "exists": path.is_file(), "entries": {}}
    if not path.is_file():
        return out
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        out["error"] = f"cannot read it ({type(exc).__name__}: {exc})"
        return out
    if not isinstance(data, dict):
        out["error"] = "not a JSON object"
        return out
    out["entries"] = {k: v for k, v in sorted(data.items()) if isinstance(k, str) and isinstance(v, str)}
    return out


ENV_VARS = ("COSMOS_KERNELS_BACKEND", "COSMOS_KERNELS_ATTENTION", "COSMOS_KERNELS_DETERMINISTIC",
            "COSMOS_KERNELS_CACHE_DIR", "TRITON_INTERPRET")


def collect(probe: bool = False) -> dict[str, object]:
    import cosmos_kernels

    devices = _devices()
    return {
        "torch": torch.__version__,
        "environment": {name: os.environ[name] for name in ENV_VARS if name in os.environ},
        "build_info": cosmos_kernels.build_info(),
        "cuda_kernels_note": cosmos_kernels.cuda_kernels_note(),
        "devices": [str(d) for d in devices],
        "ops": _op_backends(devices, probe),
        "attention_backends": _attention_backends(),
        "attention_choices": _cached_choices(),
    }


def _print_text(report: dict, out) -> None:
    info = report["build_info"] or {}
    print(f"torch {report['torch']}; build: {info.get('mode', 'unknown')}"
          + (f", CUDA archs {', '.join(info['cuda_archs'])}" if info.get("cuda_archs") else ""), file=out)
    print(report["cuda_kernels_note"], file=out)
    for name, value in report["environment"].items():
        print(f"{name}={value}", file=out)
    print("\nbackends per op and device (probe results where a probe ran):", file=out)
    width = max(map(len, report["ops"]), default=0)
    for op, per_device in report["ops"].items():
        for device, entry in per_device.items():
            probes = entry["probes"]
            names = [b + (f" (probe {'passed' if probes[b] else 'FAILED'})" if b in probes else "")
                     for b in entry["available"]]
            print(f"  {op:{width}s} {device:8s} {', '.join(names)}", file=out)
    attn = report["attention_backends"]
    print("\nattention backends:", file=out)
    print(f"  sdpa        torch {attn['sdpa']['version']}", file=out)
    triton = attn["triton"]
    print(f"  triton      {triton['version'] if triton['importable'] else 'not importable'}", file=out)
    for label in ("FA3", "FA2"):
        entry = attn["flash_attn"][label]
        state = f"{entry['version']}" if entry["importable"] else "not importable"
        print(f"  flash_attn  {label} ({entry['module']}): {state}", file=out)
    print(f"  flash_attn used: {attn['flash_attn']['used'] or 'none'}", file=out)
    choices = report["attention_choices"]
    print(f"\nattention choices: {choices['path']}"
          + ("" if choices["exists"] else " (no file yet)"), file=out)
    if "error" in choices:
        print(f"  {choices['error']}", file=out)
    for key, value in choices["entries"].items():
        print(f"  {value:10s} {key}", file=out)


def run(args: argparse.Namespace) -> int:
    if args.probe and not torch.cuda.is_available():
        raise UsageError("--probe: no CUDA device here; the probes check GPU backends only")
    report = collect(probe=args.probe)
    if args.json:
        json.dump(report, sys.stdout, indent=1, sort_keys=True, default=str)
        sys.stdout.write("\n")
    else:
        _print_text(report, sys.stdout)
    return 0
