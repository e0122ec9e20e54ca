"""`cosmos-policy roofline`: predicted GPU latency of an action chunk, counted on the meta device (no GPU, no memory).

One DiT pass, one sampler step and the VAE encode of the conditioning frames run on meta tensors under
`cosmos_kernels.tools.dispatch_counter.DispatchCounter`, once per network backend, in steady state (the fused
network's exact caches are filled by a first, uncounted pass, as the first chunk fills them), dispatching as
they would on CUDA (`cosmos_kernels.backends.meta_as_cuda`; attention takes its fixed deterministic choice,
since nothing can be timed). The text is what a real checkpoint sees: T5 embeddings that are zero past the
instruction's tokens, whose count reaches the network as metadata (`cosmos_policy.model.with_text_tokens`).

Prediction, per recorded op, on each card of `GPUS`:

    time = max(matrix FLOPs / matmul rate, bytes moved / memory bandwidth) + launches * launch cost

summed over the ops. The rates are the card's peak datasheet figures scaled by an efficiency (assumed, or
measured where a measurement is cited), never above peak, so no prediction beats the card's peak. Activations
that stay in L2 and kernels that overlap are not modelled: the estimate is a roofline, not a simulation.
A chunk is `layout.num_steps` x (DiT pass + sampler step) + the VAE encode (the fused backend: the VAE patched with
cosmos_kernels, as the fused policy runs it).
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
PEAK = "peak (datasheet)"


@dataclass(frozen=True)
class GPU:
    """A card's bf16 dense matmul rate, memory bandwidth and per-launch cost, with where each figure comes from."""

    label: str
    peak_tflops: float  # bf16 dense tensor-core peak, FP32 accumulate
    peak_tbps: float  # memory bandwidth peak
    matmul_efficiency: float  # fraction of peak a large bf16 GEMM reaches
    bandwidth_efficiency: float  # fraction of peak a streaming kernel reaches
    launch_us: float  # cost of one kernel launch inside a CUDA graph
    peak_source: str
    efficiency_source: str

    def __post_init__(self) -> None:
        if not (0 < self.matmul_efficiency <= 1 and 0 < self.bandwidth_efficiency <= 1 and self.launch_us >= 0):
            raise ValueError(f"GPU {self.label}: efficiencies must lie in (0, 1] and the launch cost be >= 0")

    @property
    def matmul_flops_per_s(self) -> float:
        return self.peak_tflops * 1e12 * self.matmul_efficiency

    @property
    def bytes_per_s(self) -> float:
        return self.peak_tbps * 1e12 * self.bandwidth_efficiency

    def op_seconds(self, flops: int, moved: int, launches: int) -> float:
        return max(flops / self.matmul_flops_per_s, moved / self.bytes_per_s) + launches * self.launch_us * 1e-6


_ASSUMED = "assumed: 70 % of peak matmul, 80 % of peak bandwidth, 2 us per launch in a CUDA graph"
GPUS: dict[str, GPU] = {
    "h100": GPU("H100 SXM", 989.4, 3.35, 0.70, 0.80, 2.0, PEAK + ": NVIDIA H100 datasheet (1,979 TFLOP/s bf16 "
                "with sparsity; HBM3 3.35 TB/s)", _ASSUMED),
    "h200": GPU("H200 SXM", 989.4, 4.8, 790 / 989.4, 0.80, 2.0, PEAK + ": NVIDIA H200 datasheet (1,979 TFLOP/s "
                "bf16 with sparsity; HBM3e 4.8 TB/s)", "measured: ~790 TFLOP/s for a large bf16 GEMM (DESIGN.md); "
                "assumed: 80 % of peak bandwidth, 2 us per launch"),
    "b200": GPU("B200", 2250.0, 8.0, 0.70, 0.80, 2.0, PEAK + ": NVIDIA HGX B200 datasheet (4.5 PFLOP/s bf16 with "
                "sparsity; HBM3e 8 TB/s)", _ASSUMED),
    "l40s": GPU("L40S", 362.05, 0.864, 0.70, 0.80, 2.0, PEAK + ": NVIDIA L40S datasheet (362 TFLOP/s bf16 dense; "
                "GDDR6 864 GB/s)", _ASSUMED),
    "rtx4090": GPU("RTX 4090", 165.2, 1.008, 0.70, 0.80, 2.0, PEAK + ": NVIDIA Ada whitepaper (165.2 TFLOP/s bf16 "
                   "with FP32 accumulate; 1,008 GB/s)", _ASSUMED),
    "rtx5090": GPU("RTX 5090", 209.5, 1.792, 0.70, 0.80, 2.0, PEAK + ": NVIDIA Blackwell GeForce whitepaper "
                   "(209.5 TFLOP/s with FP32 accumulate; 1,792 GB/s)", _ASSUMED),
    "thor": GPU("Jetson AGX Thor", 258.75, 0.273, 0.70, 0.80, 2.0, PEAK + ", derived: Jetson AGX Thor datasheet "
                "(2,070 TFLOP/s FP4 with sparsity / 8; no bf16 figure published; LPDDR5X 273 GB/s)", _ASSUMED),
}


def predict_seconds(records: list[OpRecord], gpu: GPU) -> float:
    return sum(gpu.op_seconds(r.cost.flops, r.cost.bytes_read + r.cost.bytes_written, r.cost.launches)
               for r in records)


def overhead_ratio(records: list[OpRecord], gpu: GPU) -> float:
    """What the records spend beyond their matrix work (non-matmul bytes at the card's bandwidth plus every
    launch's cost) over their matrix time (FLOPs at its matmul rate): how far from matmul-bound they are."""
    totals = _totals(records)
    matrix = totals.flops / gpu.matmul_flops_per_s
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


def dit_config(name: str):
    from cosmos_policy.model.config import DiTConfig

    if name not in CONFIGS:
        raise UsageError(f"--config: expected one of {', '.join(CONFIGS)}, got {name!r}")
    return DiTConfig.cosmos_predict2_2b() if name == "2b" else DiTConfig.tiny()


def count_network(config, layout, text_tokens: int, dtype: torch.dtype = torch.bfloat16) -> dict[str, tuple]:
    """Per backend: (DiT pass records, sampler step records), counted on meta tensors in steady state."""
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
    cond_frames = torch.arange(layout.state_t) < layout.num_conditional_frames
    mask5 = cond_frames.to(dtype).view(1, 1, -1, 1, 1).to(meta)
    host_times = torch.where(cond_frames, 0.0, 0.5).view(1, -1)  # the fused chunk hands host times (its cache key)
    out: dict[str, tuple] = {}
    with torch.no_grad(), meta_as_cuda():
        sampler = Sampler(shape, num_steps=layout.num_steps, sigma_min=layout.sigma_min, sigma_max=layout.sigma_max,
                          net_dtype=dtype, device=meta)
        for backend in BACKENDS:
            net.backend = backend  # one set of parameters, two implementations
            times = host_times if backend == "fused" else host_times.to(meta)
            if backend == "fused":
                net(x, times, context, mask5)  # fills the caches (the reference has none)
            with DispatchCounter() as counter:
                with counter.section("dit"):
                    v = net(x, times, context, mask5)
                with counter.section("step"):
                    state = sampler.state
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


def passes_per_chunk(layout, steps: int | None = None) -> int:
    """Network passes of one action query at `steps` (None: the suite's official count), as the policy's "2ab"
    sampler spends them: 1 or 2 steps are one prediction at sigma_max."""
    from cosmos_kernels.sampling import multistep_plan

    steps = layout.num_steps if steps is None else steps
    return multistep_plan("2ab", steps, layout.sigma_min, layout.sigma_max).num_passes


def count(config_name: str = "2b", suite: str = "libero", text_tokens: int | None = None,
          vae: bool = True, steps: int | None = None) -> tuple[dict[str, Counted], dict]:
    """Count both backends; returns (per-backend records, the setup that was counted)."""
    from cosmos_policy.model.layout import IMAGE_SIZE, LAYOUTS, SPATIAL_COMPRESSION, get_layout

    if suite not in LAYOUTS:
        raise UsageError(f"--suite: expected one of {', '.join(sorted(LAYOUTS))}, got {suite!r}")
    config, layout = dit_config(config_name), get_layout(suite)
    instruction, typical = TYPICAL_INSTRUCTIONS[suite]
    tokens = typical if text_tokens is None else text_tokens
    if not 1 <= tokens <= TEXT_LENGTH:
        raise UsageError(f"--text-tokens: expected 1 .. {TEXT_LENGTH}, got {tokens}")
    network = count_network(config, layout, tokens)
    vae_records = {b: count_vae_encode(layout, backend=b) if vae else None for b in BACKENDS}
    counted = {b: Counted(*network[b], vae_records[b]) for b in BACKENDS}
    setup = {"config": config_name, "suite": suite, "steps": layout.num_steps if steps is None else steps,
             "passes_per_chunk": passes_per_chunk(layout, steps),
             "tokens": layout.state_t * (IMAGE_SIZE // SPATIAL_COMPRESSION // config.patch_spatial) ** 2,
             "text_tokens": tokens, "text_positions": TEXT_LENGTH,
             "instruction": instruction if text_tokens is None else None, "dtype": "bfloat16",
             "vae": vae_records["reference"] is not None, "vae_requested": vae}
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


def _gpus(choice: str) -> list[str]:
    if choice == "all":
        return list(GPUS)
    names = [g.strip().lower() for g in choice.split(",")]
    unknown = [g for g in names if g not in GPUS]
    if unknown:
        raise UsageError(f"--gpu: unknown GPU {unknown[0]!r}; expected one of {', '.join(GPUS)} or all")
    return names


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def format_report(report: dict, setup: dict, gpus: list[str]) -> str:
    ref, fused = report["reference"], report["fused"]
    head = (f"roofline: {setup['config']} DiT, {setup['suite']} ({setup['tokens']} tokens, "
            f"{setup['steps']} steps: {setup['passes_per_chunk']} passes per chunk), text {setup['text_tokens']} of "
            f"{setup['text_positions']} T5 positions non-zero, {setup['dtype']}, counted on the meta device")
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
    cards = [["card", "bf16 TFLOP/s used / peak", "TB/s used / peak", "us/launch"]]
    for g in gpus:
        c = GPUS[g]
        cards.append([g, f"{c.matmul_flops_per_s / 1e12:.0f} / {c.peak_tflops:.0f}",
                      f"{c.bytes_per_s / 1e12:.2f} / {c.peak_tbps:.2f}", f"{c.launch_us:.1f}"])
    sources = "\n".join(f"  {g}: {GPUS[g].peak_source}; {GPUS[g].efficiency_source}" for g in gpus)
    model = ("per op: max(FLOPs / matmul rate, bytes / bandwidth) + launches x launch cost; "
             "chunk = passes x (DiT pass + sampler step) + VAE encode;\n"
             "beyond matrix: (non-matmul bytes / bandwidth + launches x launch cost) / (FLOPs / matmul rate), "
             "per pass")
    return "\n\n".join([head, _table(counts), _table(ops), vae_line, _table(times), model, _table(cards),
                        "sources:\n" + sources])


def run(args: argparse.Namespace) -> int:
    gpus = _gpus(args.gpu)
    if args.config not in CONFIGS:
        raise UsageError(f"--config: expected one of {', '.join(CONFIGS)}, got {args.config!r}")
    print(f"roofline: counting {args.config} at {args.suite} shapes on the meta device ...", file=sys.stderr)
    counted, setup = count(args.config, args.suite, args.text_tokens, vae=not args.no_vae, steps=args.steps)
    if not setup["vae"] and not args.no_vae:
        print("roofline: note: diffusers is not installed; the VAE encode is left out of the chunk "
              '(pip install "cosmos-kernels[policy]")', file=sys.stderr)
    report = summarize(counted, setup["passes_per_chunk"], gpus)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report, setup, gpus))
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
