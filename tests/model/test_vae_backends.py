"""`PolicyVAE` backends: the fused VAE (diffusers' modules patched with cosmos_kernels) against diffusers' own, one
set of parameters shared by both, and each policy getting its backend's VAE without touching the other's."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
from cosmos_kernels.integrations.diffusers import apply_cosmos_kernels, is_patched  # noqa: E402
from cosmos_policy.model.vae import PolicyVAE  # noqa: E402
from cosmos_policy.testing import tiny_autoencoder  # noqa: E402

SIZE = 40


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def pair():
    reference = PolicyVAE(tiny_autoencoder(seed=5))
    return reference, reference.for_backend("fused")


def test_for_backend_shares_parameters_and_patches_only_its_own_tree(pair):
    reference, fused = pair
    assert reference.backend == "reference" and fused.backend == "fused"
    assert fused.autoencoder is not reference.autoencoder
    assert is_patched(fused.autoencoder) and not is_patched(reference.autoencoder)
    ref_params = dict(reference.autoencoder.named_parameters())
    for name, param in fused.autoencoder.named_parameters():
        assert param.data_ptr() == ref_params[name].data_ptr(), name  # no second copy of the weights
    assert reference.for_backend("reference") is reference and fused.for_backend("fused") is fused
    back = fused.for_backend("reference")
    assert not is_patched(back.autoencoder) and is_patched(fused.autoencoder)  # the other stays patched


def test_fused_prefix_encode_and_decode_match_diffusers(pair, gen):
    reference, fused = pair
    images = [torch.randint(0, 256, (2, 3, SIZE, SIZE), generator=gen, dtype=torch.uint8) for _ in range(2)]
    want, want_state = reference.encode_prefix(images, keep_state=True)
    got, got_state = fused.encode_prefix(images, keep_state=True)
    assert got.shape == want.shape and _rel(got, want) < 1e-5
    assert fused.cache_info() == {"constant_prefix_states": 1}
    assert torch.equal(fused.encode_prefix(images), got)  # the cached constant prefix gives the same latents
    want_zero = reference.encode_zero_chunks(2, want_state, 2, SIZE, SIZE)
    got_zero = fused.encode_zero_chunks(2, got_state, 2, SIZE, SIZE)
    assert _rel(got_zero, want_zero) < 1e-5
    latents = torch.cat([want, want_zero], dim=2)
    want_frames, got_frames = reference.decode(latents), fused.decode(latents)
    assert got_frames.shape == want_frames.shape == (2, 1 + 4 * (latents.shape[2] - 1), SIZE, SIZE, 3)
    assert (got_frames.int() - want_frames.int()).abs().max() <= 1  # uint8 rounding of fp32-close pixels


def test_backend_checks():
    with pytest.raises(ValueError, match="backend must be one of"):
        PolicyVAE(tiny_autoencoder(seed=1, base_dim=8), backend="triton")
    patched = tiny_autoencoder(seed=1, base_dim=8)
    apply_cosmos_kernels(patched)
    with pytest.raises(ValueError, match="patched"):
        PolicyVAE(patched, backend="reference")
    assert PolicyVAE(patched, backend="fused").autoencoder is patched  # already patched: used as it is


def test_policies_of_both_backends_get_their_vae(pair):
    from cosmos_policy.model import CosmosDiT
    from cosmos_policy.model import layout as L
    from cosmos_policy.model.config import DiTConfig
    from cosmos_policy.model.text import TextEmbeddings
    from cosmos_policy.policy import CosmosPolicy
    from cosmos_policy.testing import tiny_statistics

    reference_vae, _ = pair
    config = DiTConfig.tiny()
    text = TextEmbeddings({"task": torch.zeros(1, 512, config.crossattn_emb_channels)}, source="zeros")
    stats = L.DatasetStatistics.from_dict(tiny_statistics("libero", 0))
    fused = CosmosPolicy(CosmosDiT(config, backend="fused"), reference_vae, text, stats, L.get_layout("libero"))
    reference = fused.with_backend("reference")
    assert fused.vae.backend == "fused" and is_patched(fused.vae.autoencoder)
    assert reference.vae.backend == "reference" and not is_patched(reference.vae.autoencoder)
    assert reference.with_backend("fused").vae.backend == "fused"
    assert not is_patched(reference_vae.autoencoder)  # the VAE handed in is left as it was
