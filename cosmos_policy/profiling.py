"""NVTX ranges for Nsight Systems: free unless ``COSMOS_NVTX=1``.

    with nvtx_range("vae_encode"):
        ...

    @nvtx_range("preprocess")
    def prepare(...): ...

    for i, block in nvtx_enumerate(self.blocks, "dit.block"):  # one range per loop body, named dit.block0, ...
        ...

With ``COSMOS_NVTX=1`` the ranges go to the ``nvtx`` package when it is importable, else to ``torch.cuda.nvtx``.
Otherwise every helper returns a shared no-op (or plain ``enumerate``), so the hot loops pay one attribute read.
Run ``nsys profile --capture-range=cudaProfilerApi`` to record only the demo's measured window.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_enabled = os.environ.get("COSMOS_NVTX") == "1"
_backend: tuple[Callable[[str], object], Callable[[], object]] | None = None


def enabled() -> bool:
    return _enabled


def set_enabled(flag: bool) -> None:
    """Turn the ranges on or off at run time (the environment variable sets the start value)."""
    global _enabled
    _enabled = bool(flag)


def _push_pop() -> tuple[Callable[[str], object], Callable[[], object]]:
    global _backend
    if _backend is None:
        try:
            import nvtx

            _backend = (lambda name: nvtx.push_range(name), nvtx.pop_range)
        except ImportError:
            import torch

            _backend = (torch.cuda.nvtx.range_push, torch.cuda.nvtx.range_pop)
    return _backend


class _NoRange:
    """The disabled range: a context manager and a decorator that change nothing."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> bool:
        return False

    def __call__(self, func: Callable[..., T]) -> Callable[..., T]:
        return func


class _Range:
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __enter__(self) -> None:
        _push_pop()[0](self.name)

    def __exit__(self, *exc) -> bool:
        _push_pop()[1]()
        return False

    def __call__(self, func: Callable[..., T]) -> Callable[..., T]:
        name = self.name

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with _Range(name):
                return func(*args, **kwargs)

        return wrapper


_NO_RANGE = _NoRange()


def nvtx_range(name: str, index: int | None = None) -> _Range | _NoRange:
    """A named NVTX range (``name`` + ``index`` when given; the name is only formatted when ranges are on).

    As a decorator it takes the switch as it is at decoration time: off, the function is returned unchanged."""
    if _enabled:
        return _Range(name if index is None else f"{name}{index}")
    return _NO_RANGE


def nvtx_enumerate(items: Iterable[T], name: str) -> Iterator[tuple[int, T]]:
    """`enumerate(items)`, with one range ``name<i>`` around each loop body when ranges are on."""
    if not _enabled:
        return enumerate(items)
    return _ranged(items, name)


def _ranged(items: Iterable[T], name: str) -> Iterator[tuple[int, T]]:
    push, pop = _push_pop()
    for i, item in enumerate(items):
        push(f"{name}{i}")
        try:
            yield i, item
        finally:  # runs when the loop asks for the next item, breaks or raises
            pop()
