"""cosmos_policy: a thin inference wrapper for Cosmos Policy checkpoints on the cosmos_kernels ops."""

from cosmos_policy.config import DiTConfig
from cosmos_policy.model import CosmosDiT
from cosmos_policy.policy import CosmosPolicy

__all__ = ["CosmosDiT", "CosmosPolicy", "DiTConfig"]
