"""`cosmos-policy demo`: action chunks for one observation, with a per-stage latency report.

Without `--checkpoint` the model has random weights: the tiny config writes a tiny checkpoint to a temporary folder
(at a reduced image size, so the CPU demo stays short), the 2B config builds the network and a Wan2.1-sized VAE in
memory (no weights file). Each backend runs one warm-up chunk (the caches fill; on CUDA the chunk's graph is captured),
then `--chunks` chunks of an instrumented eager run (every network pass timed on its own) for the per-stage
breakdown, then `--chunks` chunks of `policy.infer` as users run it (a CUDA-graph replay on a GPU) for the chunk's
latency. `torch.cuda.profiler` start / stop bracket that measured window (`nsys --capture-range=cudaProfilerApi`);
`--trace FILE` records one more chunk with `torch.profiler` as a Chrome trace.

`report.json` (in `--out`), keys:
    schema          "cosmos-policy-demo/1"
    config, suite, device, device_name, dtype, torch, checkpoint ("random weights" or the path), image_size, task,
    seed, chunks    what ran
    observation     {"source": "real" | "synthetic", "path": str | null, "description": str}
    backends        {backend: {"warmup_ms": float,
                               "stages_ms": {stage: {"p50", "p95", "p99", "n"}},   # instrumented eager run
                               "chunk_ms": {"p50", "p95", "p99", "n", "samples"},  # policy.infer
                               "chunk_path": "cuda graph" | "eager"}}
                    stages, in order: preprocess, text, vae_encode, dit_pass_1 ... dit_pass_K, sampler, decode
                    (+ vae_decode with --future-images); sampler = denoise time not spent in network passes
    ratio           {"chunk_p50": reference / fused, "stages_p50": {stage: reference / fused}} (--backend both)
    targets         [{"what", "target", "measured" (str | null), "status": "pass" | "fail" | "not measured",
                      "note"}]  (the GPU latency targets, set in demo_report.py)
    actions         the last chunk's actions, (chunk, action_dim); value: its predicted value
    files           {"report": path, "chart": path, "trace": [paths]}
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError, missing_extra
from ..model.layout import LAYOUTS, get_layout
from . import argtypes, variant
from . import demo_report as R
from .entry import SAMPLE_NAME, USER_ERRORS, default_data_dir, device_error, flag_error, one_line

DEFAULT_OUT = "cosmos_policy_demo"
DEFAULT_CHUNKS = 3
TINY_IMAGE_SIZE = 64  # the tiny random checkpoint's image size: the CPU demo's VAE encode stays short
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..testing import LIBERO_SAMPLE_TASK

    parser.add_argument("--checkpoint", help="official checkpoint directory or Hugging Face repo id "
                                             "(default: random weights of --config)")
    parser.add_argument("--vae", help="Wan2.1 VAE weights (tokenizer/tokenizer.pth of "
                                      "nvidia/Cosmos-Predict2-2B-Video2World); official checkpoint folders lack it")
    parser.add_argument("--config", choices=["tiny", "2b"], default=None,
                        help="network size (default: tiny on the CPU, 2b on a GPU; from the checkpoint when given)")
    parser.add_argument("--suite", choices=sorted(LAYOUTS), default=None, help="default: the checkpoint's, or libero")
    parser.add_argument("--chunks", type=argtypes.positive, default=DEFAULT_CHUNKS,
                        help="measured chunks per backend and phase (after one warm-up chunk)")
    parser.add_argument("--backend", choices=["fused", "reference", "both"], default="fused")
    parser.add_argument("--device", default=None, help="default: cuda when a GPU is visible, else cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="default: bfloat16 on CUDA, float32 on the CPU")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help=f"folder holding {SAMPLE_NAME} (default: {default_data_dir()}, used when present)")
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT),
                        help="folder for report.json and stages.png (created)")
    parser.add_argument("--trace", type=Path, default=None, help="write a torch.profiler Chrome trace of one chunk")
    parser.add_argument("--seed", type=int, default=195, help="noise seed of every chunk")
    parser.add_argument("--task", default=LIBERO_SAMPLE_TASK, help="instruction (task_description)")
    parser.add_argument("--future-images", action="store_true", help="also decode the predicted future images")
    argtypes.add_steps_argument(parser)
    argtypes.add_fp8_argument(parser)
    variant.add_variant_argument(parser)




# -- checks before any work -----------------------------------------------------------------------------------------

def require_extras() -> None:
    """The demo needs the `[policy]` extra: diffusers (the VAE), tqdm (progress), matplotlib (the chart)."""
    for module in ("diffusers", "tqdm", "matplotlib"):
        try:
            __import__(module)
        except ImportError:
            raise missing_extra(module, "policy") from None


def writable_folder(path: Path, flag: str = "--out") -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".cosmos_policy_write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"{flag} {path}: cannot write there ({err.strerror or err})") from None
    return path


def load_observation(suite: str, task: str, data_dir: Path | None, seed: int = 0) -> tuple[dict, dict]:
    """The real LIBERO sample when it is found (an explicit `data_dir` must hold it), else a synthetic observation.

    Returns the observation and {"source", "path", "description"}."""
    layout = get_layout(suite)
    explicit = data_dir is not None
    data_dir = data_dir if explicit else default_data_dir()
    if explicit and not data_dir.is_dir():
        raise UsageError(f"--data-dir {data_dir}: no such directory")
    sample = data_dir / SAMPLE_NAME
    if suite == "libero" and sample.is_file():
        try:
            with np.load(sample) as data:
                obs = {key: np.asarray(data[key]) for key in ("primary_image", "wrist_image", "proprio")}
        except (OSError, ValueError, KeyError) as err:
            raise UsageError(f"--data-dir {data_dir}: {sample} is corrupt or not the LIBERO sample "
                             f"({one_line(err)})") from None
        info = {"source": "real", "path": str(sample), "description": f"real LIBERO observation ({sample})"}
    elif explicit and suite == "libero":
        raise UsageError(f"--data-dir {data_dir}: no {SAMPLE_NAME} there")
    else:
        rng = np.random.default_rng(seed)
        obs = {camera: rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for camera in layout.cameras}
        obs["proprio"] = rng.uniform(-0.5, 0.5, layout.proprio_dim)
        why = f"no real {suite} sample" if suite != "libero" else f"no {sample}"
        info = {"source": "synthetic", "path": None, "description": f"synthetic observation ({why})"}
    obs["task_description"] = task
    return obs, info


# -- building the policies ------------------------------------------------------------------------------------------

def load_policies(args: argparse.Namespace, device: torch.device, dtype: torch.dtype, tmp: str) -> tuple[dict, dict]:
    """{backend: CosmosPolicy} (sharing one set of weights) and a description of what was loaded."""
    from ..policy import CosmosPolicy

    backends = ["fused", "reference"] if args.backend == "both" else [args.backend]
    argtypes.check_fp8(args, device, dtype, backends[0])
    config_name = args.config or ("2b" if device.type == "cuda" else "tiny")
    config = variant.network_config(config_name, variant.variant_of(args))
    if args.checkpoint is None and config_name == "2b":
        first = _random_2b(args, config, device, dtype, backends[0])
        what = {"config": "2b", "checkpoint": "random weights", "image_size": first.image_size}
    else:
        path, flag = args.checkpoint, "--checkpoint"
        if path is None:
            from ..testing import write_tiny_checkpoint

            path = write_tiny_checkpoint(tmp, suite=args.suite or "libero", instructions=(args.task,),
                                         seed=args.seed % 2**31, image_size=TINY_IMAGE_SIZE,
                                         variant=variant.variant_of(args) or "predict2")
        try:
            first = CosmosPolicy.from_pretrained(
                path, suite=args.suite, vae=args.vae, device=device, dtype=dtype, backend=backends[0],
                network_config=config if args.config else None, num_steps=getattr(args, "steps", None),
                fp8=getattr(args, "fp8", False), **variant.policy_kwargs(args))
        except USER_ERRORS as err:
            if variant.load_error(args, err) is not None:
                raise variant.load_error(args, err) from err
            vae_named = args.vae is not None and str(args.vae) in one_line(err)
            raise (flag_error("--vae", args.vae, err) if vae_named else flag_error(flag, path, err)) from err
        what = {"config": config_name if args.config else _config_name(first.network.config),
                "checkpoint": "random weights" if args.checkpoint is None else str(args.checkpoint),
                "image_size": first.image_size}
    what["steps"], what["fp8"], what["variant"] = first.num_steps, first.network.fp8, first.variant
    policies = {backends[0]: first}
    for backend in backends[1:]:
        policies[backend] = first.with_backend(backend)
    return policies, what


def _config_name(config) -> str:
    from ..model.config import DiTConfig

    return {DiTConfig.tiny(): "tiny", DiTConfig.cosmos_predict2_2b(): "2b", DiTConfig.tiny_predict2_5(): "tiny",
            DiTConfig.cosmos_predict2_5_2b(): "2b"}.get(config, "custom")


def _random_2b(args, config, device: torch.device, dtype: torch.dtype, backend: str):
    """The 2B network and a Wan2.1-sized VAE with random weights, in memory only."""
    from ..model import CosmosDiT
    from ..model import layout as L
    from ..model.text import TextEmbeddings
    from ..model.vae import PolicyVAE
    from ..policy import CosmosPolicy
    from ..testing import tiny_autoencoder, tiny_statistics

    suite = args.suite or "libero"
    with torch.device(device):
        network = CosmosDiT(config, backend=backend)
    network = network.to(dtype=dtype)
    network.fp8 = getattr(args, "fp8", False)
    gen = torch.Generator().manual_seed(args.seed)
    text = TextEmbeddings({args.task: torch.randn(1, 512, config.text_channels, generator=gen)},
                          device=device, dtype=dtype, source="random embeddings")
    vae = PolicyVAE(tiny_autoencoder(args.seed, base_dim=96), device=device, dtype=dtype)  # 96: Wan2.1's width
    stats = L.DatasetStatistics.from_dict(tiny_statistics(suite, args.seed))
    return CosmosPolicy(network, vae, text, stats, get_layout(suite), seed=args.seed,
                        num_steps=getattr(args, "steps", None))


# -- measuring ------------------------------------------------------------------------------------------------------

class _TimedNetwork:
    """Stands in for the network during the instrumented run: times every pass, synchronising on CUDA."""

    def __init__(self, network):
        self.network, self.passes, self.last_args = network, [], None

    def __call__(self, *args):
        cuda = self.network.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = self.network(*args)
        if cuda:
            torch.cuda.synchronize()
        self.passes.append((time.perf_counter() - start) * 1e3)
        self.last_args = args
        return out


def measure(policy, obs: dict, args: argparse.Namespace, bar, trace: Path | None) -> tuple[dict, dict]:
    """Warm-up, instrumented eager run and the users' path for one policy; returns its report and the last result."""
    seed, n = args.seed, args.chunks
    start = time.perf_counter()
    result = policy.infer(obs, seed=seed, return_future_images=args.future_images)
    warmup_ms = (time.perf_counter() - start) * 1e3
    bar.update()

    graphs, network = policy.graphs, policy.network
    timed = _TimedNetwork(network)
    policy.graphs, policy.network = None, timed
    stages: dict[str, list[float]] = {}
    try:
        for _ in range(n):
            timed.passes = []
            timing = policy.infer(obs, seed=seed, return_future_images=args.future_images)["timing"]
            row = {"preprocess": timing["preprocess"], "text": timing["text"], "vae_encode": timing["vae_encode"]}
            row.update({f"dit_pass_{k + 1}": ms for k, ms in enumerate(timed.passes)})
            row["sampler"] = max(timing["denoise"] - sum(timed.passes), 0.0)
            row["decode"] = timing["postprocess"]
            if "vae_decode" in timing:
                row["vae_decode"] = timing["vae_decode"]
            for stage, ms in row.items():
                stages.setdefault(stage, []).append(ms)
            bar.update()
    finally:
        policy.graphs, policy.network = graphs, network

    cuda = policy.device.type == "cuda"
    chunks = []
    if cuda:
        torch.cuda.profiler.start()
    try:
        for _ in range(n):
            result = policy.infer(obs, seed=seed, return_future_images=args.future_images)
            chunks.append(result["timing"]["total"])
            bar.update()
    finally:
        if cuda:
            torch.cuda.profiler.stop()
    if trace is not None:
        activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
        with torch.profiler.profile(activities=activities) as prof:
            policy.infer(obs, seed=seed, return_future_images=args.future_images)
        prof.export_chrome_trace(str(trace))
        bar.update()
    report = {"warmup_ms": warmup_ms,
              "stages_ms": {stage: R.percentiles(values) for stage, values in stages.items()},
              "chunk_ms": {**R.percentiles(chunks), "samples": chunks},
              "chunk_path": "cuda graph" if graphs is not None else "eager",
              "_pass_args": timed.last_args}
    return report, result


# -- the subcommand -------------------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..policy import resolve_device

    require_extras()
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        raise device_error("--device", args.device, err) from None
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    out = writable_folder(args.out)
    if args.data_dir is not None and not args.data_dir.is_dir():  # before minutes of loading
        raise UsageError(f"--data-dir {args.data_dir}: no such directory")
    if args.trace is not None:
        writable_folder(args.trace.parent if str(args.trace.parent) else Path("."), "--trace")
    obs_suite = args.suite or "libero"
    with tempfile.TemporaryDirectory() as tmp:
        policies, what = load_policies(args, device, dtype, tmp)
        suite = next(iter(policies.values())).layout.name
        if args.suite is None and suite != obs_suite:
            obs_suite = suite
        obs, observation = load_observation(obs_suite, args.task, args.data_dir, seed=args.seed)
        first = next(iter(policies.values()))
        try:
            first.text.check_known([args.task])
        except ValueError as err:
            raise UsageError(f"--task: {one_line(err).removeprefix('task_description: ')}") from None
        header = R.header(what, suite, device, dtype, observation, args)
        print(header, flush=True)
        per_trace = 1 if args.trace is not None else 0
        results, last = {}, None
        with tqdm(total=len(policies) * (1 + 2 * args.chunks + per_trace), desc="chunks", unit="chunk",
                  file=sys.stderr, leave=False, dynamic_ncols=True) as bar:
            for backend, policy in policies.items():
                bar.set_description(backend)
                trace = R.trace_path(args.trace, backend, len(policies)) if args.trace is not None else None
                results[backend], last = measure(policy, obs, args, bar, trace)
        targets = R.targets(results, policies, what["config"], suite, device, dtype)
        report = R.build(args, what, suite, device, dtype, observation, results, targets, last, out)
    print(R.render(report))
    return 0
