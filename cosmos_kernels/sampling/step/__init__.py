"""The fused sampler step: preconditioning, conditional-frame replacement, multistep update, next input."""

from cosmos_kernels.sampling.step.ops import sampler_step

__all__ = ["sampler_step"]
