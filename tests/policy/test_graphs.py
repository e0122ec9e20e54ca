"""CUDA-graph bookkeeping of the policy, on the CPU with a fake capture; the real captures are GPU-marked."""

import contextlib
import warnings

import numpy as np
import pytest
import torch

import cosmos_policy.policy.graphs as graph_module
from cosmos_kernels import _dispatch
from cosmos_policy import CosmosPolicy
from cosmos_policy.model import layout as L
from cosmos_policy.policy.graphs import ChunkGraphs, capture_failure_recoverable
from cosmos_policy.testing import LIBERO_SAMPLE_TASK, tiny_policy, write_tiny_checkpoint

OTHER_TASK = "open the top drawer and put the bowl inside"


class FakeCapture:
    """Stands in for `cuda_capture`: 'captures' by running once; a replay runs the loop again into the static output.
    `fail` lists the attempts (1-based) that raise; `defer` the attempts during which a backend check is deferred."""

    def __init__(self, fail=(), defer=()):
        self.attempts, self.replays, self.fail, self.defer = 0, 0, set(fail), set(defer)

    def __call__(self, run, device, pool):
        self.attempts += 1
        if self.attempts in self.defer:
            _dispatch.defer(("fake-choice", self.attempts), lambda: False)
        if self.attempts in self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        out = run()
        capture = self

        class Graph:
            def replay(self):
                capture.replays += 1
                out.copy_(run())

        return Graph(), out


class ReplayingCapture:
    """Stands in for `cuda_capture` as a real graph behaves: the loop runs once, at capture; a replay hands back what
    the capture computed (a real replay recomputes from the same memory, so only what it reads from the static inputs
    changes; these tests repeat the seed). A replay of a graph whose text K/V went stale shows as stale actions."""

    def __init__(self):
        self.captures, self.replays = 0, 0

    def __call__(self, run, device, pool):
        self.captures += 1
        out = run()
        capture = self

        class Graph:
            def replay(self):
                capture.replays += 1

        return Graph(), out


@pytest.fixture(autouse=True)
def graphs_on_for_the_process(monkeypatch):
    """Each test starts with CUDA graphs on for the process, and leaves them so."""
    monkeypatch.setattr(graph_module, "process_disabled_reason", None)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), instructions=(LIBERO_SAMPLE_TASK, OTHER_TASK),
                                 image_size=64)


@pytest.fixture
def obs():
    rng = np.random.default_rng(3)
    obs = {camera: rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for camera in L.LIBERO.cameras}
    obs["proprio"] = rng.uniform(-0.5, 0.5, 9)
    obs["task_description"] = LIBERO_SAMPLE_TASK
    return obs


def _graphed(tiny_dir, capture, backend="fused"):
    policy = CosmosPolicy.from_pretrained(tiny_dir, backend=backend, device="cpu")
    policy.graphs = ChunkGraphs(policy, capturer=capture)
    return policy


def test_replays_and_invalidation(tiny_dir, obs):
    capture = FakeCapture()
    policy = _graphed(tiny_dir, capture)
    eager = CosmosPolicy.from_pretrained(tiny_dir, backend="fused", device="cpu")
    eager.graphs = ChunkGraphs(eager, capture=False)
    expected = eager.infer(obs, seed=1)["actions"]
    np.testing.assert_array_equal(policy.infer(obs, seed=1)["actions"], expected)
    np.testing.assert_array_equal(policy.infer(obs, seed=1)["actions"], expected)
    assert (capture.attempts, capture.replays, len(policy.graphs)) == (1, 2, 1)
    policy.infer(dict(obs, task_description=OTHER_TASK), seed=1)  # another instruction, another graph
    policy.infer_batch([obs, obs], seeds=[1, 2])  # another batch size
    assert capture.attempts == 3 and len(policy.graphs) == 3

    for invalidate in (lambda: policy.network.clear_caches(), lambda: policy.clear_caches(),
                       lambda: policy.network.load_state_dict(policy.network.state_dict()),
                       lambda: policy.network.to(torch.float32)):
        before = capture.attempts
        invalidate()
        np.testing.assert_array_equal(policy.infer(obs, seed=1)["actions"], expected)
        assert capture.attempts == before + 1 and len(policy.graphs) == 1  # every old graph went

    with torch.no_grad():  # an in-place weight update changes the key (version counters)
        policy.network.final_layer.linear.weight.mul_(1.0)
    policy.infer(obs, seed=1)
    policy.num_steps = 3  # so does the step count
    policy.infer(obs, seed=1)
    assert capture.attempts == before + 3


def test_failed_capture_runs_the_fused_loop_and_retries(tiny_dir, obs, monkeypatch):
    import cosmos_policy.policy.policy as policy_module

    monkeypatch.setattr(graph_module, "capture_failure_recoverable", lambda: True)
    capture = FakeCapture(fail={1, 2})
    policy = _graphed(tiny_dir, capture)
    expected = CosmosPolicy.from_pretrained(tiny_dir, backend="fused", device="cpu").infer(obs, seed=2)["actions"]

    def no_float64_sampler(*args, **kwargs):
        raise AssertionError("the float64 sample() ran instead of the fused loop")

    monkeypatch.setattr(policy_module, "sample", no_float64_sampler)
    attempts = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(8):
            got = policy.infer(obs, seed=2)["actions"]
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
            attempts.append(capture.attempts)
    # query 1 fails, query 2 eager, query 3 fails, queries 4-5 eager, query 6 captures
    assert attempts == [1, 1, 2, 2, 2, 3, 3, 3] and capture.replays == 3
    messages = [str(w.message) for w in caught if "CUDA graph capture failed" in str(w.message)]
    assert len(messages) == 2 and "eagerly" in messages[0] and "stream is capturing" in messages[0]
    assert policy.graphs.failures == 2 and policy.graphs.last_error is None and len(policy.graphs) == 1


def test_failed_capture_on_a_torch_that_cannot_recover_turns_graphs_off(tiny_dir, obs, monkeypatch):
    monkeypatch.setattr(graph_module, "capture_failure_recoverable", lambda: False)
    capture = FakeCapture(fail={1})
    policy = _graphed(tiny_dir, capture)
    expected = CosmosPolicy.from_pretrained(tiny_dir, backend="fused", device="cpu").infer(obs, seed=2)["actions"]
    other_capture = FakeCapture()
    other = _graphed(tiny_dir, other_capture)  # another policy of the same process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(4):  # past the first retry a recovering torch would make (query 3)
            np.testing.assert_allclose(policy.infer(obs, seed=2)["actions"], expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(other.infer(obs, seed=2)["actions"], expected, rtol=1e-4, atol=1e-4)
    messages = [str(w.message) for w in caught if "CUDA graph" in str(w.message)]
    assert len(messages) == 1 and "off for this process" in messages[0] and "stream is capturing" in messages[0]
    assert capture.attempts == 1 and other_capture.attempts == 0  # nothing is captured again, anywhere
    assert "stream is capturing" in graph_module.process_disabled_reason
    assert policy.graphs.disabled_reason == other.graphs.disabled_reason == graph_module.process_disabled_reason
    assert policy.graphs.failures == 1 and len(policy.graphs) == len(other.graphs) == 0


def test_graphs_already_captured_stop_replaying_once_graphs_are_off(tiny_dir, obs, monkeypatch):
    monkeypatch.setattr(graph_module, "capture_failure_recoverable", lambda: False)
    capture = FakeCapture(fail={2})
    policy = _graphed(tiny_dir, capture)
    first = policy.infer(obs, seed=1)["actions"]
    assert len(policy.graphs) == 1 and capture.replays == 1
    with pytest.warns(RuntimeWarning, match="off for this process"):
        policy.infer(dict(obs, task_description=OTHER_TASK), seed=1)  # another key: its capture fails
    np.testing.assert_array_equal(policy.infer(obs, seed=1)["actions"], first)  # eager, the same numbers
    assert capture.replays == 1 and capture.attempts == 2 and len(policy.graphs) == 0


def test_capture_failure_recoverable_by_torch_version():
    assert capture_failure_recoverable() == (torch.__version__ >= "2.13")
    for version, recovers in (("2.11.0+cu130", False), ("2.12.1", False), ("2.13.0a0+git1234", False),
                              ("2.13.0", True), ("2.14.1+cpu", True), ("3.0.0", True)):
        assert capture_failure_recoverable(version) is recovers, version


def _inference_texts(policy, monkeypatch) -> dict:
    """The policy's text as inference-mode tensors (what a first query under `torch.inference_mode()` on a GPU
    makes: a moved or cast tensor), one per instruction."""
    with torch.inference_mode():
        texts = {i: policy.text.get(i).clone() for i in policy.text.instructions()}
    monkeypatch.setattr(policy.text, "get", texts.__getitem__)
    return texts


def test_inference_mode_query_with_inference_text_runs_the_graph(tiny_dir, obs, monkeypatch):
    capture = FakeCapture()
    policy = _graphed(tiny_dir, capture)
    _inference_texts(policy, monkeypatch)
    expected = CosmosPolicy.from_pretrained(tiny_dir, backend="fused", device="cpu").infer(obs, seed=1)["actions"]
    with torch.inference_mode():
        for _ in range(2):
            np.testing.assert_allclose(policy.infer(obs, seed=1)["actions"], expected, rtol=1e-4, atol=1e-4)
    assert (capture.attempts, capture.replays, len(policy.graphs)) == (1, 2, 1)


@pytest.mark.parametrize("inference_text", [False, True], ids=["normal-text", "inference-text"])
def test_in_place_text_edit_is_a_new_capture_not_a_stale_replay(tiny_dir, obs, monkeypatch, inference_text):
    capture = ReplayingCapture()
    policy = _graphed(tiny_dir, capture)
    if inference_text:
        _inference_texts(policy, monkeypatch)
    reference = CosmosPolicy.from_pretrained(tiny_dir, backend="fused", device="cpu")
    mode = torch.inference_mode() if inference_text else contextlib.nullcontext()
    with mode:
        first = policy.infer(obs, seed=1)["actions"]
        np.testing.assert_array_equal(policy.infer(obs, seed=1)["actions"], first)
        assert (capture.captures, capture.replays) == (1, 2)
        for text in (policy.text.get(LIBERO_SAMPLE_TASK), reference.text.get(LIBERO_SAMPLE_TASK)):
            text[:, :4].mul_(-1.0)  # in place: the same tensor, new content
        edited = policy.infer(obs, seed=1)["actions"]
    np.testing.assert_allclose(edited, reference.infer(obs, seed=1)["actions"], rtol=1e-4, atol=1e-4)
    assert not np.allclose(edited, first, rtol=1e-3, atol=1e-3)
    assert (capture.captures, capture.replays) == (2, 3)


def test_capture_that_deferred_a_backend_check_is_redone(tiny_dir, obs):
    capture = FakeCapture(defer={1})
    policy = _graphed(tiny_dir, capture)
    policy.infer(obs, seed=0)
    assert capture.attempts == 2 and len(policy.graphs) == 1 and policy.graphs.failures == 0
    always = FakeCapture(defer=set(range(1, 10)))
    policy = _graphed(tiny_dir, always)
    with pytest.warns(RuntimeWarning, match="deferred"):
        policy.infer(obs, seed=0)
    assert always.attempts == 2 and len(policy.graphs) == 0 and _dispatch.deferred() == []


@pytest.fixture
def fake_capturing(monkeypatch):
    """Dispatch believes a CUDA-graph capture is running."""
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    yield
    _dispatch.run_deferred()


def test_probe_skipped_during_capture_runs_after(fake_capturing, monkeypatch):
    runs = []

    def probe(device):
        runs.append(device)
        return False

    monkeypatch.setitem(_dispatch._probe_fns, ("fake_op", "triton"), probe)
    device = torch.device("cuda", 0)
    try:
        assert _dispatch.probe_passed("fake_op", "triton", device) and runs == []  # not inside the capture
        assert _dispatch.deferred() == [("probe", "fake_op", "triton", "cuda:0")]
        monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
        with pytest.warns(RuntimeWarning, match="fake_op disabled"):
            assert _dispatch.run_deferred() is False  # the probe failed: the capture must be redone
        assert runs == [device] and not _dispatch.probe_passed("fake_op", "triton", device)
    finally:
        _dispatch._probe_results.pop(("fake_op", "triton", "cuda:0"), None)


def test_attention_first_called_inside_a_capture_is_provisional(fake_capturing, monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode

    picker = pytest.importorskip("cosmos_kernels.picker")
    monkeypatch.setattr(picker, "choice_key", lambda *args: "fake GPU | q(1, 40, 2, 64)")
    monkeypatch.setattr(picker, "_load_disk", lambda: None)
    with FakeTensorMode():
        q = torch.empty(1, 40, 2, 64, device="cuda:0", dtype=torch.bfloat16)

    def never_run(*args):
        raise AssertionError("no backend may be timed inside a capture")

    got = picker.auto_backend(never_run, lambda q, repeats: ["triton", "sdpa"], q, q, q, None, None, None, None,
                              0.125, 1e-6, 1)
    assert got == "sdpa" and "fake GPU | q(1, 40, 2, 64)" not in picker._choices  # not remembered as the choice
    assert _dispatch.deferred() == [("timed-choice", "fake GPU | q(1, 40, 2, 64)")]
    assert _dispatch.run_deferred() is False  # whoever captured it captures again


def test_triton_launches_run_on_the_tensors_device(monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode

    from cosmos_kernels.adaptive_norm import triton as norm_triton
    from cosmos_kernels.attention import triton as attention_triton
    from cosmos_kernels.sampling.step import triton as step_triton

    for launcher in (norm_triton.layer_norm_modulate, norm_triton.rms_norm, attention_triton.qk_norm_rope,
                     attention_triton.attention, step_triton.sampler_step):
        assert getattr(launcher, "__wrapped__", None) is not None, launcher.__name__
    entered = []

    @contextlib.contextmanager
    def device(d):
        entered.append(torch.device(d))
        yield

    monkeypatch.setattr(torch.cuda, "device", device)
    seen = []
    guarded = _dispatch.on_tensor_device(lambda *args: seen.append(list(entered)) or "done")
    with FakeTensorMode():
        x = torch.empty(2, device="cuda:1")
    assert guarded(3, x) == "done" and seen == [[torch.device("cuda:1")]]
    entered.clear()
    assert guarded(torch.zeros(2)) == "done" and entered == []  # CPU tensors (the interpreter): no guard


@pytest.fixture(scope="module")
def stand_in_dir(tmp_path_factory):
    """A tiny checkpoint without the VAE file: the GPU tests run on the stand-in VAE (no diffusers needed)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("stand-in"), instructions=(LIBERO_SAMPLE_TASK, OTHER_TASK),
                                 image_size=64, vae=False)


def _close_on_cuda(graphed, eager, obs, seed):
    a, b = graphed.infer(obs, seed=seed)["actions"], eager.infer(obs, seed=seed)["actions"]
    np.testing.assert_allclose(a, b, rtol=2e-2, atol=2e-2)
    return a


@pytest.mark.gpu
def test_cuda_graphs_follow_weight_loads(stand_in_dir, obs):
    graphed = tiny_policy(stand_in_dir, device="cuda", cuda_graph=True)
    eager = tiny_policy(stand_in_dir, device="cuda", cuda_graph=False)
    report = graphed.warmup(batch_sizes=(1, 2))
    assert report["cuda_graphs"] == 2 and report["graph_failures"] == 0 and graphed.next_seed == 0

    before = _close_on_cuda(graphed, eager, obs, 1)
    state = {k: v * 1.5 if v.dim() >= 2 else v for k, v in eager.network.state_dict().items()}
    for policy in (graphed, eager):
        policy.network.load_state_dict(state)  # frees the K/V and modulation the old graphs read
    after = _close_on_cuda(graphed, eager, obs, 1)
    assert not np.allclose(before, after) and len(graphed.graphs) == 1
    graphed.network.clear_caches()
    unedited = _close_on_cuda(graphed, eager, obs, 2)
    with torch.inference_mode():  # an in-place edit of the text: a new capture, not a replay of stale K/V
        for policy in (graphed, eager):
            policy.text.get(LIBERO_SAMPLE_TASK)[:, :4].mul_(-1.0)
        edited = _close_on_cuda(graphed, eager, obs, 2)
    assert not np.allclose(edited, unedited, rtol=2e-2, atol=2e-2) and graphed.graphs.last_error is None


@pytest.mark.gpu
@pytest.mark.skipif(not capture_failure_recoverable(),
                    reason=f"torch {torch.__version__} cannot capture again after a failed capture: a real failure "
                           "would leave this process's allocator mid-capture (the fake-capture tests cover it)")
def test_cuda_graphs_survive_a_failed_capture(stand_in_dir, obs, monkeypatch):
    graphed = tiny_policy(stand_in_dir, device="cuda", cuda_graph=True)
    eager = tiny_policy(stand_in_dir, device="cuda", cuda_graph=False)
    real = graphed.network.forward

    def syncs_while_capturing(*args, **kwargs):
        if torch.cuda.is_current_stream_capturing():
            torch.cuda.synchronize()  # illegal inside a capture
        return real(*args, **kwargs)

    monkeypatch.setattr(graphed.network, "forward", syncs_while_capturing)
    with pytest.warns(RuntimeWarning, match="capture failed"):
        _close_on_cuda(graphed, eager, obs, 3)
    assert graphed.graphs.failures == 1 and len(graphed.graphs) == 0
    _close_on_cuda(graphed, eager, obs, 3)  # eager fused loop until the retry
    monkeypatch.setattr(graphed.network, "forward", real)
    _close_on_cuda(graphed, eager, obs, 3)
    assert len(graphed.graphs) == 1 and graphed.graphs.last_error is None
