import pytest
import torch

from cosmos_policy.model import layout as L
from cosmos_policy.model.vae import PolicyVAE, load_autoencoder
from cosmos_policy.testing import tiny_autoencoder, to_wan_state_dict

SIZE = 40  # any multiple of 8 works; small keeps the CPU test quick


@pytest.fixture(scope="module")
def vae():
    return PolicyVAE(tiny_autoencoder(seed=3))


def _full_sequence(layout, images):
    """The official raw sequence: blank, 4 zero (proprio), 4 x each camera, 4 zero (action), 4 zero (future proprio),
    4 x each camera (future placeholders), 4 zero (value)."""
    batch = images[0].shape[0]
    zeros = torch.zeros(batch, 3, 4, SIZE, SIZE, dtype=torch.uint8)
    copies = [img[:, :, None].expand(-1, -1, 4, -1, -1) for img in images]
    video = torch.cat([zeros[:, :, :1], zeros, *copies, zeros, zeros, *copies, zeros], dim=2)
    assert video.shape[2] == layout.raw_frames
    return video


@pytest.mark.parametrize("suite", ["libero", "aloha"])
def test_prefix_encoding_matches_whole_sequence(vae, suite, gen):
    layout = L.get_layout(suite)
    images = [torch.randint(0, 256, (2, 3, SIZE, SIZE), generator=gen, dtype=torch.uint8) for _ in layout.cameras]
    full = vae.encode_video(_full_sequence(layout, images))
    assert full.shape == (2, 16, layout.state_t, SIZE // 8, SIZE // 8)

    prefix, state = vae.encode_prefix(images, keep_state=True)
    assert prefix.shape[2] == layout.num_conditional_frames
    assert torch.equal(prefix, full[:, :, : layout.num_conditional_frames])  # bit for bit
    # the placeholder latents of the action and future-proprio slots continue the same encoder state
    placeholders = vae.encode_zero_chunks(2, state, 2, SIZE, SIZE)
    assert torch.equal(placeholders, full[:, :, layout.action_index : layout.action_index + 2])

    # second query: the constant-frame state comes from the cache and gives the same latents
    assert vae.cache_info()["constant_prefix_states"] >= 1
    again = vae.encode_prefix(images)
    assert torch.equal(again, prefix)
    other = vae.encode_prefix([img.flip(-1) for img in images])
    assert torch.equal(other[:, :, :2], prefix[:, :, :2]) and not torch.equal(other, prefix)


def test_latents_are_normalised_posterior_means(vae, gen):
    video = torch.randint(0, 256, (1, 3, 5, SIZE, SIZE), generator=gen, dtype=torch.uint8)
    pixels = video.float() / 127.5 - 1
    moments = vae.autoencoder._encode(pixels)
    mean = torch.tensor([-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                         0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]).view(1, -1, 1, 1, 1)
    std = torch.tensor([2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                        3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(vae.encode_video(video), (moments[:, :16] - mean) / std, rtol=0, atol=1e-5)


def test_decode_returns_uint8_frames(vae, gen):
    latents = torch.randn(1, 16, 3, SIZE // 8, SIZE // 8, generator=gen)
    frames = vae.decode(latents)
    assert frames.shape == (1, 9, SIZE, SIZE, 3) and frames.dtype == torch.uint8


def test_official_tokenizer_file_loads_through_diffusers_converter(tmp_path):
    model = tiny_autoencoder(seed=5)
    wan = to_wan_state_dict(model.state_dict())
    assert "encoder.conv1.weight" in wan and "decoder.upsamples.3.resample.1.weight" in wan
    torch.save(wan, tmp_path / "tokenizer.pth")
    loaded = load_autoencoder(tmp_path / "tokenizer.pth")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    model.save_pretrained(tmp_path / "vae")
    assert torch.equal(load_autoencoder(tmp_path / "vae").state_dict()["quant_conv.weight"], model.quant_conv.weight)
    with pytest.raises(ValueError, match="vae"):
        load_autoencoder(tmp_path / "nothing.bin")
