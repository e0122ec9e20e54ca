"""cosmos_policy: a thin inference wrapper for Cosmos Policy checkpoints on the cosmos_kernels ops.

The folders, from the bottom up: `model/` (the DiT, the VAE, the text embeddings and their checkpoint files),
`policy/` (observation -> action chunk, planning, chunk scheduling), `cli/` (the `cosmos-policy` command line), and
on it `serve/` (the policy server) and `evaluation/` (closed-loop LIBERO), which add subcommands. A folder imports
the folders below it, never those above. Beside them: `errors.py` and `profiling.py`, leaves that every folder may
import (one-line user errors, NVTX ranges), and `testing.py` (tiny random checkpoints for tests and demos), which
stands on the policy.
"""

import sys

from cosmos_policy.model import CosmosDiT, DiTConfig
from cosmos_policy.policy import CosmosPolicy, PlanningModel, control, planning

# The documented module paths of planning and the client's chunk schedulers, which live in the policy's folder.
sys.modules[f"{__name__}.planning"] = planning
sys.modules[f"{__name__}.control"] = control

__all__ = ["CosmosDiT", "CosmosPolicy", "DiTConfig", "PlanningModel"]
