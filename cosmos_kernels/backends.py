"""What code outside the ops may ask of the backend choice (`_dispatch.py`): which backends run on a device, the
outcome of their GPU probes, the one-time work a CUDA-graph capture deferred (`run_deferred` after each capture),
and dispatching meta tensors as CUDA ones to count a GPU's kernels without one (`meta_as_cuda`)."""

from cosmos_kernels._dispatch import (
    BACKEND_ENV,
    DETERMINISTIC_ENV,
    backend_available,
    deferred,
    has_probe,
    meta_as_cuda,
    probe_passed,
    probe_result,
    refresh_environment,
    run_deferred,
    triton_available,
)

__all__ = ["BACKEND_ENV", "DETERMINISTIC_ENV", "backend_available", "deferred", "has_probe", "meta_as_cuda",
           "probe_passed", "probe_result", "refresh_environment", "run_deferred", "triton_available"]
