import json

import numpy as np
import pytest
import torch

from cosmos_policy.model import layout as L


@pytest.mark.parametrize(
    "suite, state_t, n_cond, action_index, value_index, prefix, raw",
    [("libero", 9, 4, 4, 8, 13, 33), ("robocasa", 11, 5, 5, 10, 17, 41), ("aloha", 11, 5, 5, 10, 17, 41)],
)
def test_layout_table(suite, state_t, n_cond, action_index, value_index, prefix, raw):
    layout = L.get_layout(suite)
    assert layout.state_t == state_t
    assert layout.num_conditional_frames == n_cond
    assert layout.action_index == action_index
    assert layout.value_index == value_index
    assert layout.prefix_raw_frames == prefix
    assert layout.raw_frames == raw
    assert layout.placeholder_indices == (0, 1, action_index, action_index + 1)
    # future images sit right after the future proprio, in the same camera order as the current ones
    assert list(layout.future_camera_indices.values()) == list(range(action_index + 2, value_index))


def test_layout_camera_order():
    assert L.LIBERO.camera_indices == {"wrist_image": 2, "primary_image": 3}
    assert L.ROBOCASA.camera_indices == {"wrist_image": 2, "primary_image": 3, "secondary_image": 4}
    assert L.ALOHA.camera_indices == {"left_wrist_image": 2, "right_wrist_image": 3, "primary_image": 4}
    with pytest.raises(ValueError, match="suite"):
        L.get_layout("bridge")


def test_tiling_is_row_major_then_c_major(gen):
    values = torch.randn(2, 700, generator=gen)  # ALOHA: 50 x 14, 17.9 copies in a 16 x 28 x 28 frame
    frame = L.tile_into_frame(values, (16, 28, 28))
    flat = frame.reshape(2, -1)
    assert torch.equal(flat[:, :700], values)
    assert torch.equal(flat[:, 700 * 17 :], values[:, : 12544 - 700 * 17])  # the partial last copy
    assert torch.equal(frame[:, 0, 0, :28], values[:, :28])  # W fastest, then H, then C
    assert torch.equal(frame[:, 1].reshape(2, -1), flat[:, 784 : 2 * 784])


@pytest.mark.parametrize("suite", ["libero", "robocasa", "aloha"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_actions_and_proprio_round_trip_exactly(suite, dtype, gen):
    layout = L.get_layout(suite)
    latents = torch.randn(3, 16, layout.state_t, 28, 28, generator=gen).to(dtype)
    actions = (torch.rand(3, layout.chunk_size, layout.action_dim, generator=gen) * 2 - 1).to(dtype)
    proprio = (torch.rand(3, layout.proprio_dim, generator=gen) * 2 - 1).to(dtype)
    out = L.inject_actions(latents, actions, layout.action_index)
    out = L.inject_proprio(out, proprio, layout.proprio_index)
    assert torch.equal(L.extract_actions(out, layout.action_index, layout.chunk_size, layout.action_dim), actions)
    assert torch.equal(L.extract_proprio(out, layout.proprio_index, layout.proprio_dim), proprio)
    # only the two injected frames changed, and the input was left alone
    untouched = [t for t in range(layout.state_t) if t not in (layout.action_index, layout.proprio_index)]
    assert torch.equal(out[:, :, untouched], latents[:, :, untouched])
    assert not torch.equal(out, latents)


def test_extraction_averages_the_copies(gen):
    layout = L.LIBERO
    latents = torch.zeros(1, 16, 9, 28, 28)
    actions = torch.rand(1, 16, 7, generator=gen)
    out = L.inject_actions(latents, actions, 4)
    noise = torch.randn(1, 16, 28, 28, generator=gen)
    out[:, :, 4] += noise
    expected = actions + noise.reshape(1, 112, 16, 7).double().mean(1).float()
    got = L.extract_actions(out, 4, layout.chunk_size, layout.action_dim)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_value_round_trip(gen):
    latents = torch.randn(4, 16, 9, 28, 28, generator=gen)
    exact = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert torch.equal(L.extract_value(L.inject_value(latents, exact, 8), 8), exact)
    value = torch.rand(4, generator=gen)
    torch.testing.assert_close(L.extract_value(L.inject_value(latents, value, 8), 8), value, rtol=0, atol=1e-7)
    # out-of-range frames clip to [0, 1]
    latents[:, :, 8] = 3.0
    assert torch.equal(L.extract_value(latents, 8), torch.ones(4))


def test_bad_tiling_input():
    with pytest.raises(ValueError, match="values"):
        L.tile_into_frame(torch.zeros(3), (16, 28, 28))
    with pytest.raises(ValueError, match="values"):
        L.tile_into_frame(torch.zeros(1, 12545), (16, 28, 28))
    with pytest.raises(ValueError, match="latents"):
        L.inject_value(torch.zeros(1, 16, 28, 28), torch.zeros(1), 0)


def test_dataset_statistics(tmp_path, gen):
    rng = np.random.default_rng(0)
    stats = {
        "actions_min": (-rng.random(7)).tolist(),
        "actions_max": rng.random(7).tolist(),
        "proprio_min": (-rng.random(9)).tolist(),
        "proprio_max": rng.random(9).tolist(),
        "actions_mean": [0.0] * 7,
    }
    path = tmp_path / "libero_dataset_statistics.json"
    path.write_text(json.dumps(stats))
    s = L.DatasetStatistics.from_json(path)
    assert (s.action_dim, s.proprio_dim) == (7, 9)
    actions = rng.uniform(s.actions_min, s.actions_max, size=(16, 7))
    normalized = s.normalize_actions(actions)
    assert normalized.min() >= -1 and normalized.max() <= 1
    np.testing.assert_allclose(s.unnormalize_actions(normalized), actions, rtol=0, atol=1e-12)
    np.testing.assert_allclose(s.normalize_proprio(s.proprio_max), np.ones(9))
    np.testing.assert_allclose(s.normalize_proprio(s.proprio_min), -np.ones(9))
    del stats["proprio_max"]
    with pytest.raises(ValueError, match="proprio_max"):
        L.DatasetStatistics.from_dict(stats)
