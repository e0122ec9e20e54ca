"""Safe checkpoint readers and state-dict key handling: official (with / without `net.`), extras, diffusers."""

from __future__ import annotations

import io
import os
import pickle

import pytest
import torch

from cosmos_policy import CosmosDiT, DiTConfig
from cosmos_policy.model.checkpoint import (
    load_network_checkpoint,
    load_t5_embeddings,
    official_to_diffusers_key,
    save_network_checkpoint,
)
from tests.model._dit_helpers import random_dit


class _RunsCode:
    """Unpickling this would run a shell command that creates `marker`."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _official_extras() -> dict[str, object]:
    return {
        "net.accum_video_sample_counter": torch.tensor(5),
        "net.accum_image_sample_counter": torch.tensor(0),
        "net.accum_iteration": torch.tensor(1000),
        "net.accum_train_in_hours": torch.tensor(12.5),
        "net.pos_embedder.seq": torch.arange(128.0),
        "net.pos_embedder.dim_spatial_range": torch.arange(0, 20, 2)[:10] / 20,
        "net.pos_embedder.dim_temporal_range": torch.arange(0, 24, 2)[:12] / 24,
        "net.blocks.0.self_attn.q_norm._extra_state": io.BytesIO(b"te-fp8-meta"),
        "net.blocks.1.mlp._extra_state": torch.zeros(0, dtype=torch.uint8),
    }


def _assert_same_weights(a: CosmosDiT, b: CosmosDiT) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_2b_key_set_and_parameter_count_match_the_official_network():
    with torch.device("meta"):
        model = CosmosDiT(DiTConfig.cosmos_predict2_2b())
    keys = model.state_dict().keys()
    # 574 official entries minus 4 training counters and 3 RoPE buffers.
    assert len(keys) == 567
    assert sum(p.numel() for p in model.parameters()) == 1_956_413_440
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["x_embedder.proj.1.weight"] == (2048, 72)
    assert shapes["t_embedder.1.linear_2.weight"] == (6144, 2048)
    assert shapes["blocks.27.cross_attn.k_proj.weight"] == (2048, 1024)
    assert shapes["blocks.0.self_attn.q_norm.weight"] == (128,)
    assert shapes["blocks.3.adaln_modulation_mlp.2.weight"] == (6144, 256)
    assert shapes["final_layer.adaln_modulation.2.weight"] == (4096, 256)
    assert shapes["final_layer.linear.weight"] == (64, 2048)


@pytest.mark.parametrize("prefix", ["net.", ""])
def test_official_checkpoint_file_loads_with_extras(tmp_path, gen, prefix):
    src = random_dit(gen)
    path = tmp_path / "model.pt"
    state = {prefix + k: v for k, v in src.state_dict().items()}
    state.update({k if prefix else k[len("net."):]: v for k, v in _official_extras().items()})
    torch.save(state, path)
    loaded = load_network_checkpoint(path)
    assert not any(k.endswith("q_norm._extra_state") for k in loaded)  # the BytesIO entry is dropped
    dst = CosmosDiT(DiTConfig.tiny())
    dst.load_state_dict(loaded)
    _assert_same_weights(src, dst)


def test_save_network_checkpoint_writes_net_prefixed_keys(tmp_path, gen):
    src = random_dit(gen)
    path = tmp_path / "tiny.pt"
    save_network_checkpoint(src.state_dict(), path)
    raw = torch.load(path, weights_only=True)
    assert all(k.startswith("net.") for k in raw) and len(raw) == len(src.state_dict())
    dst = CosmosDiT(DiTConfig.tiny())
    dst.load_state_dict(load_network_checkpoint(path))
    _assert_same_weights(src, dst)


def test_missing_key_fails_naming_it(gen):
    state = random_dit(gen).state_dict()
    del state["blocks.1.cross_attn.k_norm.weight"]
    with pytest.raises(ValueError, match=r"missing keys: \['blocks\.1\.cross_attn\.k_norm\.weight'\]"):
        CosmosDiT(DiTConfig.tiny()).load_state_dict(state)


def test_unexpected_key_fails_naming_it(gen):
    state = {"net." + k: v for k, v in random_dit(gen).state_dict().items()}
    state["net.blocks.0.extra_pos_embedder.weight"] = torch.zeros(3)
    state["net_ema.x_embedder.proj.1.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="unexpected keys") as err:
        CosmosDiT(DiTConfig.tiny()).load_state_dict(state)
    assert "blocks.0.extra_pos_embedder.weight" in str(err.value)
    assert "net_ema.x_embedder.proj.1.weight" in str(err.value)


def test_wrong_shape_fails_naming_the_key(gen):
    state = random_dit(gen).state_dict()
    state["final_layer.linear.weight"] = torch.zeros(64, 100)
    with pytest.raises(ValueError, match=r"final_layer\.linear\.weight.*\(64, 100\)"):
        CosmosDiT(DiTConfig.tiny()).load_state_dict(state)


def test_diffusers_keys_load(gen):
    from diffusers.loaders.single_file_utils import convert_cosmos_transformer_checkpoint_to_diffusers

    src = random_dit(gen)
    official = {"net." + k: v.clone() for k, v in src.state_dict().items()}
    official.update({k: v for k, v in _official_extras().items() if isinstance(v, torch.Tensor)})
    converted = convert_cosmos_transformer_checkpoint_to_diffusers(official)
    assert {official_to_diffusers_key(k) for k in src.state_dict()} == set(converted)
    dst = CosmosDiT(DiTConfig.tiny())
    dst.load_state_dict(converted)
    _assert_same_weights(src, dst)


def test_network_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"net.x_embedder.proj.1.weight": _RunsCode(str(marker))}, path)
    with pytest.raises(ValueError, match=r"refusing to load.*posix\.system|refusing to load.*os\.system"):
        load_network_checkpoint(path)
    assert not marker.exists()


def test_t5_embeddings_pickle_roundtrip(tmp_path, gen):
    import numpy as np

    emb = {
        "put the bowl on the plate": torch.randn(1, 512, 16, generator=gen).to(torch.bfloat16),
        "open the drawer": torch.randn(1, 512, 16, generator=gen)[:, :, ::2],  # a strided view
        "as numpy": np.arange(12, dtype=np.float32).reshape(1, 3, 4),
    }
    path = tmp_path / "t5.pkl"
    with open(path, "wb") as f:
        pickle.dump(emb, f)
    loaded = load_t5_embeddings(path)
    assert loaded.keys() == emb.keys()
    for key, value in emb.items():
        want = value if isinstance(value, torch.Tensor) else torch.from_numpy(value)
        assert loaded[key].dtype == want.dtype and torch.equal(loaded[key], want), key


def test_t5_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"pick up the book": _RunsCode(str(marker))}, f)
    with pytest.raises(ValueError, match=r"refusing to load.*(posix|os)\.system"):
        load_t5_embeddings(path)
    assert not marker.exists()


def test_t5_pickle_with_code_hidden_in_a_tensor_storage_is_refused(tmp_path):
    """Plain pickles rebuild storages from a nested `torch.save` blob, which must be read weights-only too."""
    marker = tmp_path / "ran"
    blob = io.BytesIO()
    torch.save(_RunsCode(str(marker)), blob, _use_new_zipfile_serialization=False)

    class HiddenPayload:
        def __reduce__(self):
            return (torch.storage._load_from_bytes, (blob.getvalue(),))

    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"stack the blocks": HiddenPayload()}, f)
    with pytest.raises((ValueError, pickle.UnpicklingError)):
        load_t5_embeddings(path)
    assert not marker.exists()
