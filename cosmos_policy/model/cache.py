"""A least-recently-used cache bounded by the bytes of the tensors it holds."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import torch


def tensor_bytes(value: Any) -> int:
    """Bytes held by the tensors in `value` (a tensor, or nested tuples / lists / dicts of them)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(tensor_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    return 0


class LRUCache:
    """Maps keys to tensors (or containers of tensors), evicting the least recently used beyond `max_bytes`.

    A value larger than the whole budget is returned to the caller but not stored. `pin(key)` keeps an entry
    from eviction (for example while a captured CUDA graph reads its memory); `clear()` drops pinned entries too.
    """

    def __init__(self, max_bytes: int, name: str = "cache") -> None:
        if not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"{name}: max_bytes must be a non-negative int, got {max_bytes!r}")
        self.name = name
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._pinned: set[Hashable] = set()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def get(self, key: Hashable) -> Any | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[0]

    def put(self, key: Hashable, value: Any) -> Any:
        nbytes = tensor_bytes(value)
        self.pop(key)
        if nbytes > self.max_bytes:
            return value
        self._entries[key] = (value, nbytes)
        self.bytes += nbytes
        self._evict()
        return value

    def get_or_create(self, key: Hashable, create: Callable[[], Any], *, store: bool = True) -> Any:
        value = self.get(key)
        if value is None:
            value = create()
            if store:
                self.put(key, value)
        return value

    def pop(self, key: Hashable) -> Any | None:
        entry = self._entries.pop(key, None)
        self._pinned.discard(key)
        if entry is None:
            return None
        self.bytes -= entry[1]
        return entry[0]

    def pin(self, key: Hashable) -> None:
        if key in self._entries:
            self._pinned.add(key)

    def clear(self) -> None:
        self._entries.clear()
        self._pinned.clear()
        self.bytes = 0

    def _evict(self) -> None:
        for key in list(self._entries):
            if self.bytes <= self.max_bytes:
                return
            if key not in self._pinned:
                self.pop(key)
