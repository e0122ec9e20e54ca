"""The FP8 action chunk captured as one CUDA graph: its replay agrees with the eager FP8 chunk (needs a GPU with FP8
tensor cores; skipped elsewhere)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cosmos_kernels.fp8 import fp8_unsupported_reason
from cosmos_policy.testing import LIBERO_SAMPLE_TASK, tiny_policy, write_tiny_checkpoint


def _fp8_gpu() -> str | None:
    return fp8_unsupported_reason("cuda", torch.bfloat16) if torch.cuda.is_available() else "no CUDA GPU"


@pytest.mark.gpu
def test_fp8_chunk_graph_replay_matches_eager(tmp_path):
    reason = _fp8_gpu()
    if reason is not None:
        pytest.skip(reason)
    directory = write_tiny_checkpoint(tmp_path / "tiny", instructions=(LIBERO_SAMPLE_TASK,), image_size=64, vae=False)
    graphed = tiny_policy(directory, device="cuda", cuda_graph=True)
    eager = tiny_policy(directory, device="cuda", cuda_graph=False)
    plain = tiny_policy(directory, device="cuda", cuda_graph=False)
    for policy in (graphed, eager):
        policy.network.fp8 = True
    report = graphed.warmup()
    assert report["cuda_graphs"] == 1 and report["graph_failures"] == 0
    obs = graphed.synthetic_observation(LIBERO_SAMPLE_TASK)
    for seed in (1, 2):
        got, want = graphed.infer(obs, seed=seed), eager.infer(obs, seed=seed)
        # the same kernels in the same order: equal up to the bf16 rounding of a replay
        np.testing.assert_allclose(got["actions"], want["actions"], rtol=2e-2, atol=2e-2)
        assert abs(got["value"] - want["value"]) < 2e-2
        bf16 = plain.infer(obs, seed=seed)["actions"]
        assert not np.array_equal(got["actions"], bf16)  # the FP8 GEMMs ran
        assert np.linalg.norm(got["actions"] - bf16) / np.linalg.norm(bf16) < 0.15
    assert graphed.cache_info()["cuda_graphs"] == 1 and graphed.network.fp8_weights.nbytes() > 0
