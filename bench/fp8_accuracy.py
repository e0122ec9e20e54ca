"""Accuracy of the FP8 token GEMMs against the bf16 network, both measured against fp32, on the tiny config.

    python -m bench.fp8_accuracy [--out bench/results] [--seeds 4]

For each seed: a tiny DiT with random weights, inputs as the policy builds them and T5-like zero-padded text; the
fused network in fp32 (the reference), in bf16, and in bf16 with `fp8=True`. Reports the relative error
||a - b|| / ||b|| of each against fp32 (and of FP8 against bf16). Writes `fp8_accuracy.json` and `fp8_accuracy.png`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from cosmos_policy import CosmosDiT, DiTConfig
from cosmos_policy.testing import t5_like_embedding


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@torch.no_grad()
def measure(seed: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)
    model = CosmosDiT(DiTConfig.tiny(), backend="fused").eval()
    for name, p in model.named_parameters():
        std = 0.3 if "norm" in name else p.shape[-1] ** -0.5
        p.copy_(torch.randn(p.shape, generator=gen) * std + (1.0 if "norm" in name else 0.0))
    c = model.config
    b, t, h, w = 1, 3, 8, 6
    times = torch.rand(b, t, generator=gen) * 0.9 + 0.05
    times[:, 0] = 0.0
    cond = torch.zeros(b, 1, t, h, w)
    cond[:, :, 0] = 1.0
    inputs = dict(x_B_C_T_H_W=torch.randn(b, c.in_channels, t, h, w, generator=gen), timesteps_B_T=times,
                  crossattn_emb=t5_like_embedding("put the bowl on the plate", c.crossattn_emb_channels, gen),
                  condition_video_input_mask_B_C_T_H_W=cond)
    fp32 = model(**inputs)
    model = model.bfloat16()
    bf16 = model(**inputs)
    model.fp8 = True
    fp8 = model(**inputs)
    return {"bf16_vs_fp32": _rel(bf16, fp32), "fp8_vs_fp32": _rel(fp8, fp32), "fp8_vs_bf16": _rel(fp8, bf16)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--seeds", type=int, default=4)
    args = parser.parse_args(argv)
    rows = {seed: measure(seed) for seed in range(args.seeds)}
    keys = ["bf16_vs_fp32", "fp8_vs_fp32", "fp8_vs_bf16"]
    report = {"config": "tiny", "dtype": "bfloat16", "per_seed": rows,
              "mean": {k: sum(r[k] for r in rows.values()) / len(rows) for k in keys}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fp8_accuracy.json").write_text(json.dumps(report, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, k in enumerate(keys):
        values = [r[k] * 100 for r in rows.values()]
        ax.scatter([i] * len(values), values, alpha=0.6)
        ax.bar(i, report["mean"][k] * 100, alpha=0.3)
    ax.set_xticks(range(len(keys)), [k.replace("_", " ") for k in keys])
    ax.set_ylabel("relative error (%)")
    ax.set_title("tiny DiT: FP8 token GEMMs vs bf16 (fp32 reference)")
    fig.tight_layout()
    fig.savefig(args.out / "fp8_accuracy.png", dpi=120)
    print(json.dumps(report["mean"], indent=2))
    return report


if __name__ == "__main__":
    main()
