"""Tests whose inputs make the norms' eps visible (unit-variance data hides a wrong eps)."""

import torch

from cosmos_kernels.adaptive_norm import reference as norm_reference
from cosmos_policy import CosmosDiT
from tests.model._dit_helpers import random_dit, random_inputs, rel_error


def test_fused_cross_attention_q_norm_eps_at_small_q():
    """Cross-attention queries scaled to RMS ~1e-3 (mean square ~ eps): the fused network's q RMSNorm must use
    eps exactly as the reference does, against T5-like text (a few non-zero tokens, zero padding)."""
    gen = torch.Generator().manual_seed(11)
    reference = random_dit(gen)
    with torch.no_grad():
        for block in reference.blocks:
            block.cross_attn.q_proj.weight.mul_(1e-3)
    fused = CosmosDiT(reference.config, backend="fused").eval()
    fused.load_state_dict(reference.state_dict())
    inputs = random_inputs(gen, reference.config, n_text=32)
    inputs["crossattn_emb"][:, 5:] = 0  # 5 instruction tokens, zero past them (as real T5 embeddings)
    with torch.no_grad():
        want, got = reference(**inputs), fused(**inputs)
    assert rel_error(got, want) < 1e-5


def test_adaptive_norm_reference_eps_against_float64():
    """The reference LayerNorm-modulate against an independent float64 formula, on rows of variance ~1e-6."""
    gen = torch.Generator().manual_seed(12)
    eps = 1e-6
    x = 1e-3 * torch.randn(3, 5, 96, generator=gen, dtype=torch.float64) + 0.5
    shift, scale = (torch.randn(3, 1, 96, generator=gen, dtype=torch.float64) for _ in range(2))
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    want = (x - mean) / torch.sqrt(var + eps) * (1 + scale) + shift
    got = norm_reference.layer_norm_modulate(x, shift, scale, eps)
    assert rel_error(got, want) < 1e-10
    w = torch.rand(96, generator=gen, dtype=torch.float64) + 0.5
    small = 1e-3 * torch.randn(4, 96, generator=gen, dtype=torch.float64)
    want = small / torch.sqrt((small**2).mean(-1, keepdim=True) + eps) * w
    assert rel_error(norm_reference.rms_norm(small, w, eps), want) < 1e-10
