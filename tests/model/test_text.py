import os
import pickle

import pytest
import torch

from cosmos_policy.model.text import TextEmbeddings


def _embeddings(gen, dim=8):
    return {"pick up the bowl": torch.randn(1, 512, dim, generator=gen),
            "open the drawer": torch.randn(1, 512, dim, generator=gen)}


def test_lookup_and_device_cache(gen):
    text = TextEmbeddings(_embeddings(gen), dtype=torch.float64)
    first = text.get("open the drawer")
    assert first.shape == (1, 512, 8) and first.dtype == torch.float64
    assert text.get("open the drawer") is first  # one device copy per instruction: stable for the K/V cache
    assert text.batch(["open the drawer", "pick up the bowl"]).shape == (2, 512, 8)


def test_unknown_instruction_is_a_clear_error(gen):
    text = TextEmbeddings(_embeddings(gen))
    with pytest.raises(ValueError, match="unknown instruction 'open the drawers'.*open the drawer"):
        text.get("open the drawers")
    with pytest.raises(ValueError, match="task_description"):
        text.check_known([3])
    assert text.cache_info() == {"text_instructions": 2, "text_on_device": 0}


def test_encoder_runs_once_per_new_instruction(gen):
    calls = []

    def encoder(instruction):
        calls.append(instruction)
        return torch.ones(1, 512, 8)

    text = TextEmbeddings(_embeddings(gen), encoder=encoder)
    assert torch.equal(text.get("stack the blocks"), torch.ones(1, 512, 8))
    text.get("stack the blocks")
    assert calls == ["stack the blocks"] and "stack the blocks" in text
    bad = TextEmbeddings(_embeddings(gen), encoder=lambda s: torch.ones(1, 512, 4))
    with pytest.raises(ValueError, match="dim"):
        bad.get("stack the blocks")


def test_bad_embeddings_are_refused(gen):
    with pytest.raises(ValueError, match="pick"):
        TextEmbeddings({"pick": torch.zeros(2, 512, 8)})
    with pytest.raises(ValueError, match="strings"):
        TextEmbeddings({3: torch.zeros(1, 512, 8)})


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_from_file_is_restricted(tmp_path, gen):
    good = tmp_path / "libero_t5_embeddings.pkl"
    with open(good, "wb") as f:
        pickle.dump(_embeddings(gen), f)
    assert len(TextEmbeddings.from_file(good)) == 2
    evil = tmp_path / "evil.pkl"
    with open(evil, "wb") as f:
        pickle.dump({"pick up the bowl": _RunsCode()}, f)
    with pytest.raises(ValueError):
        TextEmbeddings.from_file(evil)
