"""Test-wide setup: Triton's interpreter on machines without a GPU, NaN-filled op outputs, seeded inputs."""

import os
import zlib

# Must be set before triton is imported (torch does not import it eagerly).
if os.environ.get("COSMOS_TEST_NO_INTERPRET") != "1":
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import cosmos_kernels  # noqa: E402


@pytest.fixture(autouse=True)
def _nan_filled_outputs():
    """Every op output starts as NaN, so an element a kernel fails to write is caught."""
    with cosmos_kernels.nan_filled_outputs():
        yield


@pytest.fixture(autouse=True)
def _fresh_environment():
    """The backend choice reads its environment variables once per process: each test starts from the real
    environment, and one that changes it (monkeypatch) leaves no cached value behind."""
    from cosmos_kernels import _dispatch

    _dispatch.refresh_environment()
    yield
    _dispatch.refresh_environment()


@pytest.fixture
def gen(request) -> torch.Generator:
    """A CPU generator seeded from the test's id: reproducible, and different for every case."""
    seed = zlib.crc32(request.node.nodeid.encode())
    return torch.Generator().manual_seed(seed)


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip)
