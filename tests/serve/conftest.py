"""A tiny random-weight LIBERO policy (small images, so a query is a fraction of a second on the CPU) and a server
for it on free loopback ports, shared by the module's tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("websockets")
pytest.importorskip("msgpack")

from cosmos_policy.testing import LIBERO_SAMPLE_TASK, write_tiny_checkpoint  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "libero_sample_observation.npz"
OTHER_TASK = "open the top drawer and put the bowl inside"
TEST_IMAGE_SIZE = 32
MAX_MESSAGE = 2 * 2**20


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("serve_ckpt"), instructions=(LIBERO_SAMPLE_TASK, OTHER_TASK),
                                 image_size=TEST_IMAGE_SIZE)


def load(checkpoint: Path):
    from cosmos_policy.policy import CosmosPolicy

    return CosmosPolicy.from_pretrained(checkpoint, device="cpu")


@pytest.fixture(scope="session")
def reference_policy(tiny_checkpoint):
    """A second copy of the served policy: the tests call `infer` on it while the server uses its own."""
    return load(tiny_checkpoint)


@pytest.fixture(scope="session")
def observation() -> dict:
    """The real LIBERO observation when the shared sample is there, else a synthetic one of the same shapes."""
    if SAMPLE.is_file():
        with np.load(SAMPLE) as data:
            obs = {key: np.asarray(data[key]) for key in ("primary_image", "wrist_image", "proprio")}
    else:
        rng = np.random.default_rng(0)
        obs = {key: rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for key in ("primary_image", "wrist_image")}
        obs["proprio"] = rng.uniform(-0.5, 0.5, 9)
    obs["task_description"] = LIBERO_SAMPLE_TASK
    return obs


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    from cosmos_policy.serve import PolicyServer

    with PolicyServer(load(tiny_checkpoint), port=0, http_port=0, seed=195, seed_step=1, max_queue=8, max_batch=4,
                      max_message_bytes=MAX_MESSAGE) as running:
        yield running
