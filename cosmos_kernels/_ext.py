"""Loading of the compiled extensions.

`_C` holds the op schemas (TORCH_LIBRARY) and the CPU kernels; `_C_cuda` the CUDA kernels. Either may be
missing (a pure-Python checkout, a CPU-only build): the ops then fall back to Triton or the reference.
Loading `_C_cuda` links against libtorch_cuda but does not initialise a CUDA context.
"""

from __future__ import annotations

import importlib
import json
import os
import warnings

import torch  # noqa: F401  (loads libc10 / libtorch before the extensions link against them)

_loaded: dict[str, bool] = {}
_errors: dict[str, str] = {}


def _load(name: str) -> bool:
    if name not in _loaded:
        try:
            importlib.import_module(f"cosmos_kernels.{name}")
            _loaded[name] = True
        except (ImportError, OSError) as exc:  # not built, or built against another torch
            _loaded[name] = False
            _errors[name] = f"{type(exc).__name__}: {exc}"
    return _loaded[name]


def has_cpu_extension() -> bool:
    """True when the C++ extension (op schemas + CPU kernels) is importable."""
    return _load("_C")


def has_cuda_extension() -> bool:
    """True when the CUDA kernels are built and loaded (needs `_C` for the schemas)."""
    return has_cpu_extension() and _load("_C_cuda")


def extension_error(name: str) -> str | None:
    """Why an extension failed to load, or None."""
    return _errors.get(name)


def build_info() -> dict:
    """How the installed extensions were built, as setup.py recorded it: {"mode", "cuda", "cuda_archs", "note"}
    ("note" says in one line why the CUDA kernels were or were not built). Empty for a checkout never built."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_build_info.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def cuda_kernels_note() -> str:
    """One line on the CUDA kernels of this install: loaded, or why not and how to get them."""
    if has_cuda_extension():
        return "CUDA kernels: built for " + ", ".join(build_info().get("cuda_archs") or ["this machine"])
    note = build_info().get("note")
    if note and not build_info().get("cuda"):
        return note
    error = extension_error("_C_cuda")
    return f"CUDA kernels not loaded ({error})" if error else "CUDA kernels not built"


def load_all() -> None:
    if not has_cpu_extension():
        warnings.warn(
            "cosmos_kernels._C is not available (" + (extension_error("_C") or "not built") + "); "
            "ops run on the Triton or reference backends.",
            RuntimeWarning,
            stacklevel=3,
        )
        return
    has_cuda_extension()
