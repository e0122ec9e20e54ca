"""The LIBERO protocol in the simulator: observation mapping on a real observation, lazy rendering, success,
and workers that crash or hang."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from cosmos_policy.evaluation import libero as L

from .conftest import TASK0, needs_libero

pytestmark = needs_libero
SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "libero_sample_observation.npz"


def sample():
    if not SAMPLE.exists():
        pytest.skip(f"{SAMPLE} is not here")
    return dict(np.load(SAMPLE))


@pytest.fixture(scope="module")
def runner():
    runner = L.EpisodeRunner()
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def libero_10():
    return L.load_tasks("libero_10")


def episode(task, trial, max_steps=48, lazy=True):
    states = L.initial_states(task.suite, task.task_id)
    return L.EpisodeSpec(task.suite, task.task_id, trial, task.language, task.bddl_file, states[trial], max_steps,
                         L.DEFAULT_SEED, lazy=lazy)


def test_map_observation_by_hand():
    obs = sample()
    # the simulator's raw observation the sample came from: robosuite renders bottom-up
    raw = {"agentview_image": obs["primary_image"][::-1], "robot0_eye_in_hand_image": obs["wrist_image"][::-1],
           "robot0_gripper_qpos": obs["proprio"][:2], "robot0_eef_pos": obs["proprio"][2:5],
           "robot0_eef_quat": obs["proprio"][5:], "robot0_joint_pos": np.zeros(7)}
    mapped = L.map_observation(raw, TASK0)
    assert set(mapped) == {"primary_image", "wrist_image", "proprio", "task_description"}
    np.testing.assert_array_equal(mapped["primary_image"][0], raw["agentview_image"][-1])  # top row = last raw row
    np.testing.assert_array_equal(mapped["wrist_image"], obs["wrist_image"])
    # values read off the official sample: gripper fingers +-0.0387, the hand 0.702 m high, pointing down (x ~ 1)
    np.testing.assert_allclose(mapped["proprio"][:2], [0.0387231829, -0.0387223985], atol=1e-9)
    np.testing.assert_allclose(mapped["proprio"][2:5], [-0.0461492722, -0.00356789105, 0.702046295], atol=1e-9)
    np.testing.assert_allclose(mapped["proprio"][5:], [0.999636845, -0.000454802051, -0.0269435911,
                                                       -0.000120957609], atol=1e-9)
    with pytest.raises(KeyError, match="robot0_eef_quat"):
        L.map_observation({k: v for k, v in raw.items() if k != "robot0_eef_quat"}, TASK0)


def test_protocol_reproduces_the_official_sample(runner, libero_10):
    """libero_10 task 0, initial state 0, after the 10 wait steps: the official quick-start observation."""
    obs = sample()
    assert libero_10[0].language == TASK0
    reply = runner.start(episode(libero_10[0], 0))
    assert reply["kind"] == "query" and reply["steps"] == 0
    ours = reply["observation"]
    np.testing.assert_allclose(ours["proprio"], obs["proprio"], rtol=0, atol=1e-9)
    for key in ("primary_image", "wrist_image"):
        diff = np.abs(ours[key].astype(float) - obs[key]).mean()
        upside_down = np.abs(ours[key][::-1].astype(float) - obs[key]).mean()
        # another renderer shades a little differently; the wrong orientation is far off
        assert diff < 4.0 and upside_down > 10 * diff, (key, diff, upside_down)


def test_lazy_rendering_equals_rendering_every_step(runner, libero_10):
    rng = np.random.default_rng(0)
    chunks = [rng.uniform(-0.5, 0.5, (L.CHUNK_SIZE, 7)) for _ in range(2)]
    seen = {}
    for lazy in (True, False):
        calls = runner.cameras.calls
        replies = [runner.start(episode(libero_10[0], 1, lazy=lazy))]
        replies += [runner.chunk(c) for c in chunks]
        assert [r["kind"] for r in replies] == ["query"] * 3, replies[-1].get("reason")
        seen[lazy] = ([r["observation"] for r in replies], runner.cameras.calls - calls)
    for a, b in zip(seen[True][0], seen[False][0]):
        for key in ("primary_image", "wrist_image"):
            np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_array_equal(a["proprio"], b["proprio"])
    assert not runner._env.env._observables["agentview_image"]._sensor({}).any()  # blank outside render steps
    # lazily: one render per camera per query; eagerly: every step (10 wait + 32 policy steps)
    assert seen[True][1] == 2 * 3
    assert seen[False][1] >= 2 * (10 + 32)


def test_success_is_counted_when_the_goal_holds(runner):
    """libero_goal "turn on the stove": with the stove's knob turned past its on-threshold, the next step is done."""
    task = next(t for t in L.load_tasks("libero_goal") if t.language == "turn on the stove")
    dummy = np.tile(L.DUMMY_ACTION, (L.CHUNK_SIZE, 1))
    assert runner.start(episode(task, 0))["kind"] == "query"
    assert runner.chunk(dummy)["kind"] == "query"  # untouched, the stove stays off
    env = runner._env.env
    [joint] = env.get_object("flat_stove_1").joints  # the knob (the stove is a fixture)
    state = runner.sim_state()
    state[1 + env.sim.model.get_joint_qpos_addr(joint)] = 1.0  # flattened state: time, qpos, qvel
    runner.set_state(state)
    reply = runner.chunk(dummy)
    assert reply["kind"] == "done" and reply["success"] is True and reply["steps"] == L.CHUNK_SIZE + 1


def test_a_crashed_or_hung_worker_is_replaced(libero_10):
    from cosmos_policy.evaluation.workers import SubprocessPool, WorkerFailure

    pool = SubprocessPool(1)
    try:
        pool.submit(0, "start", episode(libero_10[0], 0), timeout=600)
        os.kill(pool.pids()[0], signal.SIGKILL)
        [(slot, reply)] = pool.wait()
        assert isinstance(reply, WorkerFailure) and "crashed" in reply.reason and pool.replaced == 1
        pool.submit(0, "start", episode(libero_10[0], 0), timeout=0.05)
        [(slot, reply)] = pool.wait()
        assert isinstance(reply, WorkerFailure) and "time limit" in reply.reason and pool.replaced == 2
        pool.submit(0, "chunk", np.zeros((16, 7)), timeout=60)  # the replacement answers (chunk before start)
        [(slot, reply)] = pool.wait()
        assert isinstance(reply, WorkerFailure) and "before start" in reply.reason and pool.replaced == 2
    finally:
        pool.close()
