"""Accuracy of every solver at 1..10 network passes, against a converged solution of the same ODE.

    python -m bench.sampler_accuracy [--out bench/results] [--samples 512]

The data distribution is a Gaussian mixture, whose denoiser (the posterior mean E[x0 | x, sigma]) has a
closed form, so the only error is the solver's. Each setting starts every solver from the same noise at
sigma_max and measures the relative RMS error of its final x0 against a reference computed with 3ab at
2001 passes (its distance to the 1001-pass solution is reported as `reference_error`). Writes
`sampler_accuracy.json` and `sampler_accuracy.png`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from cosmos_kernels.sampling import SOLVERS, sample

PASSES = list(range(1, 11))
SETTINGS = {
    # The policy's schedule (spec 4.5): Karras, rho = 7, sigma 80 -> 4, then the clean prediction at 4.
    "policy (sigma 80->4, karras)": dict(sigma_min=4.0, sigma_max=80.0, rho=7.0, schedule="karras"),
    # A generic EDM image-model range, for contrast.
    "edm (sigma 80->0.002, karras)": dict(sigma_min=0.002, sigma_max=80.0, rho=7.0, schedule="karras"),
}


class GaussianMixture:
    """Isotropic Gaussian mixture in `dim` dimensions: weights w_k, means m_k, std s_k."""

    def __init__(self, dim: int = 16, components: int = 8, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.means = torch.randn(components, dim, generator=g, dtype=torch.float64)
        self.stds = 0.1 + 0.4 * torch.rand(components, generator=g, dtype=torch.float64)
        self.log_w = torch.log_softmax(torch.randn(components, generator=g, dtype=torch.float64), 0)
        self.dim = dim

    def x0(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Exact posterior mean E[x0 | x] at noise level sigma (shape (B,)); x is (B, dim)."""
        x, sigma = x.double(), sigma.double().view(-1, 1, 1)
        var = self.stds.view(1, -1, 1) ** 2 + sigma**2  # (B, K, 1)
        diff = x.unsqueeze(1) - self.means.unsqueeze(0)  # (B, K, dim)
        log_p = self.log_w - 0.5 * (diff**2 / var).sum(-1) - 0.5 * self.dim * torch.log(var.squeeze(-1))
        resp = torch.softmax(log_p, dim=1).unsqueeze(-1)
        shrink = self.stds.view(1, -1, 1) ** 2 / var
        return (resp * (self.means.unsqueeze(0) + shrink * diff)).sum(1)


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def study(samples: int = 512, seed: int = 0, ref_passes: int = 2001) -> dict:
    gm = GaussianMixture(seed=seed)
    noise = torch.randn(samples, gm.dim, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    results = {}
    for name, cfg in SETTINGS.items():
        x_T = noise * cfg["sigma_max"]
        reference = sample(gm.x0, x_T, num_steps=ref_passes, solver="3ab", **cfg)
        coarser = sample(gm.x0, x_T, num_steps=ref_passes // 2 + 1, solver="3ab", **cfg)
        errors = {s: [rel_rms(sample(gm.x0, x_T, num_steps=p, solver=s, **cfg), reference) for p in PASSES]
                  for s in SOLVERS}
        results[name] = {"config": cfg, "reference_error": rel_rms(coarser, reference), "errors": errors}
    return {"passes": PASSES, "samples": samples, "dim": gm.dim, "settings": results}


def passes_to_reach(errors: list[float], target: float) -> int | None:
    return next((p for p, e in zip(PASSES, errors) if e <= target), None)


def table(result: dict) -> str:
    lines = []
    for name, r in result["settings"].items():
        target = r["errors"]["2ab"][PASSES.index(5)]
        lines.append(f"\n{name}: relative RMS error of x0 (reference error {r['reference_error']:.1e})")
        lines.append("solver   | " + " ".join(f"{p:>8d}" for p in PASSES) + " | passes to reach 2ab@5")
        for s, errs in r["errors"].items():
            reach = passes_to_reach(errs, target)
            lines.append(f"{s:<8s} | " + " ".join(f"{e:8.2e}" for e in errs) + f" | {reach if reach else '>10'}")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = result["settings"]
    fig, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4.5), squeeze=False)
    for ax, (name, r) in zip(axes[0], settings.items()):
        for s, errs in r["errors"].items():
            ax.semilogy(PASSES, errs, marker="o", label=s)
        ax.axhline(r["errors"]["2ab"][PASSES.index(5)], color="gray", ls="--", lw=0.8, label="2ab @ 5 passes")
        ax.set_title(name)
        ax.set_xlabel("network passes (incl. final clean prediction)")
        ax.set_ylabel("relative RMS error of x0")
        ax.set_xticks(PASSES)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--samples", type=int, default=512)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    result = study(args.samples)
    (args.out / "sampler_accuracy.json").write_text(json.dumps(result, indent=2))
    plot(result, args.out / "sampler_accuracy.png")
    print(table(result))
    print(f"\nwrote {args.out / 'sampler_accuracy.json'} and {args.out / 'sampler_accuracy.png'}")


if __name__ == "__main__":
    main()
