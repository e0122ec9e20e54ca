"""One action chunk of the policy, per stage (preprocess, VAE encode, denoise, ...): fused vs reference backend.

CPU: a tiny random-weight LIBERO checkpoint at the real layout (224 x 224 images, 9 latent frames, 1,764 tokens), so
the ratios show the wrapper and kernels, not the 2B network. CUDA (when present): also the 2B network at LIBERO shapes
in bf16, eager and as one CUDA graph, against the 60 ms target of DESIGN.md.
"""

from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch

from bench.conftest import DEVICES, record
from cosmos_policy import CosmosPolicy
from cosmos_policy import layout as L
from cosmos_policy.testing import LIBERO_SAMPLE_TASK, tiny_autoencoder, tiny_statistics, write_tiny_checkpoint

REPEATS = 5
TARGET_MS = 60.0


def _observation(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    obs = {camera: rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for camera in L.LIBERO.cameras}
    obs["proprio"] = rng.uniform(-0.5, 0.5, 9)
    obs["task_description"] = LIBERO_SAMPLE_TASK
    return obs


def _stage_medians(policies: dict[str, CosmosPolicy], obs: dict, repeats: int = REPEATS) -> dict[str, dict]:
    """Median ms per stage for each policy, the policies run in turn so a busy machine slows them alike."""
    for policy in policies.values():
        policy.infer(obs, seed=0)  # warm-up: caches, graph capture, probes
    runs = {name: [] for name in policies}
    for i in range(1, repeats + 1):
        for name, policy in policies.items():
            runs[name].append(policy.infer(obs, seed=i)["timing"])
    return {name: {stage: statistics.median(r[stage] for r in rs) for stage in rs[0]} for name, rs in runs.items()}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("bench_policy"))


@pytest.mark.parametrize("device", DEVICES)
def test_tiny_action_chunk(benchmark, tiny_dir, device):
    obs = _observation()
    policies = {backend: CosmosPolicy.from_pretrained(tiny_dir, backend=backend, device=device, dtype=torch.float32,
                                                      cuda_graph=False) for backend in ("fused", "reference")}
    stages = _stage_medians(policies, obs)
    extra = {"device": device, "tokens": 9 * 196}
    for stage in stages["fused"]:
        extra[f"{stage}_fused_ms"] = stages["fused"][stage]
        extra[f"{stage}_reference_ms"] = stages["reference"][stage]
        extra[f"{stage}_speedup"] = stages["reference"][stage] / max(stages["fused"][stage], 1e-9)
    times = {k: v["total"] / 1e3 for k, v in stages.items()}
    record(benchmark, f"policy_tiny_chunk[libero,{device}]", times, **extra)
    benchmark.pedantic(lambda: policies["fused"].infer(obs, seed=1), rounds=1, iterations=1)


def _full_size_policy(cuda_graph: bool, backend: str = "fused") -> CosmosPolicy:
    """The 2B network and the full-size Wan VAE with random weights (no files), bf16 on the GPU."""
    from cosmos_policy import CosmosDiT, DiTConfig
    from cosmos_policy.text import TextEmbeddings
    from cosmos_policy.vae import PolicyVAE

    device, dtype = torch.device("cuda"), torch.bfloat16
    with torch.device(device):
        network = CosmosDiT(DiTConfig.cosmos_predict2_2b(), backend=backend).to(dtype)
    with torch.no_grad():
        for p in network.parameters():
            p.normal_(0, 0.02)
    vae = PolicyVAE(tiny_autoencoder(seed=0, base_dim=96), device=device, dtype=dtype)
    text = TextEmbeddings({LIBERO_SAMPLE_TASK: torch.randn(1, 512, 1024)}, device=device, dtype=dtype)
    stats = L.DatasetStatistics.from_dict(tiny_statistics("libero"))
    return CosmosPolicy(network, vae, text, stats, L.LIBERO, cuda_graph=cuda_graph)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_2b_action_chunk_cuda(benchmark):
    obs = _observation()
    stages = {}
    for name, graph in (("fused", True), ("eager", False)):
        stages.update(_stage_medians({name: _full_size_policy(cuda_graph=graph)}, obs, repeats=10))
        torch.cuda.empty_cache()
    extra = {"device": "cuda", "tokens": 9 * 196, "target_ms": TARGET_MS,
             "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
    for name, st in stages.items():
        for stage, ms in st.items():
            extra[f"{stage}_{name}_ms"] = ms
    times = {"fused": stages["fused"]["total"] / 1e3, "eager": stages["eager"]["total"] / 1e3}
    record(benchmark, "policy_2b_chunk[libero,cuda,graph=fused]", times, **extra)
    policy = _full_size_policy(cuda_graph=True)
    benchmark.pedantic(lambda: policy.infer(obs, seed=1), rounds=5, iterations=1, warmup_rounds=1)
