"""A Cosmos-Predict2.5 policy (rectified flow, official UniPC, Reason1 text) on tiny checkpoints: the sampler wiring
against a plain evaluation of the spec's `denoise`, the timesteps the network sees, fused vs reference, seeds, the
CUDA-graph loop run eagerly, the projected text, loading as published and its refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cosmos_policy.policy.graphs as graph_module
from cosmos_kernels.sampling import arch_invariant_noise, sample_flow_unipc
from cosmos_policy import CosmosPolicy
from cosmos_policy.model import layout as L
from cosmos_policy.model.text_projection import is_projected
from cosmos_policy.policy.graphs import ChunkGraphs
from cosmos_policy.testing import LIBERO_SAMPLE_TASK, tiny_policy, write_tiny_checkpoint

OTHER_TASK = "open the top drawer and put the bowl inside"
SMALL = 64


@pytest.fixture(autouse=True)
def graphs_on_for_the_process(monkeypatch):
    monkeypatch.setattr(graph_module, "process_disabled_reason", None)


@pytest.fixture(scope="module")
def p25_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("p25"), instructions=(LIBERO_SAMPLE_TASK, OTHER_TASK),
                                 image_size=SMALL, vae=False, variant="predict2.5")


@pytest.fixture(scope="module")
def fused(p25_dir):
    return tiny_policy(p25_dir, backend="fused", device="cpu")


@pytest.fixture
def obs():
    rng = np.random.default_rng(11)
    obs = {camera: rng.integers(0, 256, (SMALL, SMALL, 3), dtype=np.uint8) for camera in L.LIBERO.cameras}
    obs["proprio"] = rng.uniform(-0.5, 0.5, L.LIBERO.proprio_dim)
    obs["task_description"] = LIBERO_SAMPLE_TASK
    return obs


def test_tiny_checkpoint_is_written_as_published(p25_dir):
    from cosmos_policy.model.checkpoint import load_t5_embeddings

    names = {p.name for p in p25_dir.iterdir()}
    assert {"model.pt", "reason1_embeddings.pkl", "libero_dataset_statistics.json"} <= names
    state = torch.load(p25_dir / "model.pt", weights_only=True)
    assert all(k.startswith("net.") for k in state) and "net.crossattn_proj.0.bias" in state
    for emb in load_t5_embeddings(p25_dir / "reason1_embeddings.pkl").values():
        assert emb.shape == (1, 512, 96) and emb.dtype == torch.bfloat16
        assert emb.ne(0).any(-1).all()  # padding rows included


def test_policy_is_a_flow_policy_with_the_official_shift(fused):
    assert (fused.variant, fused.shift, fused.num_steps) == ("predict2.5", 5.0, 5)


def _spec_actions(policy, text_file, obs, seed, num_steps=5, shift=5.0):
    """Predict2.5 spec 4.2 written out: mix `gt m + x (1 - m)`, per-frame float timesteps (0 on the clean frames),
    the network's velocity on the wide Reason1 text, clean frames' velocity `eps_init - gt`; the official UniPC."""
    from cosmos_policy.model.checkpoint import load_t5_embeddings

    layout = policy.layout
    prepared = policy.prepare([policy.check_observation(obs, "obs")])
    prefix = policy.vae.encode_prefix(prepared.images)
    gt = torch.zeros(1, prefix.shape[1], layout.state_t, *prefix.shape[-2:])
    gt[:, :, : layout.num_conditional_frames] = prefix
    gt = L.inject_proprio(gt, prepared.proprio, layout.proprio_index)
    m = policy.cond_mask
    eps = arch_invariant_noise(seed, gt.shape)  # not scaled by sigma_max
    context = load_t5_embeddings(text_file)[obs["task_description"]]  # (1, 512, 96) bf16, projected by the network
    seen = []

    def denoise(x, t):
        xt = gt * m + x * (1 - m)
        m_bar = m.mean(dim=(1, 3, 4))
        times = 0 * m_bar + t[:, None] * (1 - m_bar)
        seen.append(times)
        v = policy.network(xt, times, context, m).float()
        return v * (1 - m) + (eps - gt) * m

    latents = sample_flow_unipc(denoise, eps, num_steps, shift)
    actions = L.extract_actions(latents, layout.action_index, layout.chunk_size, layout.action_dim)
    return policy.statistics.unnormalize_actions(actions[0].double().numpy()).astype(np.float32), seen


@pytest.mark.parametrize("num_steps", [5, 1, 3])
def test_actions_follow_the_spec_denoise_and_timesteps(p25_dir, obs, num_steps):
    policy = tiny_policy(p25_dir, backend="fused", device="cpu", num_steps=num_steps)
    expected, seen = _spec_actions(policy, p25_dir / "reason1_embeddings.pkl", obs, seed=7, num_steps=num_steps)
    got = policy.infer(obs, seed=7)["actions"]
    assert got.shape == (16, 7) and np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    times = torch.stack([t[0] for t in seen])  # (steps, T): 0 on the clean frames, floor(1000 sigma) elsewhere
    first = {1: [999], 3: [999, 908, 713], 5: [999, 952, 882, 768, 555]}[num_steps]
    assert times[:, 4:].eq(torch.tensor(first, dtype=torch.float32)[:, None]).all() and not times[:, :4].any()


def test_fused_and_reference_backends_agree(p25_dir, fused, obs):
    reference = tiny_policy(p25_dir, backend="reference", device="cpu")
    np.testing.assert_allclose(fused.infer(obs, seed=3)["actions"], reference.infer(obs, seed=3)["actions"],
                               rtol=0, atol=1e-5)


def test_seeds_reproduce_and_differ(fused, obs):
    a, b = fused.infer(obs, seed=5)["actions"], fused.infer(obs, seed=5)["actions"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, fused.infer(obs, seed=6)["actions"])
    batch = fused.infer_batch([obs, dict(obs, task_description=OTHER_TASK)], seeds=[5, 9])
    np.testing.assert_allclose(batch[0]["actions"], a, rtol=0, atol=1e-5)
    np.testing.assert_allclose(batch[1]["actions"], fused.infer(dict(obs, task_description=OTHER_TASK), seed=9)
                               ["actions"], rtol=0, atol=1e-5)


def test_shift_changes_the_sample_and_is_checked(p25_dir, fused, obs):
    other = tiny_policy(p25_dir, backend="fused", device="cpu", shift=3.0)
    assert other.shift == 3.0 and not np.array_equal(other.infer(obs, seed=5)["actions"],
                                                    fused.infer(obs, seed=5)["actions"])
    for bad in (0, -1.0, float("inf"), True):
        with pytest.raises(ValueError, match="shift"):
            tiny_policy(p25_dir, device="cpu", shift=bad)


def test_the_graph_loop_equals_the_eager_sampler(p25_dir, fused, obs):
    """The CUDA-graph chunk (`FlowUniPCSampler`, host timesteps) run eagerly, and through a fake capture."""
    looped = tiny_policy(p25_dir, backend="fused", device="cpu")
    looped.graphs = ChunkGraphs(looped, capture=False)
    expected = fused.infer(obs, seed=2)["actions"]
    np.testing.assert_array_equal(looped.infer(obs, seed=2)["actions"], expected)
    calls = []

    def capture(run, device, pool):
        calls.append(1)
        out = run()

        class Graph:
            def replay(self):
                out.copy_(run())

        return Graph(), out

    captured = tiny_policy(p25_dir, backend="fused", device="cpu")
    captured.graphs = ChunkGraphs(captured, capturer=capture)
    for _ in range(2):
        np.testing.assert_array_equal(captured.infer(obs, seed=2)["actions"], expected)
    assert len(calls) == 1 and len(captured.graphs) == 1
    captured.shift = 3.0  # another shift is another graph
    captured.infer(obs, seed=2)
    assert len(calls) == 2


def test_warmup_and_the_projected_text(fused):
    report = fused.warmup(batch_sizes=(1, 2))
    assert [r["batch_size"] for r in report["runs"]] == [1, 2]
    context = fused.context([LIBERO_SAMPLE_TASK])
    assert context.shape == (1, 512, 64) and is_projected(context)  # only the projected text is kept
    assert context is fused.context([LIBERO_SAMPLE_TASK])


def test_from_pretrained_reads_the_published_layout(tmp_path, obs):
    pytest.importorskip("diffusers")
    folder = write_tiny_checkpoint(tmp_path / "robot" / "policy" / "libero", image_size=SMALL, variant="predict2.5")
    (folder / "network_config.json").write_text(
        (folder / "network_config.json").read_text().replace('"suite": "libero", ', ""))
    policy = CosmosPolicy.from_pretrained(folder / "model.pt", device="cpu")
    assert policy.variant == "predict2.5" and policy.layout.name == "libero"
    assert policy.infer(obs, seed=1)["actions"].shape == (16, 7)
    with pytest.raises(ValueError, match="variant: 'predict2' given"):
        CosmosPolicy.from_pretrained(folder, device="cpu", variant="predict2")


@pytest.mark.parametrize("missing,needle", [
    ("reason1_embeddings.pkl", "Reason1 embeddings: .*nvidia/LIBERO-Cosmos-Policy/success_only/reason1_embeddings.pkl"
                               ".*text_embeddings="),
    ("libero_dataset_statistics.json", "dataset statistics: .*nvidia/Cosmos-Policy-LIBERO-Predict2-2B"),
])
def test_a_missing_file_says_which_and_where_from(tmp_path, missing, needle):
    from cosmos_policy.policy.files import find_checkpoint_files

    folder = write_tiny_checkpoint(tmp_path / "libero", image_size=SMALL, vae=False, variant="predict2.5")
    (folder / missing).unlink()
    with pytest.raises(FileNotFoundError, match=needle) as err:
        find_checkpoint_files(folder, vae=folder / "model.pt")
    assert "\n" not in str(err.value)


def test_files_given_as_paths_and_the_predict2_refusal_of_shift(tmp_path, p25_dir):
    from cosmos_policy.policy.files import find_checkpoint_files

    folder = write_tiny_checkpoint(tmp_path / "libero", image_size=SMALL, vae=False, variant="predict2.5")
    text = (folder / "reason1_embeddings.pkl").rename(tmp_path / "r1.pkl")
    files = find_checkpoint_files(folder, vae=folder / "model.pt", text_embeddings=text)
    assert files.variant == "predict2.5" and files.t5_embeddings == text and files.network_config is not None
    p2 = write_tiny_checkpoint(tmp_path / "p2", image_size=SMALL, vae=False)
    with pytest.raises(ValueError, match="shift: only Cosmos-Predict2.5"):
        tiny_policy(p2, device="cpu", shift=5.0)
