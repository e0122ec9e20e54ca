"""Few-step samplers for EDM / rectified-flow diffusion models.

- `sample()`: the functional, float64 sampler (parity path with the official Cosmos Policy sampler).
- `Sampler`: the fixed-shape, sync-free loop over the fused `sampler_step` op (CUDA-graph capturable).
- `sample_flow_unipc()` / `FlowUniPCSampler`: the rectified-flow UniPC of the Cosmos-Predict2.5 models (float32,
  functional and fixed-shape sync-free forms), with its schedule (`flow_unipc_schedule`).
- schedules by name (`get_sigmas`, `SCHEDULES`), solvers by name (`SOLVERS`), `arch_invariant_noise`.
"""

from cosmos_kernels.sampling.flow_unipc import (
    FlowUniPCSchedule,
    flow_unipc_coefficients,
    flow_unipc_schedule,
    sample_flow_unipc,
)
from cosmos_kernels.sampling.flow_unipc_sampler import FlowUniPCSampler
from cosmos_kernels.sampling.noise import arch_invariant_noise
from cosmos_kernels.sampling.sampler import PARAMETRIZATIONS, Sampler
from cosmos_kernels.sampling.schedules import (
    SCHEDULES,
    exponential,
    flow,
    get_sigmas,
    karras,
    linear,
    polyexponential,
)
from cosmos_kernels.sampling.solvers import (
    MULTISTEP_SOLVERS,
    SOLVERS,
    MultistepPlan,
    multistep_coefficients,
    multistep_plan,
    phi,
    sample,
)
from cosmos_kernels.sampling.step import sampler_step

__all__ = [
    "FlowUniPCSampler",
    "FlowUniPCSchedule",
    "MULTISTEP_SOLVERS",
    "SCHEDULES",
    "SOLVERS",
    "MultistepPlan",
    "PARAMETRIZATIONS",
    "Sampler",
    "arch_invariant_noise",
    "exponential",
    "flow",
    "flow_unipc_coefficients",
    "flow_unipc_schedule",
    "get_sigmas",
    "karras",
    "linear",
    "multistep_coefficients",
    "multistep_plan",
    "phi",
    "polyexponential",
    "sample",
    "sample_flow_unipc",
    "sampler_step",
]
