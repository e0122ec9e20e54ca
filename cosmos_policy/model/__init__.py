"""The learned model and its files: the Cosmos-Predict2 DiT (`dit.py`, built from `blocks.py` and `config.py`, with
the exact caches of `cache.py`), the Wan2.1 VAE (`vae.py`), the T5 instruction embeddings (`text.py`) and the versions
that key their caches (`text_versions.py`), the latent-frame layout each suite's network was trained on (`layout.py`),
and reading checkpoint files safely (`checkpoint.py`, `loading.py`). Modules here import cosmos_kernels and the
package's two leaves (`cosmos_policy.errors`, `cosmos_policy.profiling`), never the policy, the command line, the
server or the evaluation.
"""

from cosmos_policy.model.config import DiTConfig
from cosmos_policy.model.dit import CosmosDiT
from cosmos_policy.model.text import text_tokens, with_text_tokens

__all__ = ["CosmosDiT", "DiTConfig", "text_tokens", "with_text_tokens"]
