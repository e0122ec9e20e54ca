"""Official best-of-N planning (spec 4.7) on random-weight ALOHA policy and planning checkpoints."""

import numpy as np
import pytest
import torch

from cosmos_kernels.sampling import arch_invariant_noise, sample
from cosmos_policy import CosmosPolicy
from cosmos_policy.model import layout as L
from cosmos_policy.policy.planning import (
    PlanningConfig,
    PlanningModel,
    aggregate_values,
    conditioned_x0_fn,
    ensemble_steps,
    future_frames,
    select_candidate,
    value_frames,
)
from cosmos_policy.testing import PLANNING_CHECKPOINT_NAME, write_tiny_checkpoint, write_tiny_planning_checkpoint

TASK = "fold the shirt"
SMALL = PlanningConfig(future_steps=3, future_ensemble=2, value_steps=3, value_ensemble=3)


# -- aggregations and selection, by hand ------------------------------------------------------------------------

def test_majority_mean_by_hand():
    votes = torch.tensor([[0.9, 0.9, 0.05, 0.5],
                          [0.8, 0.04, 0.05, 0.5],
                          [0.02, 0.03, 0.06, 0.0],
                          [0.7, 0.6, 0.06, 0.0],
                          [0.01, 0.0, 1.0, 0.0]])
    got = aggregate_values(votes, "majority_mean")
    # col 0: 3 of 5 above 0.05 -> mean(0.9, 0.8, 0.7); col 1: 2 of 5 -> 0; col 2: 0.05 is not above -> mean of
    # (0.06, 0.06, 1.0); col 3: 2 of 5 -> 0
    torch.testing.assert_close(got, torch.tensor([0.8, 0.0, 1.12 / 3, 0.0]))
    half = aggregate_values(torch.tensor([[0.5], [0.5], [0.0], [0.0]]), "majority_mean")
    assert float(half) == pytest.approx(0.5)  # exactly half the votes is a majority


def test_other_aggregations_by_hand():
    votes = torch.tensor([[0.2, 0.0, 0.9], [0.4, 0.0, 0.7], [0.6, 0.9, 0.8]], dtype=torch.float64)
    torch.testing.assert_close(aggregate_values(votes, "average"),
                               torch.tensor([0.4, 0.3, 0.8], dtype=torch.float64))
    # lcb: mean - 1 * unbiased std; column 1 goes below 0 and is clipped
    torch.testing.assert_close(aggregate_values(votes, "lcb")[:2], torch.tensor([0.2, 0.0], dtype=torch.float64))
    assert float(aggregate_values(votes, "lcb")[2]) == pytest.approx(0.8 - 0.1)  # std of (0.9, 0.7, 0.8) is 0.1
    torch.testing.assert_close(aggregate_values(votes, "success_vote"),
                               torch.tensor([1.0, 1 / 3, 1.0]))
    with pytest.raises(ValueError, match="aggregation"):
        aggregate_values(votes, "median")


def test_selection_keeps_the_base_seed_unless_strictly_beaten():
    assert select_candidate([0.7, 0.7, 0.2]) == 0
    assert select_candidate([0.7, 0.2]) == 0
    assert select_candidate([0.5, 0.7, 0.7]) == 1  # the first of the higher ones
    assert select_candidate([0.1, 0.3, 0.2]) == 1
    assert select_candidate([0.0]) == 0


def test_ensemble_steps_and_clean_frames():
    assert ensemble_steps(5, 3) == [1, 3, 5] and ensemble_steps(5, 5) == [1, 2, 3, 4, 5]
    assert ensemble_steps(10, 3) == [1, 5, 10] and ensemble_steps(5, 1) == [5]
    aloha = L.get_layout("aloha")
    assert torch.nonzero(future_frames(aloha)).flatten().tolist() == [0, 1, 2, 3, 4, 5]
    assert torch.nonzero(value_frames(aloha)).flatten().tolist() == [0, 6, 7, 8, 9]
    assert torch.nonzero(value_frames(aloha, False)).flatten().tolist() == list(range(10))


# -- the protocol on tiny checkpoints ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    policy_dir = write_tiny_checkpoint(tmp_path_factory.mktemp("policy"), suite="aloha", instructions=(TASK,),
                                       image_size=64)  # ALOHA: 700 action values need an 8 x 8 latent
    planning_dir = write_tiny_planning_checkpoint(tmp_path_factory.mktemp("planning"), seed=7)
    policy = CosmosPolicy.from_pretrained(policy_dir, backend="reference", device="cpu", seed=40, num_steps=3)
    return policy, PlanningModel.from_pretrained(planning_dir, backend="reference", device="cpu"), planning_dir


@pytest.fixture
def obs(models):
    rng = np.random.default_rng(0)
    observation = models[0].synthetic_observation(TASK)
    for camera in models[0].layout.cameras:
        observation[camera] = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    return observation


def test_planning_checkpoint_loads_as_shipped(models, tmp_path):
    policy, planning, planning_dir = models
    assert sorted(p.name for p in planning_dir.iterdir()) == sorted([PLANNING_CHECKPOINT_NAME, "network_config.json"])
    by_file = PlanningModel.from_pretrained(planning_dir / PLANNING_CHECKPOINT_NAME, backend="reference", device="cpu")
    for a, b in zip(planning.network.state_dict().values(), by_file.network.state_dict().values()):
        assert torch.equal(a, b)
    weights = zip(planning.network.state_dict().values(), policy.network.state_dict().values())
    assert any(not torch.equal(a, b) for a, b in weights)  # its own weights, not the policy's


def _oracle_predictions(policy, planning, obs, seed, config):
    """One candidate the official way: batch 1, one sampling call per ensemble member, in the official order."""
    layout = policy.layout
    checked = policy.check_observation(obs, "obs")
    prepared = policy.prepare([checked])
    action, _ = policy.sample_candidates(prepared, [seed], {}, policy.clock())
    context = policy.context(prepared.instructions)
    clean_future = torch.zeros(layout.state_t, dtype=torch.bool)
    clean_future[:6] = True  # blank, proprio, 3 cameras, action
    clean_value = torch.zeros(layout.state_t, dtype=torch.bool)
    clean_value[[0, 6, 7, 8, 9]] = True  # the future state only

    def run(previous, clean, member_seed, steps):
        gt = L.inject_proprio(previous.float(), prepared.proprio, layout.proprio_index)
        noise = arch_invariant_noise(member_seed, tuple(gt.shape)) * layout.sigma_max
        return sample(conditioned_x0_fn(planning.network, gt, context, clean), noise, num_steps=steps,
                      sigma_min=layout.sigma_min, sigma_max=layout.sigma_max, solver="2ab")

    values = []
    for j, steps in enumerate(ensemble_steps(config.future_steps, config.future_ensemble)):
        future = run(action, clean_future, seed + j, steps)
        for k, value_steps in enumerate(ensemble_steps(config.value_steps, config.value_ensemble)):
            values.append(float(L.extract_value(run(future, clean_value, seed + k, value_steps), -1)))
    return values


def test_value_predictions_follow_the_official_protocol(models, obs):
    policy, planning, _ = models
    result = policy.plan(obs, num_candidates=2, seed=11, planning_model=planning, planning_config=SMALL)
    assert result["value_predictions"].shape == (2, 6)
    for i in range(2):
        np.testing.assert_allclose(result["value_predictions"][i],
                                   _oracle_predictions(policy, planning, obs, 11 + i, SMALL), rtol=1e-5, atol=1e-6)
    expected = aggregate_values(torch.from_numpy(result["value_predictions"]).T, "majority_mean").numpy()
    np.testing.assert_allclose(result["candidate_values"], expected)


def test_one_batch_equals_single_runs_and_sub_batches(models, obs):
    policy, planning, _ = models
    n, base = 4, 23
    config = PlanningConfig(future_steps=3, future_ensemble=2, value_steps=3, value_ensemble=3, aggregation="average")
    batched = policy.plan(obs, num_candidates=n, seed=base, planning_model=planning, planning_config=config)
    singles = [policy.plan(obs, num_candidates=1, seed=base + i, planning_model=planning, planning_config=config)
               for i in range(n)]
    split = policy.plan(obs, num_candidates=n, seed=base, batch_size=3, planning_model=planning,
                        planning_config=config)
    single_values = np.array([s["value"] for s in singles])
    assert len(set(np.round(single_values, 6))) == n  # distinct values: the choice means something
    np.testing.assert_allclose(batched["candidate_values"], single_values, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(split["candidate_values"], batched["candidate_values"], rtol=1e-5, atol=1e-6)
    for i, s in enumerate(singles):
        np.testing.assert_allclose(batched["candidate_actions"][i], s["actions"], rtol=1e-5, atol=1e-5)
    assert batched["index"] == select_candidate(single_values) == split["index"]
    assert batched["seed"] == base + batched["index"] and batched["candidate_seeds"] == list(range(base, base + n))
    np.testing.assert_array_equal(batched["actions"], batched["candidate_actions"][batched["index"]])


def test_plan_takes_one_seed_of_the_rule(models, obs):
    policy, planning, _ = models
    policy.reset(100)
    base = policy.next_seed
    result = policy.plan(obs, num_candidates=2, planning_model=planning, planning_config=SMALL)
    after = policy.next_seed
    policy.reset(100)
    policy.take_seeds(None, 1)  # what one query takes from the seed rule
    assert result["candidate_seeds"] == [base, base + 1] and policy.next_seed == after
    with pytest.raises(ValueError, match="max_batch"):
        policy.plan(obs, num_candidates=2, batch_size=0, planning_model=planning)
    with pytest.raises(ValueError, match="num_candidates"):
        policy.plan(obs, num_candidates=0, planning_model=planning)
    with pytest.raises(TypeError, match="planning_model"):
        policy.plan(obs, num_candidates=2, planning_model=object())
