"""`cosmos-policy roofline`: predicted GPU latency of an action chunk, counted on the meta device (no GPU, no memory).

One DiT pass, one sampler step and the VAE encode of the conditioning frames run on meta tensors under
`cosmos_kernels.tools.dispatch_counter.DispatchCounter`, once per network backend, in steady state (the fused
network's exact caches are filled by a first, uncounted pass, as the first chunk fills them), dispatching as
they would on CUDA (`cosmos_kernels.backends.meta_as_cuda`; attention takes its fixed deterministic choice,
since nothing can be timed). The text is what a real checkpoint sees: T5 embeddings that are zero past the
instruction's tokens, whose count reaches the network as metadata (`cosmos_policy.model.with_text_tokens`).

Prediction, per recorded op, on each card of `GPUS` (`roofline_cards.py`):

    time = max(matrix FLOPs / matmul rate, bytes moved / memory bandwidth) + launches * launch cost

summed over the ops. The rates are the card's peak datasheet figures scaled by an efficiency (assumed, or
measured where a measurement is cited), never above peak, so no prediction beats the card's peak. Activations
that stay in L2 and kernels that overlap are not modelled: the estimate is a roofline, not a simulation.
A chunk is its passes (`--steps`, the suite's official count by default) x (DiT pass + sampler step) + the VAE
encode (the fused backend: the VAE patched with cosmos_kernels, as the fused policy runs it).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

import torch

from cosmos_kernels.backends import meta_as_cuda
from cosmos_kernels.tools.dispatch_counter import DispatchCounter, OpRecord, Totals
from cosmos_policy.cli import argtypes
from cosmos_policy.cli import roofline_flow as flow_roofline
from cosmos_policy.cli.roofline_cards import GPU, GPUS, predict_seconds
from cosmos_policy.cli.roofline_ops import breakdown, format_breakdown, table
from cosmos_policy.cli.variant import add_variant_argument
from cosmos_policy.errors import UsageError

BACKENDS = ("reference", "fused")
CONFIGS = ("2b", "tiny")
TEXT_LENGTH = 512  # T5 positions of the official embeddings
# T5 tokens (SentencePiece pieces + EOS, counted by hand) of a typical instruction per suite.
TYPICAL_INSTRUCTIONS = {
    "libero": ("put both the alphabet soup and the tomato sauce in the basket", 13),
    "robocasa": ("pick the apple from the counter and place it in the sink", 13),
    "aloha": ("put the candy in the ziploc bag", 9),
}
def overhead_ratio(records: list[OpRecord], gpu: GPU) -> float:
    """What the records spend beyond their matrix work (non-matmul bytes at the card's bandwidth plus every
    launch's cost) over their matrix time (FLOPs at its matmul rate): how far from matmul-bound they are."""
    totals = _totals(records)
    matrix = sum(r.cost.flops / gpu.rate(r) for r in records if r.cost.flops)
    beyond = totals.nonmatmul_bytes / gpu.bytes_per_s + totals.launches * gpu.launch_us * 1e-6
    return beyond / matrix if matrix else float("inf")


# -- the counted runs -------------------------------------------------------------------------------------------

@dataclass
class Counted:
    """The records of one backend's DiT pass, sampler step and VAE encode (None: VAE skipped)."""

    dit_pass: list[OpRecord]
    sampler_step: list[OpRecord]
    vae_encode: list[OpRecord] | None

    @property
    def per_pass(self) -> list[OpRecord]:
        return self.dit_pass + self.sampler_step

    def chunk(self, passes: int) -> list[OpRecord]:
        return self.per_pass * passes + (self.vae_encode or [])


def _totals(records: list[OpRecord]) -> Totals:
    totals = Totals()
    for record in records:
        totals.add(record)
    return totals


def dit_config(name: str, variant: str | None = None):
    from .variant import network_config

    if name not in CONFIGS:
        raise UsageError(f"--config: expected one of {', '.join(CONFIGS)}, got {name!r}")
    return network_config(name, variant)


def count_network(config, layout, text_tokens: int, dtype: torch.dtype = torch.bfloat16,
                  fp8: bool = False) -> dict[str, tuple]:
    """Per backend: (DiT pass records, sampler step records), counted on meta tensors in steady state (`fp8`: the
    fused network's token GEMMs in FP8, its weights quantized by the first, uncounted pass)."""
    from cosmos_kernels.sampling import Sampler, sampler_step
    from cosmos_policy.model import CosmosDiT, with_text_tokens
    from cosmos_policy.model.layout import IMAGE_SIZE, LATENT_CHANNELS, SPATIAL_COMPRESSION

    meta = torch.device("meta")
    side = IMAGE_SIZE // SPATIAL_COMPRESSION
    shape = (1, LATENT_CHANNELS, layout.state_t, side, side)
    with torch.device(meta):
        net = CosmosDiT(config, backend="fused").to(dtype).eval()
    x = torch.empty(shape, dtype=dtype, device=meta)
    context = with_text_tokens(torch.empty(1, TEXT_LENGTH, config.crossattn_emb_channels, dtype=dtype, device=meta),
                               text_tokens)
    flow = config.crossattn_proj_in_channels is not None
    if flow:  # Reason1 text: projected once per instruction (cached), no zero padding to skip
        context = flow_roofline.projected_context(config, TEXT_LENGTH, dtype)
    cond_frames = torch.arange(layout.state_t) < layout.num_conditional_frames
    mask5 = cond_frames.to(dtype).view(1, 1, -1, 1, 1).to(meta)
    # the fused chunk hands host times (its cache key)
    host_times = torch.where(cond_frames, 0.0, 999.0 if flow else 0.5).view(1, -1)
    out: dict[str, tuple] = {}
    with torch.no_grad(), meta_as_cuda():
        sampler = Sampler(shape, num_steps=layout.num_steps, sigma_min=layout.sigma_min, sigma_max=layout.sigma_max,
                          net_dtype=dtype, device=meta)
        for backend in BACKENDS:
            net.backend, net.fp8 = backend, fp8 and backend == "fused"  # one set of parameters, two implementations
            times = host_times if backend == "fused" else host_times.to(meta)
            if backend == "fused":
                net(x, times, context, mask5)  # fills the caches (the reference has none)
            with DispatchCounter() as counter:
                with counter.section("dit"):
                    v = net(x, times, context, mask5)
                with counter.section("step"):
                    state = sampler.state
                    if flow:
                        flow_roofline.flow_step(v, shape)
                    else:
                        sampler_step(v, state, state, state, sampler.cond_latent, sampler.cond_mask, sampler.coeffs,
                                     sampler.step_index[1:2], backend="reference" if backend == "reference" else None)
            out[backend] = (counter.sections["dit"], counter.sections["step"])
    return out


def count_vae_encode(layout, dtype: torch.dtype = torch.bfloat16, backend: str = "reference") -> list[OpRecord] | None:
    """The steady-state prefix encode of one query (the constant chunks come from the encoder cache) with the
    `backend`'s VAE (diffusers' modules, or patched with cosmos_kernels for "fused"), or None without diffusers."""
    try:
        from diffusers import AutoencoderKLWan
    except ImportError:
        return None
    from cosmos_policy.model.layout import IMAGE_SIZE
    from cosmos_policy.model.vae import PolicyVAE

    with torch.device("meta"):
        autoencoder = AutoencoderKLWan()  # the Wan2.1 VAE's default (real) size
    vae = PolicyVAE(autoencoder, dtype=dtype, backend=backend)
    images = [torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8) for _ in layout.cameras]
    with torch.no_grad(), meta_as_cuda():
        vae.encode_prefix(images)  # fills the constant-prefix cache
        with DispatchCounter() as counter:
            vae.encode_prefix(images)
    return counter.records


def passes_per_chunk(layout, steps: int | None = None, variant: str | None = None) -> int:
    """Network passes of one action query at `steps` (None: the suite's official count), as the policy's "2ab"
    sampler spends them: 1 or 2 steps are one prediction at sigma_max."""
    from cosmos_kernels.sampling import multistep_plan

    steps = layout.num_steps if steps is None else steps
    if variant == "predict2.5":  # the UniPC spends one pass per step
        return steps
    return multistep_plan("2ab", steps, layout.sigma_min, layout.sigma_max).num_passes


def count(config_name: str = "2b", suite: str = "libero", text_tokens: int | None = None,
          vae: bool = True, steps: int | None = None, fp8: bool = False,
          variant: str | None = None) -> tuple[dict[str, Counted], dict]:
    """Count both backends; returns (per-backend records, the setup that was counted)."""
    from cosmos_policy.model.layout import IMAGE_SIZE, LAYOUTS, SPATIAL_COMPRESSION, get_layout

    if suite not in LAYOUTS:
        raise UsageError(f"--suite: expected one of {', '.join(sorted(LAYOUTS))}, got {suite!r}")
    config, layout = dit_config(config_name, variant), get_layout(suite)
    instruction, typical = TYPICAL_INSTRUCTIONS[suite]
    tokens = typical if text_tokens is None else text_tokens
    if not 1 <= tokens <= TEXT_LENGTH:
        raise UsageError(f"--text-tokens: expected 1 .. {TEXT_LENGTH}, got {tokens}")
    network = count_network(config, layout, tokens, fp8=fp8)
    vae_records = {b: count_vae_encode(layout, backend=b) if vae else None for b in BACKENDS}
    counted = {b: Counted(*network[b], vae_records[b]) for b in BACKENDS}
    setup = {"config": config_name, "suite": suite, "steps": layout.num_steps if steps is None else steps,
             "passes_per_chunk": passes_per_chunk(layout, steps, variant), "variant": variant or "predict2",
             "tokens": layout.state_t * (IMAGE_SIZE // SPATIAL_COMPRESSION // config.patch_spatial) ** 2,
             "text_tokens": tokens, "text_positions": TEXT_LENGTH,
             "instruction": instruction if text_tokens is None else None, "dtype": "bfloat16",
             "fp8": fp8, "vae": vae_records["reference"] is not None, "vae_requested": vae}
    return counted, setup


def summarize(counted: dict[str, Counted], passes: int, gpus: list[str]) -> dict:
    """The JSON report: per backend, the per-pass counts and the predicted pass and chunk times."""
    report = {}
    for backend, c in counted.items():
        per_pass, chunk = _totals(c.per_pass), _totals(c.chunk(passes))
        parts = {name: _totals(r) for name, r in (("dit_pass", c.dit_pass), ("sampler_step", c.sampler_step),
                                                  ("vae_encode", c.vae_encode)) if r is not None}
        report[backend] = {
            "launches_per_pass": per_pass.launches,
            "flops_per_pass": per_pass.flops,
            "bytes_per_pass": per_pass.bytes,
            "nonmatmul_bytes_per_pass": per_pass.nonmatmul_bytes,
            "predicted_ms_per_pass": {g: 1e3 * predict_seconds(c.per_pass, GPUS[g]) for g in gpus},
            "predicted_ms_per_chunk": {g: 1e3 * predict_seconds(c.chunk(passes), GPUS[g]) for g in gpus},
            "overhead_vs_matrix_per_pass": {g: overhead_ratio(c.per_pass, GPUS[g]) for g in gpus},
            "launches_per_chunk": chunk.launches,
            "flops_per_chunk": chunk.flops,
            "passes_per_chunk": passes,
            "parts": {name: {"launches": t.launches, "flops": t.flops, "bytes": t.bytes,
                             "nonmatmul_bytes": t.nonmatmul_bytes} for name, t in parts.items()},
            # Per card, the pass's ops grouped by name, most predicted time first: where the time goes.
            "breakdown_per_pass": {g: breakdown(c.per_pass, GPUS[g]) for g in gpus},
            # What launches in one pass, most launches first: where the hot path can still save.
            "ops_per_pass": {name: {"calls": n, "launches": launches, "flops": flops, "bytes": moved}
                             for name, (n, launches, flops, moved) in sorted(
                                 per_pass.by_op.items(), key=lambda kv: (-kv[1][1], kv[0])) if launches},
        }
    return report


# -- the subcommand ---------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="2b", help=f"network size: {' | '.join(CONFIGS)} (default 2b)")
    parser.add_argument("--suite", default="libero", help="libero | robocasa | aloha (default libero)")
    parser.add_argument("--gpu", default="all", help=f"{' | '.join(GPUS)} | all (default all)")
    parser.add_argument("--text-tokens", type=int, default=None,
                        help="non-zero T5 tokens of the instruction (default: a typical instruction of the suite)")
    parser.add_argument("--no-vae", action="store_true", help="leave the VAE encode out of the chunk")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout (notes go to stderr)")
    argtypes.add_steps_argument(parser)
    argtypes.add_fp8_argument(parser)
    add_variant_argument(parser, "predict2 (default) or predict2.5: the Predict2.5 chunk (cached text projection, "
                                 "UniPC), shown beside the Predict2 one")
    parser.add_argument("--breakdown", action="store_true",
                        help="also print, per card, the fused pass's top ops by predicted time and by non-matmul bytes")


def _gpus(choice: str) -> list[str]:
    if choice == "all":
        return list(GPUS)
    names = [g.strip().lower() for g in choice.split(",")]
    unknown = [g for g in names if g not in GPUS]
    if unknown:
        raise UsageError(f"--gpu: unknown GPU {unknown[0]!r}; expected one of {', '.join(GPUS)} or all")
    return names


def format_report(report: dict, setup: dict, gpus: list[str]) -> str:
    ref, fused = report["reference"], report["fused"]
    head = (f"roofline: {setup['config']} {setup['variant']} DiT, {setup['suite']} ({setup['tokens']} tokens, "
            f"{setup['steps']} steps: {setup['passes_per_chunk']} passes per chunk), text {setup['text_tokens']} of "
            f"{setup['text_positions']} T5 positions non-zero, {setup['dtype']}"
            f"{' (fused: token GEMMs in FP8 e4m3)' if setup.get('fp8') else ''}, counted on the meta device")
    if setup.get("variant") == "predict2.5":
        head = head.replace(f"text {setup['text_tokens']} of {setup['text_positions']} T5 positions non-zero",
                            f"Reason1 text, all {setup['text_positions']} positions (projection cached)")
    counts = [["per pass (DiT pass + sampler step)", "reference", "fused", "fused / ref"]]
    for label, key, scale, fmt in (("kernel launches", "launches_per_pass", 1, "{:.0f}"),
                                   ("matrix GFLOP", "flops_per_pass", 1e9, "{:.1f}"),
                                   ("GB moved", "bytes_per_pass", 1e9, "{:.2f}"),
                                   ("non-matmul GB moved", "nonmatmul_bytes_per_pass", 1e9, "{:.2f}")):
        r, f = ref[key], fused[key]
        counts.append([label, fmt.format(r / scale), fmt.format(f / scale), f"{f / r:.2f}" if r else "-"])
    vae = {b: report[b]["parts"].get("vae_encode") for b in ("reference", "fused")}
    vae_line = "VAE encode: " + ("; ".join(
        f"{b} {v['launches']} launches, {v['flops'] / 1e12:.2f} TFLOP, {v['bytes'] / 1e9:.2f} GB "
        f"({v['nonmatmul_bytes'] / 1e9:.2f} non-matmul)" for b, v in vae.items()) if vae["reference"]
        else "left out (--no-vae)" if not setup.get("vae_requested", True) else "skipped (diffusers is not installed)")
    times = [["predicted ms", "pass ref", "pass fused", "chunk ref", "chunk fused", "beyond matrix, fused"]]
    for g in gpus:
        times.append([f"{g} ({GPUS[g].label})", *(f"{b[k][g]:.2f}" for k in ("predicted_ms_per_pass",
                                                                             "predicted_ms_per_chunk")
                                                   for b in (ref, fused)),
                      f"{fused['overhead_vs_matrix_per_pass'][g]:.3f}"])
    ops = [["fused pass, top ops", "launches", "GB moved"]]
    for name, row in list(fused["ops_per_pass"].items())[:8]:
        ops.append([name, str(row["launches"]), f"{row['bytes'] / 1e9:.2f}"])
    cards = [["card", "bf16 TFLOP/s used / peak", "FP8 TFLOP/s used / peak", "TB/s used / peak", "us/launch"]]
    for g in gpus:
        c = GPUS[g]
        cards.append([g, f"{c.matmul_flops_per_s / 1e12:.0f} / {c.peak_tflops:.0f}",
                      f"{c.fp8_flops_per_s / 1e12:.0f} / {c.peak_fp8_tflops:.0f}",
                      f"{c.bytes_per_s / 1e12:.2f} / {c.peak_tbps:.2f}", f"{c.launch_us:.1f}"])
    sources = "\n".join(f"  {g}: {GPUS[g].peak_source}; {GPUS[g].efficiency_source}; FP8: {GPUS[g].fp8_source}"
                         for g in gpus)
    model = ("per op: max(FLOPs / matmul rate, bytes / bandwidth) + launches x launch cost; "
             "chunk = passes x (DiT pass + sampler step) + VAE encode;\n"
             "beyond matrix: (non-matmul bytes / bandwidth + launches x launch cost) / (FLOPs / matmul rate), "
             "per pass")
    return "\n\n".join([head, table(counts), table(ops), vae_line, table(times), model, table(cards),
                        "sources:\n" + sources])


def run(args: argparse.Namespace) -> int:
    gpus = _gpus(args.gpu)
    if args.config not in CONFIGS:
        raise UsageError(f"--config: expected one of {', '.join(CONFIGS)}, got {args.config!r}")
    print(f"roofline: counting {args.config} at {args.suite} shapes on the meta device ...", file=sys.stderr)
    counted, setup = count(args.config, args.suite, args.text_tokens, vae=not args.no_vae, steps=args.steps,
                           fp8=args.fp8, variant=args.variant)
    if not setup["vae"] and not args.no_vae:
        print("roofline: note: diffusers is not installed; the VAE encode is left out of the chunk "
              '(pip install "cosmos-kernels[policy]")', file=sys.stderr)
    report = summarize(counted, setup["passes_per_chunk"], gpus)
    if args.variant == "predict2.5":
        report["predict2"] = flow_roofline.predict2_chunk(count, summarize, args, gpus)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report({b: report[b] for b in BACKENDS}, setup, gpus))
        if getattr(args, "breakdown", False):
            print("\n" + format_breakdown({g: report["fused"]["breakdown_per_pass"][g] for g in gpus},
                                          {g: GPUS[g].label for g in gpus}))
        if "predict2" in report:
            print(flow_roofline.comparison(report, gpus))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cosmos-policy roofline", description=__doc__.splitlines()[0])
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except UsageError as err:
        print(f"cosmos-policy: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
