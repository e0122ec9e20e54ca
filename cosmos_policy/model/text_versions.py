"""The versions of text-embedding tensors as the network reads them (the mark of their padding is in `text.py`).

The versions key the network's K/V cache and the CUDA graphs. A normal tensor's version is its PyTorch version
counter: every in-place op on it, or on a view of it, moves it, at no cost. An inference-mode tensor has no counter:
its version here is the number of content changes `TextVersions.refresh` has found by comparing it with a copy taken
when it was first seen. That comparison reads a value back to the host, so it runs once per query (the policy calls
it before denoising), never inside a network pass or a CUDA-graph capture. Whoever calls the network directly with an
inference-mode tensor and then edits it in place calls `network.text_versions.refresh(emb)` (or the network's
`clear_caches()`) before the next pass, as after a write that bypasses the counter (`.data`, `.numpy()`).
"""

from __future__ import annotations

import weakref

import torch


def tensor_version(tensor: torch.Tensor) -> int:
    """The tensor's in-place version counter; 0 for an inference-mode tensor, which has none."""
    return 0 if tensor.is_inference() else tensor._version


class TextVersions:
    """Content versions of inference-mode tensors (held weakly: an entry goes with its tensor)."""

    def __init__(self) -> None:
        self._seen: dict[int, tuple[weakref.ref, torch.Tensor, int]] = {}  # id -> (tensor, copy, version)

    def __len__(self) -> int:
        return len(self._seen)

    def version(self, tensor: torch.Tensor) -> int:
        """`tensor_version` for a normal tensor; for an inference-mode one, the content changes seen so far."""
        if not tensor.is_inference():
            return tensor._version
        entry = self._entry(tensor)
        return entry[2] if entry is not None else 0

    def remember(self, tensor: torch.Tensor) -> None:
        """Keep a copy of an inference-mode tensor seen for the first time, for `refresh` to compare with."""
        if tensor.is_inference() and self._entry(tensor) is None:
            self._store(tensor, 0)

    def refresh(self, tensor: torch.Tensor) -> bool:
        """Whether an inference-mode tensor's content changed since it was last seen (then its version moves).
        A normal tensor: False at once (its counter needs no check)."""
        if not tensor.is_inference():
            return False
        entry = self._entry(tensor)
        if entry is None:
            self._store(tensor, 0)
            return False
        if torch.equal(entry[1], tensor):
            return False
        self._store(tensor, entry[2] + 1)
        return True

    def clear(self) -> None:
        self._seen.clear()

    def _entry(self, tensor: torch.Tensor):
        entry = self._seen.get(id(tensor))
        return entry if entry is not None and entry[0]() is tensor else None  # a recycled id is another tensor

    def _store(self, tensor: torch.Tensor, version: int) -> None:
        key, seen = id(tensor), self._seen

        def forget(ref: weakref.ref) -> None:
            if seen.get(key, (None,))[0] is ref:
                del seen[key]

        self._seen[key] = (weakref.ref(tensor, forget), tensor.clone(), version)
