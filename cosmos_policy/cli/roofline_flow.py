"""The Cosmos-Predict2.5 parts of `cosmos-policy roofline`: the projected Reason1 context, the UniPC step, and the
Predict2 chunk it is shown beside.

The text projection (`crossattn_proj`, 2 x 512 x 100352 x 1024 FLOPs) runs once per instruction and is cached with
the cross-attention K/V, so it is not part of a chunk; the Reason1 context has no zero padding, so cross-attention
reads all 512 positions (a T5 context is cut to its instruction's rows).
"""

from __future__ import annotations

import argparse

import torch


def projected_context(config, length: int, dtype: torch.dtype) -> torch.Tensor:
    """A meta (1, length, crossattn_emb_channels) context marked as projected (what the policy hands the network)."""
    from cosmos_policy.model.text_projection import mark_projected

    return mark_projected(torch.empty(1, length, config.crossattn_emb_channels, dtype=dtype, device="meta"))


def flow_step(v: torch.Tensor, shape: tuple) -> torch.Tensor:
    """One UniPC step (order 2 with its corrector, the steady state) on meta tensors of `shape`."""
    from cosmos_kernels.sampling.flow_unipc import NUM_COLUMNS, flow_unipc_step

    state = torch.empty(shape, dtype=torch.float32, device="meta")
    row = torch.empty(NUM_COLUMNS, dtype=torch.float32, device="meta")
    return flow_unipc_step(2, v.float(), state, state, state, state, row)[0]


def predict2_chunk(count, summarize, args: argparse.Namespace, gpus: list[str]) -> dict:
    """{backend: predicted ms per chunk per GPU} of the Predict2 policy at the same shapes."""
    counted, setup = count(args.config, args.suite, args.text_tokens, vae=not args.no_vae, steps=args.steps,
                           fp8=getattr(args, "fp8", False))
    report = summarize(counted, setup["passes_per_chunk"], gpus)
    return {backend: {"predicted_ms_per_chunk": r["predicted_ms_per_chunk"], "flops_per_chunk": r["flops_per_chunk"],
                      "passes_per_chunk": r["passes_per_chunk"]} for backend, r in report.items()}


def comparison(report: dict, gpus: list[str]) -> str:
    """Predicted ms per chunk (fused), Predict2.5 beside Predict2, per GPU."""
    lines = ["predict2.5 vs predict2, fused, predicted ms per chunk:"]
    for g in gpus:
        new = report["fused"]["predicted_ms_per_chunk"][g]
        old = report["predict2"]["fused"]["predicted_ms_per_chunk"][g]
        lines.append(f"  {g}: {new:.2f} vs {old:.2f} ({100 * (new / old - 1):+.1f} %)")
    return "\n".join(lines)
