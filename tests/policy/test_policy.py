import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cosmos_kernels.sampling import arch_invariant_noise
from cosmos_policy import CosmosPolicy
from cosmos_policy.model import layout as L
from cosmos_policy.testing import LIBERO_SAMPLE_TASK, tiny_policy, write_tiny_checkpoint

# ../shared/data beside the repository root (COSMOS_POLICY_DATA overrides the directory)
DATA = Path(os.environ.get("COSMOS_POLICY_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))
SAMPLE = DATA / "libero_sample_observation.npz"
SMALL = 64  # image size of the quick checkpoints (the official one is 224)
OTHER_TASK = "open the top drawer and put the bowl inside"


def _observation(layout, rng, size=96, task=LIBERO_SAMPLE_TASK):
    obs = {camera: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for camera in layout.cameras}
    obs["proprio"] = rng.uniform(-0.5, 0.5, layout.proprio_dim)
    obs["task_description"] = task
    return obs


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), instructions=(LIBERO_SAMPLE_TASK, OTHER_TASK),
                                 image_size=SMALL)


@pytest.fixture(scope="module")
def policy(tiny_dir):
    return CosmosPolicy.from_pretrained(tiny_dir, backend="reference", device="cpu")


@pytest.fixture
def obs():
    return _observation(L.LIBERO, np.random.default_rng(7))


def test_tiny_checkpoint_has_the_official_file_names(tiny_dir):
    names = {p.name for p in tiny_dir.iterdir()}
    assert {"Cosmos-Policy-LIBERO-Predict2-2B.pt", "libero_t5_embeddings.pkl", "libero_dataset_statistics.json",
            "tokenizer", "network_config.json"} <= names
    assert (tiny_dir / "tokenizer" / "tokenizer.pth").is_file()
    state = torch.load(tiny_dir / "Cosmos-Policy-LIBERO-Predict2-2B.pt", weights_only=True)
    assert all(k.startswith("net.") for k in state)
    from cosmos_policy.model.checkpoint import load_t5_embeddings
    from cosmos_policy.testing import instruction_tokens

    for instruction, emb in load_t5_embeddings(tiny_dir / "libero_t5_embeddings.pkl").items():
        tokens = instruction_tokens(instruction)  # like real T5: the instruction's tokens, then zeros up to 512
        assert emb.shape[1] == 512 and 5 <= tokens <= 40
        assert emb[0, :tokens].ne(0).all(-1).all() and not emb[0, tokens:].any()


@pytest.mark.skipif(not SAMPLE.exists(), reason="../shared/data/libero_sample_observation.npz is not there")
def test_infer_on_the_real_libero_observation(tmp_path):
    policy = CosmosPolicy.from_pretrained(write_tiny_checkpoint(tmp_path), backend="reference", device="cpu")
    data = np.load(SAMPLE)
    obs = {k: data[k] for k in ("primary_image", "wrist_image", "proprio")}
    obs["task_description"] = LIBERO_SAMPLE_TASK
    first = policy.infer(obs, seed=195)
    again = policy.infer(obs, seed=195)
    other = policy.infer(obs, seed=196)
    assert first["actions"].shape == (16, 7) and first["actions"].dtype == np.float32
    assert np.isfinite(first["actions"]).all() and 0.0 <= first["value"] <= 1.0
    assert np.array_equal(first["actions"], again["actions"]) and first["value"] == again["value"]
    assert not np.allclose(first["actions"], other["actions"])
    assert {"preprocess", "text", "vae_encode", "denoise", "postprocess", "total"} <= set(first["timing"])


class _Spy(torch.nn.Module):
    """Records what the denoiser feeds the network."""

    def __init__(self, network):
        super().__init__()
        self.inner, self.calls = network, []

    def forward(self, x, timesteps, context, cond_mask, padding_mask=None):
        self.calls.append((x.clone(), timesteps.clone(), context, cond_mask.clone()))
        return self.inner(x, timesteps, context, cond_mask, padding_mask)


def test_denoiser_follows_the_official_conditioning(policy, obs):
    spy = _Spy(policy.network)
    real, policy.network = policy.network, spy
    try:
        out = policy.infer(obs, seed=11)
    finally:
        policy.network = real
    layout = L.LIBERO
    assert len(spy.calls) == 5  # 5 steps = 5 network passes, sigma 80 -> 4
    t_expected = [s / (s + 1) for s in (80.0, 42.2863, 20.9736, 9.6173, 4.0)]
    cond = layout.num_conditional_frames
    proprio = policy.statistics.normalize_proprio(obs["proprio"])
    first_x = spy.calls[0][0]
    for (x, timesteps, _context, cond_mask), t in zip(spy.calls, t_expected):
        assert timesteps.shape == (1, layout.state_t)
        assert torch.all(timesteps[:, :cond] == 0)  # clean frames: t(sigma_cond = 0) = 0
        torch.testing.assert_close(timesteps[:, cond:], torch.full((1, layout.state_t - cond), t), atol=2e-4, rtol=0)
        assert cond_mask.flatten().tolist() == [1.0] * cond + [0.0] * (layout.state_t - cond)
        # the clean frames are the same in every pass: VAE latents, and the tiled proprio in frame 1
        assert torch.equal(x[:, :, :cond], first_x[:, :, :cond])
    got_proprio = L.extract_proprio(first_x, layout.proprio_index, layout.proprio_dim)[0].double().numpy()
    np.testing.assert_allclose(got_proprio, proprio, rtol=0, atol=1e-6)
    # the first pass sees the official noise, scaled by c_in = 1 - t
    noise = arch_invariant_noise(11, (1, 16, layout.state_t, SMALL // 8, SMALL // 8)) * 80.0
    torch.testing.assert_close(first_x[:, :, cond:], noise[:, :, cond:] * (1 - 80.0 / 81.0), rtol=1e-5, atol=1e-5)
    assert out["seed"] == 11


def test_batch_equals_single_queries(policy, obs):
    obs2 = _observation(L.LIBERO, np.random.default_rng(8), size=80, task=OTHER_TASK)
    batch = policy.infer_batch([obs, obs2], seeds=[3, 4])
    for single, got in ((policy.infer(obs, seed=3), batch[0]), (policy.infer(obs2, seed=4), batch[1])):
        np.testing.assert_allclose(got["actions"], single["actions"], rtol=1e-4, atol=1e-4)
        assert abs(got["value"] - single["value"]) < 1e-4


def test_own_seeds_and_reset(tiny_dir, obs):
    policy = CosmosPolicy.from_pretrained(tiny_dir, backend="reference", device="cpu", seed_step=1)
    first, second = policy.infer(obs), policy.infer(obs)
    assert (first["seed"], second["seed"]) == (0, 1) and not np.array_equal(first["actions"], second["actions"])
    policy.reset()
    again = policy.infer(obs)
    assert again["seed"] == first["seed"] and np.array_equal(again["actions"], first["actions"])
    assert np.array_equal(policy.infer(obs, seed=first["seed"])["actions"], first["actions"])


def test_plan_ranks_candidates_by_value(policy, obs):
    result = policy.plan(obs, num_candidates=3, seed=20)
    values = result["candidate_values"]
    assert result["candidate_seeds"] == [20, 21, 22] and values.shape == (3,)
    assert result["index"] == int(np.argmax(values)) and result["value"] == values.max()
    single = policy.infer(obs, seed=result["seed"])
    np.testing.assert_allclose(result["actions"], single["actions"], rtol=1e-4, atol=1e-4)
    split = policy.plan(obs, num_candidates=3, seed=20, batch_size=2)
    np.testing.assert_allclose(split["candidate_values"], values, rtol=1e-4, atol=1e-5)


def test_future_images(policy, obs):
    out = policy.infer(obs, seed=5, return_future_images=True)
    assert set(out["future_images"]) == {"wrist_image", "primary_image"}
    for image in out["future_images"].values():
        assert image.shape == (SMALL, SMALL, 3) and image.dtype == np.uint8
    assert np.array_equal(out["actions"], policy.infer(obs, seed=5)["actions"])
    assert "vae_decode" in out["timing"]


def _bad(obs, key, value):
    bad = dict(obs)
    if value is None:
        del bad[key]
    else:
        bad[key] = value
    return bad


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("wrist_image", None, "wrist_image"),
        ("primary_image", np.zeros((96, 96, 4), np.uint8), "primary_image"),
        ("primary_image", np.zeros((96, 96, 3), np.float32), "primary_image"),
        ("wrist_image", np.zeros((96, 3), np.uint8), "wrist_image"),
        ("proprio", np.zeros(8), "proprio"),
        ("proprio", np.full(9, np.nan), "proprio"),
        ("task_description", "fly to the moon", "fly to the moon"),
        ("task_description", None, "task_description"),
    ],
)
def test_bad_input_names_the_key_and_changes_nothing(policy, obs, key, value, match):
    policy.infer(obs)  # caches warm
    before = policy.cache_info()
    with pytest.raises(ValueError, match=match):
        policy.infer(_bad(obs, key, value))
    with pytest.raises(ValueError, match=match):
        policy.infer_batch([obs, _bad(obs, key, value)])
    with pytest.raises(ValueError, match=match):
        policy.plan(_bad(obs, key, value), num_candidates=2)
    assert policy.cache_info() == before


def test_official_seed_rule_seeds_every_query_alike(tiny_dir, obs):
    """The official rule: every action query uses the run's seed; candidate i of a plan uses seed + i."""
    policy = CosmosPolicy.from_pretrained(tiny_dir, backend="reference", device="cpu", seed=195)
    first, second = policy.infer(obs), policy.infer(obs)
    assert first["seed"] == second["seed"] == 195 and np.array_equal(first["actions"], second["actions"])
    assert [r["seed"] for r in policy.infer_batch([obs, obs])] == [195, 195]
    assert policy.plan(obs, num_candidates=3)["candidate_seeds"] == [195, 196, 197]
    assert policy.infer(obs, seed=7)["seed"] == 7 and policy.next_seed == 195
    with pytest.raises(ValueError, match="seed_step"):
        CosmosPolicy.from_pretrained(tiny_dir, backend="reference", device="cpu", seed_step=-1)


def test_seed_step_counts_queries_from_the_loading_seed(tiny_dir, obs):
    """seed_step=1: query k since loading or reset() uses seed + k; explicit seeds leave the count alone."""
    policy = CosmosPolicy.from_pretrained(tiny_dir, backend="reference", device="cpu", seed=195, seed_step=1)
    assert policy.next_seed == 195
    first = policy.infer(obs)
    assert first["seed"] == 195 and policy.next_seed == 196
    assert policy.infer(obs, seed=7)["seed"] == 7 and policy.next_seed == 196  # explicit: no move
    assert [r["seed"] for r in policy.infer_batch([obs, obs, obs])] == [196, 197, 198]
    assert policy.infer_batch([obs, obs], seeds=[3, 4])[1]["seed"] == 4 and policy.next_seed == 199
    planned = policy.plan(obs, num_candidates=2)
    assert planned["candidate_seeds"] == [199, 200] and policy.next_seed == 200  # one plan = one query
    with pytest.raises(ValueError, match="proprio"):  # a refused query does not count
        policy.infer(_bad(obs, "proprio", np.zeros(3)))
    assert policy.next_seed == 200
    policy.reset()
    again = policy.infer(obs)
    assert again["seed"] == 195 and np.array_equal(again["actions"], first["actions"])
    policy.reset(seed=2**32 - 1)
    assert [r["seed"] for r in policy.infer_batch([obs, obs])] == [2**32 - 1, 0]  # wraps at 2**32
    assert policy.cache_info()["next_seed"] == 1


def test_warmup_runs_every_size_without_moving_the_seed_rule(tiny_dir, obs):
    policy = CosmosPolicy.from_pretrained(tiny_dir, backend="fused", device="cpu", seed=195)
    calls = []
    inner = policy.run_query

    def spy(prepared, seeds, *args):
        calls.append((len(seeds), tuple(prepared.instructions), tuple(im.shape for im in prepared.images)))
        return inner(prepared, seeds, *args)

    policy.run_query = spy
    report = policy.warmup(batch_sizes=(1, 2), instructions=[OTHER_TASK])
    size = policy.image_size
    assert calls == [(1, (OTHER_TASK,), ((1, 3, size, size),) * 2), (2, (OTHER_TASK,) * 2, ((2, 3, size, size),) * 2)]
    assert [(r["instruction"], r["batch_size"]) for r in report["runs"]] == [(OTHER_TASK, 1), (OTHER_TASK, 2)]
    assert report["next_seed"] == 195 and policy.next_seed == 195 and report["cuda_graphs"] == 0
    assert policy.network.kv_cache.misses > 0 and len(policy.network.kv_cache) >= 1  # the instruction's K/V is cached
    policy.warmup()  # default: the checkpoint's first instruction
    assert calls[-1][1] == (LIBERO_SAMPLE_TASK,)
    assert policy.infer(obs)["seed"] == 195
    for bad, match in (((0,), "batch_sizes"), ((), "batch_sizes"), ((True,), "batch_sizes")):
        with pytest.raises(ValueError, match=match):
            policy.warmup(batch_sizes=bad)
    with pytest.raises(ValueError, match="fly to the moon"):
        policy.warmup(instructions=["fly to the moon"])


def test_bad_seeds_and_options(policy, obs, tiny_dir):
    with pytest.raises(ValueError, match="seed"):
        policy.infer(obs, seed=-1)
    with pytest.raises(ValueError, match="seeds"):
        policy.infer_batch([obs, obs], seeds=[1])
    with pytest.raises(ValueError, match="num_candidates"):
        policy.plan(obs, num_candidates=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda_graph"):
            CosmosPolicy.from_pretrained(tiny_dir, device="cpu", cuda_graph=True)


def test_loading_errors(tmp_path, tiny_dir, monkeypatch):
    import shutil

    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, copy)
    shutil.rmtree(copy / "tokenizer")
    with pytest.raises(FileNotFoundError, match="Cosmos-Predict2-2B-Video2World"):
        CosmosPolicy.from_pretrained(copy, device="cpu")
    # the VAE may live elsewhere
    CosmosPolicy.from_pretrained(copy, device="cpu", vae=tiny_dir / "tokenizer" / "tokenizer.pth")
    with pytest.raises(ValueError, match="suite"):
        CosmosPolicy.from_pretrained(tiny_dir, suite="bridge", device="cpu")
    with pytest.raises(FileNotFoundError, match="aloha_dataset_statistics"):
        CosmosPolicy.from_pretrained(tiny_dir, suite="aloha", device="cpu")

    import huggingface_hub

    downloads = []

    def fake_download(repo_id, **kwargs):
        downloads.append(repo_id)
        return str(tiny_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    hub_policy = CosmosPolicy.from_pretrained("nvidia/Cosmos-Policy-LIBERO-Predict2-2B", device="cpu")
    assert downloads == ["nvidia/Cosmos-Policy-LIBERO-Predict2-2B"] and hub_policy.layout.name == "libero"


@pytest.mark.parametrize("suite", ["robocasa", "aloha"])
def test_other_suites(tmp_path, suite):
    layout = L.get_layout(suite)
    policy = CosmosPolicy.from_pretrained(write_tiny_checkpoint(tmp_path, suite=suite, image_size=64), device="cpu")
    out = policy.infer(_observation(layout, np.random.default_rng(1)), seed=0)
    assert out["actions"].shape == (layout.chunk_size, layout.action_dim) and np.isfinite(out["actions"]).all()


def test_fused_backend_matches_reference(tiny_dir, policy, obs):
    fused = CosmosPolicy.from_pretrained(tiny_dir, backend="fused", device="cpu")
    a, b = fused.infer(obs, seed=9), policy.infer(obs, seed=9)
    rel = np.linalg.norm(a["actions"] - b["actions"]) / np.linalg.norm(b["actions"])
    assert rel <= 1e-5, rel  # fp32: the fused kernels round differently, nothing more
    assert abs(a["value"] - b["value"]) <= 1e-5 * max(1.0, abs(b["value"]))


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_graph_loop_matches_the_checked_sampler(tiny_dir, obs, backend):
    """The loop a CUDA graph captures (Sampler + host times for the fused network), run eagerly on the CPU."""
    from cosmos_policy.policy.graphs import ChunkGraphs

    policy = CosmosPolicy.from_pretrained(tiny_dir, backend=backend, device="cpu")
    expected = policy.infer(obs, seed=4)
    policy.graphs = ChunkGraphs(policy, capture=False)
    got = policy.infer(obs, seed=4)
    np.testing.assert_allclose(got["actions"], expected["actions"], rtol=1e-4, atol=1e-4)
    assert len(policy.graphs._chunks) == 1 and policy.graphs.last_error is None
    other = policy.infer_batch([obs, obs], seeds=[4, 5])  # a second (batch, instructions) entry
    np.testing.assert_allclose(other[0]["actions"], expected["actions"], rtol=1e-4, atol=1e-4)
    assert len(policy.graphs._chunks) == 2 and len(policy.graphs) == 0  # nothing captured


def test_in_place_text_edit_between_queries_under_inference_mode_is_seen(tiny_dir, obs, monkeypatch):
    """The fused network's K/V cache has no per-pass content check: the policy finds the edit once per query."""
    policy = CosmosPolicy.from_pretrained(tiny_dir, backend="fused", device="cpu")
    with torch.inference_mode():
        text = policy.text.get(LIBERO_SAMPLE_TASK).clone()  # an inference tensor: no version counter
    monkeypatch.setattr(policy.text, "get", lambda instruction: text)
    with torch.inference_mode():
        before = policy.infer(obs, seed=3)["actions"]
        text[:, :4].mul_(-1.0)
        after = policy.infer(obs, seed=3)["actions"]
    expected = CosmosPolicy.from_pretrained(tiny_dir, backend="fused", device="cpu")
    expected.text.get(LIBERO_SAMPLE_TASK)[:, :4].mul_(-1.0)
    np.testing.assert_allclose(after, expected.infer(obs, seed=3)["actions"], rtol=1e-5, atol=1e-5)
    assert not np.allclose(after, before, rtol=1e-3, atol=1e-3)


@pytest.fixture(scope="module")
def stand_in_dir(tmp_path_factory):
    """A tiny checkpoint without the VAE file, for policies on the stand-in VAE (no diffusers needed)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("stand-in"), instructions=(LIBERO_SAMPLE_TASK, OTHER_TASK),
                                 image_size=SMALL, vae=False)


def test_stand_in_vae_policy_needs_no_diffusers(stand_in_dir, obs, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "diffusers", None)  # any import of it now fails
    policy = tiny_policy(stand_in_dir, device="cpu")
    out = policy.infer(obs, seed=2, return_future_images=True)
    assert out["actions"].shape == (L.LIBERO.chunk_size, L.LIBERO.action_dim) and np.isfinite(out["actions"]).all()
    assert {k: v.shape for k, v in out["future_images"].items()} == {c: (SMALL, SMALL, 3) for c in L.LIBERO.cameras}
    other = dict(obs, primary_image=255 - obs["primary_image"])
    assert not np.allclose(policy.infer(other, seed=2)["actions"], out["actions"])  # the images reach the actions
    np.testing.assert_array_equal(policy.infer(obs, seed=2)["actions"], out["actions"])


@pytest.mark.gpu
def test_cuda_graph_matches_eager(stand_in_dir, obs):
    eager = tiny_policy(stand_in_dir, device="cuda", cuda_graph=False)
    graphed = tiny_policy(stand_in_dir, device="cuda", cuda_graph=True)
    for seed in (1, 2):
        a, b = graphed.infer(obs, seed=seed), eager.infer(obs, seed=seed)
        np.testing.assert_allclose(a["actions"], b["actions"], rtol=2e-2, atol=2e-2)
    assert graphed.cache_info()["cuda_graphs"] == 1 and graphed.graphs.last_error is None
