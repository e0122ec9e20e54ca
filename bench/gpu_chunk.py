"""The `chunk` step of `bench.gpu_steps`: the 2B LIBERO action chunk through `CosmosPolicy.infer`, as a CUDA-graph
replay and eagerly, p50 / p95 / p99 of the wall time of `CALLS` calls after warm-up (and of its stages); then the
graph replay with the FP8 token GEMMs (`fp8=True`, `FP8_CALLS` calls) where the card has FP8 tensor cores.

The policy's VAE needs diffusers; where diffusers is absent (the GPU machine), `FixedPrefixEncoder` stands in for its
encoder: the prefix latents of one fixed draw, so every stage but the VAE encode is measured, and the step says so.
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import torch

CALLS = 200  # timed calls per mode, after warm-up
FP8_CALLS = 50  # timed calls of the FP8 graph replay (it fits the step's limit beside the two bf16 modes)
WARMUP_CALLS = 3  # after `policy.warmup()` (compilation, probes, timed choices, the capture)
CHUNK_TARGET_MS = 60.0
LATENT_CHANNELS = 16
SPATIAL_COMPRESSION = 8


class FixedPrefixEncoder:
    """The part of `PolicyVAE` an action query uses (`encode_prefix`), returning the normalised latents of one fixed
    random draw: (1, 16, frames, H / 8, W / 8) for images (B, 3, H, W), broadcast over the batch by the policy."""

    def __init__(self, frames: int, device: torch.device | str, seed: int = 0) -> None:
        self.frames, self.device, self.seed = frames, torch.device(device), seed
        self._latents: dict[tuple[int, int], torch.Tensor] = {}

    def encode_prefix(self, images: list[torch.Tensor], *, keep_state: bool = False):
        if keep_state:
            raise ValueError("FixedPrefixEncoder: no encoder state to keep (future images need the real VAE)")
        height, width = images[0].shape[-2:]
        key = (height // SPATIAL_COMPRESSION, width // SPATIAL_COMPRESSION)
        if key not in self._latents:
            gen = torch.Generator().manual_seed(self.seed)
            self._latents[key] = torch.randn(1, LATENT_CHANNELS, self.frames, *key, generator=gen).to(self.device)
        return self._latents[key]

    def for_backend(self, backend: str) -> FixedPrefixEncoder:
        return self  # no kernels: one encoder serves either network backend

    def clear_cache(self) -> None:
        self._latents.clear()

    def cache_info(self) -> dict:
        return {"fixed_prefix_latents": len(self._latents)}


def chunk_vae(layout, device: str, dtype: torch.dtype, smoke: bool, real_vae: bool | None = None):
    """(the policy's VAE, a note on what it is). `real_vae=None`: the real structure when diffusers is installed."""
    if real_vae is None:
        real_vae = importlib.util.find_spec("diffusers") is not None
    if not real_vae:
        return (FixedPrefixEncoder(layout.num_conditional_frames, device),
                "VAE encode not measured: diffusers is not installed, fixed prefix latents stand in for it")
    from cosmos_policy.model.vae import PolicyVAE
    from cosmos_policy.testing import tiny_autoencoder

    # base_dim 96 is the Wan2.1 VAE's real width; random weights, no file needed
    vae = PolicyVAE(tiny_autoencoder(seed=0, base_dim=96 if not smoke else 16), device=device, dtype=dtype)
    return vae, "VAE: the Wan2.1 structure with random weights"


def percentiles(values: list[float]) -> dict[str, float]:
    p50, p95, p99 = (float(np.percentile(values, q)) for q in (50, 95, 99))
    return {"p50_ms": p50, "p95_ms": p95, "p99_ms": p99}


def step_chunk(rec, network, device: str, dtype: torch.dtype, smoke: bool, *, calls: int = CALLS,
               warmup_calls: int = WARMUP_CALLS, real_vae: bool | None = None) -> None:
    """Measure the chunk with `network` (a 2B `CosmosDiT`, or a tiny one with `smoke`) into the recorder `rec`.
    `real_vae`: see `chunk_vae`."""
    from cosmos_policy import CosmosPolicy
    from cosmos_policy.model import layout as L
    from cosmos_policy.model.text import TextEmbeddings
    from cosmos_policy.testing import LIBERO_SAMPLE_TASK, tiny_statistics

    vae, vae_note = chunk_vae(L.LIBERO, device, dtype, smoke, real_vae)
    rec.note(vae_note)
    with_vae = not isinstance(vae, FixedPrefixEncoder)
    emb = torch.zeros(1, 512, network.config.crossattn_emb_channels)
    emb[:, :12] = torch.randn(1, 12, network.config.crossattn_emb_channels)  # zero past the instruction's tokens
    text = TextEmbeddings({LIBERO_SAMPLE_TASK: emb}, device=device, dtype=dtype)
    stats = L.DatasetStatistics.from_dict(tiny_statistics("libero"))
    rng = np.random.default_rng(0)
    obs = {camera: rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for camera in L.LIBERO.cameras}
    obs.update(proprio=rng.uniform(-0.5, 0.5, 9), task_description=LIBERO_SAMPLE_TASK)
    # the graph replay first: it is what serving runs
    modes = {"cuda_graph": True, "eager": False} if device == "cuda" else {"eager": False}
    if device != "cuda":
        rec.note("CUDA graph mode needs a CUDA device")
    from cosmos_kernels.fp8 import fp8_unsupported_reason

    fp8_reason = fp8_unsupported_reason(device, dtype)
    if fp8_reason is None:
        modes[f"{'cuda_graph' if device == 'cuda' else 'eager'}_fp8"] = device == "cuda"
    else:
        rec.note(f"FP8 mode not measured: {fp8_reason}")
    for mode, graph in modes.items():
        network.fp8 = mode.endswith("_fp8")
        calls = min(calls, FP8_CALLS) if network.fp8 else calls
        policy = CosmosPolicy(network, vae, text, stats, L.LIBERO, cuda_graph=graph)
        began = time.perf_counter()
        warm = policy.warmup(instructions=[LIBERO_SAMPLE_TASK])
        for seed in range(warmup_calls):
            policy.infer(obs, seed=seed)
        warmup_s = time.perf_counter() - began
        if graph and not policy.cache_info().get("cuda_graphs"):
            rec.note(f"cuda_graph: no graph captured ({warm['graph_failures']} failed captures); these numbers are "
                     "the eager fused loop's")
        walls, stages = [], []
        for seed in range(warmup_calls, warmup_calls + calls):
            t0 = time.perf_counter()
            stages.append(policy.infer(obs, seed=seed)["timing"])  # actions come back on the host: synced
            walls.append((time.perf_counter() - t0) * 1e3)
        wall = percentiles(walls)
        rec.add(mode=mode, fp8=network.fp8, calls=calls, **wall, target_ms=CHUNK_TARGET_MS, warmup_s=round(warmup_s, 2),
                cuda_graphs=policy.cache_info().get("cuda_graphs", 0), vae_encode_measured=with_vae,
                stages_ms={s: percentiles([t[s] for t in stages]) for s in stages[0]})
        verdict = "pass" if wall["p50_ms"] <= CHUNK_TARGET_MS else "fail"
        denoise = percentiles([t["denoise"] for t in stages]) if "denoise" in stages[0] else None
        rec.headline(f"LIBERO chunk {mode}: p50 {wall['p50_ms']:.1f} / p95 {wall['p95_ms']:.1f} / p99 "
                     f"{wall['p99_ms']:.1f} ms over {calls} calls"
                     + (f" (denoise p50 {denoise['p50_ms']:.1f} ms)" if denoise else "")
                     + f"; target {CHUNK_TARGET_MS:.0f} ms p50: {verdict}"
                     + ("" if with_vae else ", without the VAE encode"))
        del policy
    network.fp8 = False
    if device == "cuda":
        rec.data["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
