"""The measuring steps of `bench.gpu_suite`, each run in its own process: `python -m bench.gpu_steps STEP --out FILE`.

Steps: `env` (versions, the card, optional modules), `ops` (adaptive-norm family, qk_norm_rope and linear_gelu at
the 2B's shapes, GB/s against the measured copy bandwidth, TFLOP/s for the GEMM), `attention` (TFLOP/s per
backend), `dit` (one 2B DiT pass, random weights, bf16, LIBERO's 1,764 tokens, against the measured bf16 matmul
rate), `chunk` (the 2B LIBERO action chunk as a CUDA-graph replay and eagerly, see `bench.gpu_chunk`). Each step
rewrites its JSON after every measurement, so a step stopped at its time limit (SIGINT, then SIGKILL) still leaves
what it measured. `--smoke` runs the same code on the CPU at toy sizes (for tests).
Needs only torch and the package (no pytest, no pytest-benchmark).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.common import environment, git_commit, versions

OPTIONAL = ("pytest", "pytest_benchmark", "diffusers", "nvtx", "matplotlib", "flash_attn")


class Recorder:
    """Results and notes of one step, written to its JSON file after every change."""

    def __init__(self, path: Path, step: str) -> None:
        self.path, self.data = path, {"step": step, "results": [], "notes": [], "headline": []}
        self.flush()

    def add(self, **result) -> None:
        self.data["results"].append(result)
        self.flush()

    def note(self, text: str) -> None:
        self.data["notes"].append(text)
        print(f"note: {text}", flush=True)
        self.flush()

    def headline(self, text: str) -> None:
        self.data["headline"].append(text)
        print(text, flush=True)
        self.flush()

    def flush(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)


def device_median_s(fn: Callable[[], object], device: str, *, inner: int = 10, rounds: int = 15,
                    warmup: int = 3) -> float:
    """Median seconds per call over `rounds` rounds of `inner` back-to-back calls (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(rounds):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3 / inner)
        else:
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            samples.append((time.perf_counter() - t0) / inner)
    return statistics.median(samples)


def _setup(smoke: bool) -> tuple[str, torch.dtype]:
    if smoke:
        return "cpu", torch.float32
    if not torch.cuda.is_available():
        raise SystemExit("gpu_steps: error: no CUDA device (use --smoke for the CPU check)")
    return "cuda", torch.bfloat16


def step_env(rec: Recorder, smoke: bool) -> None:
    import numpy as np

    info = {**versions(), "numpy": np.__version__, "commit": git_commit(), "cuda": torch.cuda.is_available(),
            "torch_cuda": torch.version.cuda, "modules": {m: importlib.util.find_spec(m) is not None for m in OPTIONAL}}
    if info["cuda"]:
        major, minor = torch.cuda.get_device_capability()
        info.update(device_name=torch.cuda.get_device_name(), capability=[major, minor],
                    memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    rec.data["env"] = info
    rec.headline(f"{info.get('device_name', 'no GPU')}; torch {info['torch']} (CUDA {info['torch_cuda']}), "
                 f"triton {info['triton']}, python {info['python']}, numpy {info['numpy']}")


def step_ops(rec: Recorder, smoke: bool) -> None:
    import cosmos_kernels as ck
    from bench.common import copy_bandwidth_gbs
    from bench.workloads import attention_inputs, norm_inputs, workload
    from cosmos_kernels.attention import reference as attention_reference

    device, dtype = _setup(smoke)
    copy_gbs = copy_bandwidth_gbs(device)
    rec.data["copy_GB/s"] = copy_gbs
    rec.headline(f"copy bandwidth {copy_gbs:.0f} GB/s")
    shapes = {"libero 1764": (9, 196), "16k tokens": (84, 196)} if not smoke else {"toy": (2, 8)}
    ops = ("layer_norm_modulate", "gated_residual_layer_norm_modulate", "rms_norm")
    variants = ("fused", "reference") if smoke else ("fused", "reference", "compile")  # smoke: no compile time
    for variant in variants:  # fused first: the numbers that matter most come first
        for op in ops:
            for shape, (frames, tokens) in shapes.items():
                if variant == "compile" and shape != "libero 1764":  # each shape is a cold inductor compile
                    continue
                fused, ref, args, nbytes = workload(op, *norm_inputs(device, dtype, frames, tokens))
                fn = {"fused": fused, "reference": ref,
                      "compile": torch.compile(ref, dynamic=False, fullgraph=True)}[variant]
                t = device_median_s(lambda fn=fn, args=args: fn(*args), device)
                rec.add(op=op, shape=shape, variant=variant, ms=t * 1e3, **{"GB/s": nbytes / t / 1e9},
                        fraction_of_copy_bw=nbytes / t / 1e9 / copy_gbs)
    length = 1764 if not smoke else 196
    q, k, _, qw, kw, cos, sin = attention_inputs(device, dtype, length, length)

    variants = {"fused": ck.qk_norm_rope, "reference": attention_reference.qk_norm_rope}
    if not smoke:
        variants["compile"] = torch.compile(attention_reference.qk_norm_rope, dynamic=False, fullgraph=True)
    if device == "cuda":
        variants["triton"] = lambda *a: ck.qk_norm_rope(*a, backend="triton")
    for variant, fn in variants.items():
        t = device_median_s(lambda fn=fn: fn(q, k, qw, kw, cos, sin), device)
        rec.add(op="qk_norm_rope", shape=f"L={q.shape[1]}", variant=variant, ms=t * 1e3)
    _linear_gelu(rec, device, dtype, smoke)
    _ops_headlines(rec)


def _linear_gelu(rec: Recorder, device: str, dtype: torch.dtype, smoke: bool) -> None:
    """The MLP's first layer, GELU in the GEMM's epilogue, against cuBLAS + GELU and torch.compile of the pair."""
    import cosmos_kernels as ck
    from cosmos_kernels.linear_gelu import reference

    m, k, n = (1764, 2048, 8192) if not smoke else (196, 64, 256)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=gen).to(device, dtype)
    w = (torch.randn(n, k, generator=gen) * k ** -0.5).to(device, dtype)
    variants = {"fused": ck.linear_gelu, "reference": reference.linear_gelu}
    if not smoke:
        variants["compile"] = torch.compile(reference.linear_gelu, dynamic=False, fullgraph=True)
        variants["matmul only"] = torch.nn.functional.linear  # the GEMM alone: the epilogue's cost is the gap
    for variant, fn in variants.items():
        t = device_median_s(lambda fn=fn: fn(x, w), device)
        rec.add(op="linear_gelu", shape=f"{m}x{k}x{n}", variant=variant, ms=t * 1e3,
                **{"TFLOP/s": 2 * m * k * n / t / 1e12})


def _ops_headlines(rec: Recorder) -> None:
    by = {(r["op"], r["shape"], r["variant"]): r for r in rec.data["results"]}
    for (op, shape, variant), r in by.items():
        if variant != "fused":
            continue
        ratios = [f"vs {v} {by[(op, shape, v)]['ms'] / r['ms']:.2f}x"
                  for v in ("reference", "compile", "matmul only") if (op, shape, v) in by]
        bw = f", {r['fraction_of_copy_bw']:.0%} of copy bw" if "fraction_of_copy_bw" in r else ""
        bw += f", {r['TFLOP/s']:.0f} TFLOP/s" if "TFLOP/s" in r else ""
        rec.headline(f"{op} [{shape}]: {r['ms']:.4f} ms{bw}; " + ", ".join(ratios))


def step_attention(rec: Recorder, smoke: bool) -> None:
    import cosmos_kernels as ck
    from bench.workloads import HEAD_DIM, HEADS, attention_inputs
    from cosmos_kernels.attention import ops

    device, dtype = _setup(smoke)
    shapes = ({"self1764": (1764, 1764), "self2156": (2156, 2156), "cross1764x512": (1764, 512)} if not smoke
              else {"self196": (196, 196), "cross196x64": (196, 64)})
    for shape, (lq, lk) in shapes.items():
        q, k, v, qw, kw, cos, sin = attention_inputs(device, dtype, lq, lk)
        for norm_rope in (True, False):
            extra = dict(q_norm_weight=qw, k_norm_weight=kw) if norm_rope else {}
            if norm_rope and lq == lk:
                extra.update(rope_cos=cos, rope_sin=sin)
            flops = 4 * HEADS * lq * lk * HEAD_DIM
            row = {}
            for backend in [None, *ops.auto_candidates(q)]:
                call = lambda b=backend, q=q, k=k, v=v, e=extra: ck.attention(q, k, v, backend=b, **e)  # noqa: E731
                t = device_median_s(call, device)
                name = backend or "auto"
                row[name] = flops / t / 1e12
                rec.add(shape=shape, norm_rope=norm_rope, backend=name, ms=t * 1e3, **{"TFLOP/s": row[name]})
            chose = auto_choice(q, k, extra) if device == "cuda" else "sdpa, untimed off CUDA"
            rec.headline(f"attention {shape} {'norm+rope' if norm_rope else 'plain'}: "
                         + ", ".join(f"{b} {tf:.1f}" for b, tf in row.items())
                         + f" TFLOP/s (auto chose {chose or 'nothing timed'})")


def auto_choice(q: torch.Tensor, k: torch.Tensor, extra: dict) -> str | None:
    """The backend the automatic choice took for `ck.attention(q, k, v, **extra)`, None when none is known."""
    from cosmos_kernels import picker

    key = picker.choice_key(q.device, q, k, extra.get("q_norm_weight"), extra.get("k_norm_weight"),
                            extra.get("rope_cos"), extra.get("last_key_repeats", 1))
    return picker.chosen_backends().get(key)


def _dit(smoke: bool, device: str, dtype: torch.dtype):
    from cosmos_policy.model import CosmosDiT
    from cosmos_policy.model.config import DiTConfig

    config = DiTConfig.tiny() if smoke else DiTConfig.cosmos_predict2_2b()
    with torch.device(device):
        network = CosmosDiT(config, backend="fused").to(dtype)
    with torch.no_grad():
        for p in network.parameters():
            p.normal_(0, 0.02)
    return network.eval().requires_grad_(False)


def matmul_tflops(device: str, dtype: torch.dtype, n: int) -> float:
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return 2 * n**3 / device_median_s(lambda: a @ b, device, inner=5, rounds=10) / 1e12


def step_dit(rec: Recorder, smoke: bool) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    device, dtype = _setup(smoke)
    peak = matmul_tflops(device, dtype, 8192 if not smoke else 256)
    rec.data["matmul_TFLOP/s"] = peak
    network = _dit(smoke, device, dtype)
    c = network.config
    frames, conditional, text_tokens = 9, 4, 12  # LIBERO: 9 latent frames of 28 x 28, 4 of them clean
    x = torch.randn(1, c.in_channels, frames, 28, 28, device=device)
    timesteps = torch.full((1, frames // c.patch_temporal), 0.5, device=device)
    timesteps[:, :conditional] = 0.0
    context = torch.zeros(1, 512, c.crossattn_emb_channels, device=device, dtype=dtype)
    context[:, :text_tokens] = torch.randn(1, text_tokens, c.crossattn_emb_channels, device=device)  # real-text padding
    cond = torch.zeros(1, 1, frames, 28, 28, device=device)
    cond[:, :, :conditional] = 1.0
    with torch.inference_mode():
        network.backend = "reference"
        with FlopCounterMode(display=False) as counter:
            network(x, timesteps, context, cond)
        flops = counter.get_total_flops()
        rec.data["flops_per_pass"] = flops
        for backend in ("fused", "reference"):
            network.backend = backend
            t = device_median_s(lambda: network(x, timesteps, context, cond), device, inner=2, rounds=7, warmup=2)
            rec.add(backend=backend, ms=t * 1e3, **{"TFLOP/s": flops / t / 1e12}, fraction_of_matmul=flops / t / 1e12
                    / peak)
    fused, ref = rec.data["results"]
    kind = str(dtype).removeprefix("torch.")
    rec.headline(f"{kind} matmul {peak:.0f} TFLOP/s; DiT pass ({flops / 1e12:.2f} TFLOP, 1764 tokens): fused "
                 f"{fused['ms']:.2f} ms = {fused['fraction_of_matmul']:.0%} of matmul, reference {ref['ms']:.2f} ms")


def step_chunk(rec: Recorder, smoke: bool) -> None:
    from bench import gpu_chunk

    device, dtype = _setup(smoke)
    network = _dit(smoke, device, dtype)
    if smoke:  # the code paths at toy cost: two calls, and the stand-in for the VAE (a CPU encode is slow)
        gpu_chunk.step_chunk(rec, network, device, dtype, smoke, calls=2, warmup_calls=1, real_vae=False)
    else:
        gpu_chunk.step_chunk(rec, network, device, dtype, smoke)


STEPS = {"env": step_env, "ops": step_ops, "attention": step_attention, "dit": step_dit, "chunk": step_chunk}
# the policy manages autograd itself and is called as a server calls it; the other steps run under inference mode
OUTSIDE_INFERENCE_MODE = ("chunk",)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.gpu_steps", description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=list(STEPS))
    parser.add_argument("--out", type=Path, required=True, help="the step's JSON file")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU (a check of the code paths)")
    args = parser.parse_args(argv)
    rec = Recorder(args.out, args.step)
    rec.data["environment"] = environment("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    mode = contextlib.nullcontext() if args.step in OUTSIDE_INFERENCE_MODE else torch.inference_mode()
    try:
        with mode:
            STEPS[args.step](rec, args.smoke)
    except KeyboardInterrupt:  # the suite's time limit: what was measured is already on disk
        rec.note("stopped at the time limit")
        return 130
    rec.data["done"] = True
    rec.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
