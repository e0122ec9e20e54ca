"""`python -m cosmos_policy [demo] [options]`: one action query, its actions and per-stage timing.

Without `--checkpoint` a tiny random-weight checkpoint is written to a temporary directory (the plumbing, not a
trained policy). The observation is the real LIBERO sample of ../shared/data when it is there, a synthetic one
otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from .layout import get_layout
from .testing import LIBERO_SAMPLE_TASK, write_tiny_checkpoint

SAMPLE_NAME = "libero_sample_observation.npz"


def default_data_dir() -> Path:
    """../shared/data beside the repository root (COSMOS_POLICY_DATA overrides it)."""
    if "COSMOS_POLICY_DATA" in os.environ:
        return Path(os.environ["COSMOS_POLICY_DATA"])
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def load_observation(suite: str, task: str, data_dir: Path, seed: int = 0) -> tuple[dict, str]:
    layout = get_layout(suite)
    sample = data_dir / SAMPLE_NAME
    if suite == "libero" and sample.is_file():
        with np.load(sample) as data:
            obs = {key: data[key] for key in ("primary_image", "wrist_image", "proprio")}
        source = f"real LIBERO observation ({sample})"
    else:
        rng = np.random.default_rng(seed)
        obs = {camera: rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for camera in layout.cameras}
        obs["proprio"] = rng.uniform(-0.5, 0.5, layout.proprio_dim)
        source = "synthetic observation"
    obs["task_description"] = task
    return obs, source


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cosmos_policy", description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="demo", choices=["demo"])
    parser.add_argument("--checkpoint", help="official checkpoint directory or Hugging Face repo id "
                                             "(default: a tiny random checkpoint written on the fly)")
    parser.add_argument("--vae", help="VAE weights (tokenizer.pth of nvidia/Cosmos-Predict2-2B-Video2World)")
    parser.add_argument("--suite", choices=["libero", "robocasa", "aloha"], default=None)
    parser.add_argument("--task", default=LIBERO_SAMPLE_TASK, help="instruction (task_description)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--backend", choices=["fused", "reference"], default="fused")
    parser.add_argument("--seed", type=int, default=195)
    parser.add_argument("--repeat", type=int, default=2, help="queries to run (the first one fills the caches)")
    parser.add_argument("--data-dir", type=Path, default=None, help="directory holding " + SAMPLE_NAME)
    parser.add_argument("--future-images", action="store_true", help="also decode the predicted future images")
    args = parser.parse_args(argv)

    from .policy import CosmosPolicy

    with tempfile.TemporaryDirectory() as tmp:
        path = args.checkpoint
        if path is None:
            path = write_tiny_checkpoint(tmp, suite=args.suite or "libero", instructions=(args.task,))
            print(f"tiny random-weight checkpoint written to {path}")
        policy = CosmosPolicy.from_pretrained(path, suite=args.suite, vae=args.vae, device=args.device,
                                              backend=args.backend)
        obs, source = load_observation(policy.layout.name, args.task, args.data_dir or default_data_dir())
        print(f"suite {policy.layout.name}, device {policy.device}, dtype {policy.dtype}, backend {args.backend}; "
              f"{source}; task {args.task!r}")
        result = None
        for i in range(max(1, args.repeat)):
            result = policy.infer(obs, seed=args.seed, return_future_images=args.future_images)
            stages = ", ".join(f"{k} {v:.1f}" for k, v in result["timing"].items())
            print(f"query {i + 1}: {stages} (ms)")
        with np.printoptions(precision=4, suppress=True, linewidth=120):
            print(f"actions {result['actions'].shape} (seed {result['seed']}):\n{result['actions']}")
        print(f"value {result['value']:.4f}")
        if args.future_images:
            print("future images: " + ", ".join(f"{k} {v.shape}" for k, v in result["future_images"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
