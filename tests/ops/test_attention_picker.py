"""The automatic attention choice's key: what makes two calls share one timed choice (fake CUDA tensors here)."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from cosmos_kernels import _dispatch, picker


@pytest.fixture
def fake_gpu(monkeypatch):
    """A GPU label without a GPU, no disk cache, a fresh table of choices, no capture underway."""
    monkeypatch.setattr(picker, "gpu_label", lambda device: "fake GPU sm_90")
    monkeypatch.setattr(picker, "_load_disk", lambda: None)
    monkeypatch.setattr(picker, "_save_disk", lambda: None)
    monkeypatch.setattr(picker, "_choices", {})
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.delenv(_dispatch.DETERMINISTIC_ENV, raising=False)
    with FakeTensorMode():
        q = torch.empty(1, 40, 2, 64, device="cuda:0", dtype=torch.bfloat16)
        k = torch.empty(1, 15, 2, 64, device="cuda:0", dtype=torch.bfloat16)
    return q, k


def test_key_tells_a_repeated_last_key(fake_gpu):
    q, k = fake_gpu
    plain = picker.choice_key(q.device, q, k, None, None, None, 1)
    assert picker.choice_key(q.device, q, k, None, None, None, 300) != plain
    assert picker.choice_key(q.device, q, k, None, None, None, 1) == plain


def test_choice_timed_without_repeats_is_not_reused_with_them(fake_gpu, monkeypatch):
    """A repeated last key changes what each backend does (a bias, a log-sum-exp correction): timed on its own."""
    q, k = fake_gpu
    timed = []
    fastest = {1: "triton", 300: "sdpa"}

    def time_backend(run, name, *args, **kwargs):
        repeats = args[-1]
        timed.append((name, repeats))
        return 1.0 if name == fastest[repeats] else 2.0

    def never_run(*args):
        raise AssertionError("the fake timing runs nothing")

    monkeypatch.setattr(picker, "time_backend", time_backend)
    candidates = lambda q, repeats: ["triton", "sdpa"]  # noqa: E731
    args = (q, k, k, None, None, None, None, 0.125, 1e-6)
    assert picker.auto_backend(never_run, candidates, *args, 1) == "triton"
    assert picker.auto_backend(never_run, candidates, *args, 300) == "sdpa"
    assert picker.auto_backend(never_run, candidates, *args, 1) == "triton"  # kept: not timed again
    assert timed == [("triton", 1), ("sdpa", 1), ("triton", 300), ("sdpa", 300)]
