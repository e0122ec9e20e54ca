"""Accuracy of the FP8 token GEMMs against the bf16 network, both measured against fp32: one network pass, and the
whole action chain (the policy's sampler over the network) read out as the policy reads it.

    python -m bench.fp8_accuracy [--out bench/results] [--seeds 4] [--wide-seeds 3] [--wide-blocks 1] [--wide-steps 3]

Per seed, random weights (std 1/sqrt(fan_in); norm weights 1 +- 0.3), T5-like text (zero past the instruction's
tokens, as the official embeddings are padded) and the fused network in fp32 (the reference), in bf16, and in bf16
with `fp8=True`; the relative error ||a - b|| / ||b|| of each against fp32:

- `network`: one pass of the tiny config on policy-like inputs (as before);
- `chain`: the LIBERO action query (`conditioned_x0_fn`, the official "2ab" sampler, noise `arch_invariant_noise(seed)
  * sigma_max`, clean conditional frames), for the final latents, the normalised actions and the value, on two
  networks: the tiny config at 8 x 8 latents, and `wide`: blocks of the 2B's width (2048, 16 heads, MLP 8192, text
  1024) at LIBERO's 1,764 tokens (9 latent frames of 28 x 28), a few blocks only so that the CPU can run it.

Writes `fp8_accuracy.json` and `fp8_accuracy.png`. The default sizes take about 3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cosmos_kernels.sampling import arch_invariant_noise, sample
from cosmos_policy import CosmosDiT, DiTConfig
from cosmos_policy.model import layout as L
from cosmos_policy.policy.planning import conditioned_x0_fn
from cosmos_policy.testing import t5_like_embedding

VARIANTS = ("bf16", "fp8")
INSTRUCTION = "put both the alphabet soup and the tomato sauce in the basket"
CHAIN_KEYS = ("latents", "actions", "value")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def random_network(config: DiTConfig, gen: torch.Generator) -> CosmosDiT:
    model = CosmosDiT(config, backend="fused").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = 0.3 if "norm" in name else p.shape[-1] ** -0.5
            p.copy_(torch.randn(p.shape, generator=gen) * std + (1.0 if "norm" in name else 0.0))
    return model


def _three(model: CosmosDiT, run) -> dict:
    """run(model) in fp32, bf16 and bf16 + FP8 (the model is converted in place)."""
    out = {"fp32": run(model)}
    model.bfloat16()
    out["bf16"] = run(model)
    model.fp8 = True
    out["fp8"] = run(model)
    return out


@torch.no_grad()
def measure_network(seed: int) -> dict[str, float]:
    """One pass of the tiny config: errors of bf16 and FP8 against fp32, and of FP8 against bf16."""
    gen = torch.Generator().manual_seed(seed)
    model = random_network(DiTConfig.tiny(), gen)
    c = model.config
    b, t, h, w = 1, 3, 8, 6
    times = torch.rand(b, t, generator=gen) * 0.9 + 0.05
    times[:, 0] = 0.0
    cond = torch.zeros(b, 1, t, h, w)
    cond[:, :, 0] = 1.0
    inputs = dict(x_B_C_T_H_W=torch.randn(b, c.in_channels, t, h, w, generator=gen), timesteps_B_T=times,
                  crossattn_emb=t5_like_embedding("put the bowl on the plate", c.crossattn_emb_channels, gen),
                  condition_video_input_mask_B_C_T_H_W=cond)
    out = _three(model, lambda m: m(**inputs))
    return {"bf16_vs_fp32": _rel(out["bf16"], out["fp32"]), "fp8_vs_fp32": _rel(out["fp8"], out["fp32"]),
            "fp8_vs_bf16": _rel(out["fp8"], out["bf16"])}


@torch.no_grad()
def measure_chain(config: DiTConfig, latent_side: int, steps: int, seed: int) -> dict[str, dict[str, float]]:
    """The LIBERO action query at `steps` passes: {"bf16" | "fp8": {"latents", "actions", "value"}} errors against
    the fp32 chain (the value: |a - b| / |b|)."""
    gen = torch.Generator().manual_seed(seed)
    layout = L.LIBERO
    model = random_network(config, gen)
    shape = (1, L.LATENT_CHANNELS, layout.state_t, latent_side, latent_side)
    gt = torch.zeros(shape)
    gt[:, :, : layout.num_conditional_frames] = torch.randn(*shape[:2], layout.num_conditional_frames,
                                                            *shape[3:], generator=gen)
    gt = L.inject_proprio(gt, torch.rand(1, layout.proprio_dim, generator=gen) * 2 - 1, layout.proprio_index)
    cond_frames = torch.zeros(layout.state_t, dtype=torch.bool)
    cond_frames[: layout.num_conditional_frames] = True
    text = t5_like_embedding(INSTRUCTION, config.crossattn_emb_channels, gen)
    noise = arch_invariant_noise(seed, shape) * layout.sigma_max

    def chain(m: CosmosDiT) -> dict[str, torch.Tensor]:
        x0_fn = conditioned_x0_fn(m, gt, text.to(m.dtype), cond_frames)
        latents = sample(x0_fn, noise, num_steps=steps, sigma_min=layout.sigma_min, sigma_max=layout.sigma_max,
                         solver="2ab").float()
        return {"latents": latents,
                "actions": L.extract_actions(latents, layout.action_index, layout.chunk_size, layout.action_dim),
                "value": L.extract_value(latents, layout.value_index)}

    out = _three(model, chain)
    return {v: {k: _rel(out[v][k], out["fp32"][k]) for k in CHAIN_KEYS} for v in VARIANTS}


def _mean(rows: dict) -> dict:
    return {v: {k: sum(r[v][k] for r in rows.values()) / len(rows) for k in CHAIN_KEYS} for v in VARIANTS}


def chain_report(config: DiTConfig, latent_side: int, steps: int, seeds: int, label: str) -> dict:
    start = time.perf_counter()
    rows = {seed: measure_chain(config, latent_side, steps, seed) for seed in range(seeds)}
    tokens = L.LIBERO.state_t * (latent_side // config.patch_spatial) ** 2
    return {"config": label, "model_channels": config.model_channels, "num_blocks": config.num_blocks,
            "tokens": tokens, "steps": steps, "seeds": seeds, "per_seed": rows, "mean": _mean(rows),
            "seconds": round(time.perf_counter() - start, 1)}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chains = list(report["chain"].values())
    fig, axes = plt.subplots(1, len(chains), figsize=(5 * len(chains), 3.6), squeeze=False)
    for ax, chain in zip(axes[0], chains):
        for j, variant in enumerate(VARIANTS):
            x = [i + (j - 0.5) * 0.38 for i in range(len(CHAIN_KEYS))]
            ax.bar(x, [chain["mean"][variant][k] * 100 for k in CHAIN_KEYS], width=0.38, alpha=0.5,
                   label=f"{variant} vs fp32")
            for i, k in enumerate(CHAIN_KEYS):
                values = [r[variant][k] * 100 for r in chain["per_seed"].values()]
                ax.scatter([x[i]] * len(values), values, s=12, color="k")
        ax.set_xticks(range(len(CHAIN_KEYS)), CHAIN_KEYS)
        ax.set_ylabel("relative error (%)")
        ax.set_title(f"{chain['config']}: {chain['num_blocks']} blocks x {chain['model_channels']}, "
                     f"{chain['tokens']} tokens, {chain['steps']} passes", fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle("LIBERO action chain: bf16 and FP8 token GEMMs against fp32 (mean and seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--seeds", type=int, default=4, help="seeds of the tiny network and chain")
    parser.add_argument("--steps", type=int, default=L.LIBERO.num_steps, help="passes of the tiny chain")
    parser.add_argument("--wide-seeds", type=int, default=3, help="seeds of the 2B-width chain (0: skip it)")
    parser.add_argument("--wide-blocks", type=int, default=1, help="blocks of the 2B-width network")
    parser.add_argument("--wide-steps", type=int, default=3, help="passes of the 2B-width chain")
    parser.add_argument("--wide-side", type=int, default=28, help="latent side of the 2B-width chain (28: LIBERO)")
    args = parser.parse_args(argv)
    network = {seed: measure_network(seed) for seed in range(args.seeds)}
    keys = ["bf16_vs_fp32", "fp8_vs_fp32", "fp8_vs_bf16"]
    report = {"dtype": "bfloat16", "reference": "float32",
              "network": {"config": "tiny", "per_seed": network,
                          "mean": {k: sum(r[k] for r in network.values()) / len(network) for k in keys}},
              "chain": {"tiny": chain_report(DiTConfig.tiny(), 8, args.steps, args.seeds, "tiny")}}
    if args.wide_seeds:
        wide = DiTConfig.cosmos_predict2_2b(num_blocks=args.wide_blocks)
        report["chain"]["wide"] = chain_report(wide, args.wide_side, args.wide_steps, args.wide_seeds, "2B width")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fp8_accuracy.json").write_text(json.dumps(report, indent=2))
    plot(report, args.out / "fp8_accuracy.png")
    print(json.dumps({"network": report["network"]["mean"],
                      **{name: c["mean"] for name, c in report["chain"].items()}}, indent=2))
    return report


if __name__ == "__main__":
    main()
