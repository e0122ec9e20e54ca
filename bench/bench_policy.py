"""One action chunk of the policy, per stage (preprocess, VAE encode, denoise, ...): fused vs reference backend.

CPU: a tiny random-weight LIBERO checkpoint at the real layout (224 x 224 images, 9 latent frames, 1,764 tokens), so
the ratios show the wrapper and kernels, not the 2B network. CUDA (when present): also the 2B network at LIBERO shapes
in bf16, eager and as one CUDA graph, against the 60 ms target of DESIGN.md. Each variant is one measurement of its
group; the per-stage medians of its rounds go into `extra_info`.
"""

from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch

from bench.conftest import DEVICES, measure
from cosmos_policy import CosmosPolicy
from cosmos_policy.model import layout as L
from cosmos_policy.testing import (
    LIBERO_SAMPLE_TASK,
    t5_like_embedding,
    tiny_autoencoder,
    tiny_statistics,
    write_tiny_checkpoint,
)

REPEATS = 3
TARGET_MS = 60.0


def _observation(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    obs = {camera: rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for camera in L.LIBERO.cameras}
    obs["proprio"] = rng.uniform(-0.5, 0.5, 9)
    obs["task_description"] = LIBERO_SAMPLE_TASK
    return obs


def _timed(benchmark, group: str, variant: str, policy: CosmosPolicy, obs: dict, device: str, rounds: int,
           **extra) -> None:
    """Measure `policy.infer` and store the median of each of its stages (ms) as `<stage>_ms`."""
    timings: list[dict] = []
    if hasattr(policy, "warmup"):
        policy.warmup(batch_sizes=(1,), instructions=[obs["task_description"]])  # compile, probe, capture first
    seeds = iter(range(1, 1 << 20))
    measure(benchmark, group, variant, lambda: timings.append(policy.infer(obs, seed=next(seeds))["timing"]),
            device=device, rounds=rounds, **extra)
    measured = timings[-rounds:]  # the warm-up call is not a round
    for stage in measured[0]:
        benchmark.extra_info[f"{stage}_ms"] = round(statistics.median(t[stage] for t in measured), 3)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("bench_policy"))


@pytest.mark.parametrize("variant", ["fused", "reference"])
@pytest.mark.parametrize("device", DEVICES)
def test_tiny_action_chunk(benchmark, tiny_dir, device, variant):
    policy = CosmosPolicy.from_pretrained(tiny_dir, backend=variant, device=device, dtype=torch.float32,
                                          cuda_graph=False)
    _timed(benchmark, f"policy_tiny_chunk[libero,{device}]", variant, policy, _observation(), device, REPEATS,
           tokens=9 * 196)


def _full_size_policy(cuda_graph: bool, backend: str = "fused") -> CosmosPolicy:
    """The 2B network and the full-size Wan VAE with random weights (no files), bf16 on the GPU."""
    from cosmos_policy import CosmosDiT, DiTConfig
    from cosmos_policy.model.text import TextEmbeddings
    from cosmos_policy.model.vae import PolicyVAE

    device, dtype = torch.device("cuda"), torch.bfloat16
    with torch.device(device):
        network = CosmosDiT(DiTConfig.cosmos_predict2_2b(), backend=backend).to(dtype)
    with torch.no_grad():
        for p in network.parameters():
            p.normal_(0, 0.02)
    vae = PolicyVAE(tiny_autoencoder(seed=0, base_dim=96), device=device, dtype=dtype)
    text = TextEmbeddings({LIBERO_SAMPLE_TASK: t5_like_embedding(LIBERO_SAMPLE_TASK, 1024)}, device=device,
                          dtype=dtype)  # zero past the instruction's tokens, as real T5 embeddings are
    stats = L.DatasetStatistics.from_dict(tiny_statistics("libero"))
    return CosmosPolicy(network, vae, text, stats, L.LIBERO, cuda_graph=cuda_graph)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("variant", ["fused", "eager"])
def test_2b_action_chunk_cuda(benchmark, variant):
    """"fused" is the path users run on a GPU (one CUDA-graph replay per chunk), "eager" the same network without."""
    policy = _full_size_policy(cuda_graph=variant == "fused")
    _timed(benchmark, "policy_2b_chunk[libero,bf16,cuda]", variant, policy, _observation(), "cuda", 10,
           tokens=9 * 196, target_ms=TARGET_MS)
    benchmark.extra_info["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del policy
    torch.cuda.empty_cache()
