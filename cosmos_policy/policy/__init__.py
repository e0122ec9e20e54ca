"""The policy: an observation in, an action chunk out. `CosmosPolicy` (`policy.py`) checks the observation
(`observation.py`), prepares its images as the official server does (`preprocess.py`), seeds the noise (`seeds.py`),
samples the latent video (on CUDA as one captured graph, `graphs.py`) and reads the actions from it; it finds a
checkpoint's files (`files.py`) and plans best-of-N with a planning network (`planning.py`). `control.py` schedules
the chunks on the client. Modules here import the model (`cosmos_policy.model`), cosmos_kernels and the package's
leaves, never the command line, the server or the evaluation.
"""

from cosmos_policy.policy.planning import PlanningModel
from cosmos_policy.policy.policy import SEED_LIMIT, CosmosPolicy, check_fp8, resolve_device

__all__ = ["SEED_LIMIT", "CosmosPolicy", "PlanningModel", "check_fp8", "resolve_device"]
