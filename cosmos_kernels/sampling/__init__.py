"""Few-step samplers for EDM / rectified-flow diffusion models.

- `sample()`: the functional, float64 sampler (parity path with the official Cosmos Policy sampler).
- schedules by name (`get_sigmas`, `SCHEDULES`), solvers by name (`SOLVERS`), `arch_invariant_noise`.
"""

from cosmos_kernels.sampling.noise import arch_invariant_noise
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

__all__ = [
    "MULTISTEP_SOLVERS",
    "SCHEDULES",
    "SOLVERS",
    "MultistepPlan",
    "arch_invariant_noise",
    "exponential",
    "flow",
    "get_sigmas",
    "karras",
    "linear",
    "multistep_coefficients",
    "multistep_plan",
    "phi",
    "polyexponential",
    "sample",
]
