"""`apply_cosmos_kernels` on diffusers' `AutoencoderKLWan`: encode and decode parity with the unpatched VAE on odd
sizes, the feature cache of chunked encoding, bit-exact removal, refusals that leave a model untouched."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import AutoencoderKLWan  # noqa: E402
from diffusers.models.autoencoders import autoencoder_kl_wan as wv  # noqa: E402

from cosmos_kernels.integrations.diffusers import apply_cosmos_kernels, is_patched, remove_cosmos_kernels  # noqa: E402
from tests.numerics import cpu_backends  # noqa: E402


def _vae(seed: int = 0, num_res_blocks: int = 1) -> AutoencoderKLWan:
    """A tiny random Wan VAE: channels 12 / 24 / 48 (not powers of 2), one residual block per stage."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoencoderKLWan(base_dim=12, z_dim=4, num_res_blocks=num_res_blocks)
        for name, param in model.named_parameters():
            if name.endswith("gamma"):
                param.data.uniform_(0.5, 1.5)
    return model.eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [type(m) for m in model.modules()]


@pytest.mark.parametrize("t,h,w", [(1, 24, 40), (5, 18, 26), (9, 16, 24)])
def test_encode_decode_match_unpatched(t, h, w, gen):
    vae = _vae()
    x = torch.rand(2, 3, t, h, w, generator=gen) * 2 - 1
    with torch.no_grad():
        want_mu = vae.encode(x).latent_dist.mean
        z = torch.randn(want_mu.shape, generator=gen)
        want_pixels = vae.decode(z).sample
        summary = apply_cosmos_kernels(vae)
        got_mu = vae.encode(x).latent_dist.mean
        got_pixels = vae.decode(z).sample
    assert len(summary.patched["residual block: RMS norm + SiLU (norm1, norm2)"]) > 0
    assert got_mu.shape == want_mu.shape and got_pixels.shape == want_pixels.shape
    assert _rel(got_mu, want_mu) < 1e-5 and _rel(got_pixels, want_pixels) < 1e-5


@pytest.mark.parametrize("num_res_blocks,backend", [(1, None), (2, None), (2, "triton")])
def test_chunked_encoding_with_feature_cache(num_res_blocks, backend, gen):
    """The policy's way: the first frame alone, then chunks of four, one cache across calls; with two blocks per
    stage, each block's residual sum is added by the next block's norm, the last one's before a downsampling
    into the conv's zero-padded frames, and the mid block's by `norm_out`."""
    if backend is not None and backend not in cpu_backends():
        pytest.skip("Triton interpreter not available")
    vae = _vae(1, num_res_blocks)
    x = torch.rand(1, 3, 5, 24, 26, generator=gen) * 2 - 1

    def encode():
        state = [None] * vae._cached_conv_counts["encoder"]
        outs = [vae.encoder(x[:, :, :1], feat_cache=state, feat_idx=[0]),
                vae.encoder(x[:, :, 1:], feat_cache=state, feat_idx=[0])]
        return torch.cat(outs, 2), state

    with torch.no_grad():
        want, want_state = encode()
        summary = apply_cosmos_kernels(vae, backend=backend)
        got, got_state = encode()
    assert summary.patched["encoder: residual sums in the next norm, norm_out + SiLU"] == ["encoder"]
    assert _rel(got, want) < 1e-5
    for g, w in zip(got_state, want_state):
        assert isinstance(g, torch.Tensor) == isinstance(w, torch.Tensor)
        if isinstance(w, torch.Tensor):
            assert _rel(g, w) < 1e-5


def test_removal_is_bit_exact(gen):
    vae = _vae()
    x = torch.rand(1, 3, 5, 16, 16, generator=gen) * 2 - 1
    before = _state(vae)
    with torch.no_grad():
        want = vae.encode(x).latent_dist.mean
        apply_cosmos_kernels(vae)
        assert is_patched(vae)
        assert remove_cosmos_kernels(vae) and not is_patched(vae)
        got = vae.encode(x).latent_dist.mean
    after = _state(vae)
    assert torch.equal(got, want)
    assert before[1] == after[1]
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])


def test_adaptive_norm_false_patches_convs_only():
    vae = _vae()
    summary = apply_cosmos_kernels(vae, adaptive_norm=False)
    assert not any(type(m).__name__ == "FusedWanResidualBlock" for m in vae.modules())
    assert any(type(m).__name__ == "FusedWanCausalConv3d" for m in vae.modules())
    assert "norms" in summary.left_alone
    remove_cosmos_kernels(vae)


def test_unknown_vae_class_refused_untouched():
    class OtherVAE(AutoencoderKLWan):
        pass

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = OtherVAE(base_dim=12, z_dim=4, num_res_blocks=1).eval()
    before = _state(model)
    with pytest.raises(TypeError, match="OtherVAE"):
        apply_cosmos_kernels(model)
    after = _state(model)
    assert not is_patched(model) and before[1] == after[1]
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])


def test_foreign_block_left_alone():
    vae = _vae()
    block = next(m for m in vae.modules() if type(m) is wv.WanResidualBlock)
    block.nonlinearity = torch.nn.GELU()
    summary = apply_cosmos_kernels(vae)
    assert type(block) is wv.WanResidualBlock
    assert any("GELU" in why for why in summary.left_alone.values())
    remove_cosmos_kernels(vae)


def test_channels_last_weight_copy_follows_the_parameter(gen):
    """The patched conv keeps a channels-last copy of its weight for oneDNN; an in-place weight edit is seen."""
    vae = _vae(4)
    apply_cosmos_kernels(vae)
    conv = vae.encoder.conv_in
    x = torch.randn(1, 3, 1, 16, 16, generator=gen)
    with torch.no_grad():
        first = conv(x)
        conv.weight.mul_(2.0)
        second = conv(x)
        want = torch.nn.functional.conv3d(torch.nn.functional.pad(x, (1, 1, 1, 1, 2, 0)), conv.weight, conv.bias)
    assert _rel(second, want) < 1e-5 and not torch.allclose(first, second)
    assert "weight" in dict(conv.named_parameters()) and len(conv.state_dict()) == 2  # nothing added to the state


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_chunked_encoder_compiles_fullgraph(dtype, gen):
    """The fused encoder (residual sums in the next norm, the padded downsampling sum) traces without a graph
    break and gives the eager numbers: bit for bit in bf16; in fp32 within fp32 rounding (eager calls oneDNN
    directly, which Dynamo cannot trace: the traced graph runs `F.conv3d`)."""
    vae = _vae(2, num_res_blocks=2).to(dtype)
    apply_cosmos_kernels(vae)
    x = (torch.rand(1, 3, 5, 24, 26, generator=gen) * 2 - 1).to(dtype)

    def encode(encoder):
        state = [None] * vae._cached_conv_counts["encoder"]
        return torch.cat([encoder(x[:, :, :1], feat_cache=state, feat_idx=[0]),
                          encoder(x[:, :, 1:], feat_cache=state, feat_idx=[0])], 2)

    with torch.no_grad():
        want = encode(vae.encoder)
        got = encode(torch.compile(vae.encoder, backend="aot_eager", fullgraph=True))
    if dtype == torch.bfloat16:
        assert torch.equal(got, want)
    else:
        assert _rel(got, want) < 1e-5
