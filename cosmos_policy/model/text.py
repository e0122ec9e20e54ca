"""Instruction -> T5 embedding, from the precomputed pickle the official checkpoints ship ({instruction: (1, 512, D)}).

Cosmos-Predict2.5 policies read Reason1 embeddings the same way ({instruction: (1, 512, 100352)} bf16, padding rows
non-zero); with `projection` (the network's `project_context`) an instruction's wide embedding stays on the host
and only its projected (1, 512, 1024) context is kept on the device.

An instruction that is not in the file is an error naming it, unless the user passes a local T5 encoder: then it is
encoded once and cached. Embeddings are moved to the policy's device and dtype once, at first use.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable

import torch

from .text_projection import is_projected, mark_projected

TEXT_TOKENS = 512

TEXT_TOKENS_ATTR = "cosmos_text_tokens"


def with_text_tokens(emb: torch.Tensor, tokens: int) -> torch.Tensor:
    """Mark T5 embeddings `(B, N, C)` as zero past their first `tokens` rows (returns `emb` itself).

    The fused network then skips reading the values to find the padding: what a tensor without values (meta)
    needs, and a host read saved for real ones. The mark must be true: rows past it are treated as zero.
    """
    setattr(emb, TEXT_TOKENS_ATTR, int(tokens))
    return emb


def text_tokens(emb: torch.Tensor) -> int | None:
    """The leading non-zero row count marked by `with_text_tokens`, or None."""
    return getattr(emb, TEXT_TOKENS_ATTR, None)


class TextEmbeddings:
    def __init__(
        self,
        embeddings: dict[str, torch.Tensor],
        *,
        encoder: Callable[[str], torch.Tensor] | None = None,
        device=None,
        dtype: torch.dtype = torch.float32,
        source: str = "the T5 embeddings",
        projection: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self._host: dict[str, torch.Tensor] = {}
        for instruction, embedding in embeddings.items():
            self._host[instruction] = self._check(instruction, embedding, source)
        self._encoder = encoder
        self._device_cache: dict[str, torch.Tensor] = {}
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        self.source = source
        self.projection = projection

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs) -> TextEmbeddings:
        from .checkpoint import load_t5_embeddings

        return cls(load_t5_embeddings(path), source=str(path), **kwargs)

    @staticmethod
    def _check(instruction: str, embedding, source: str) -> torch.Tensor:
        if not isinstance(instruction, str):
            raise ValueError(f"{source}: keys must be instruction strings, got {type(instruction).__name__}")
        embedding = torch.as_tensor(embedding)
        if embedding.dim() == 2:
            embedding = embedding[None]
        if embedding.dim() != 3 or embedding.shape[0] != 1 or not embedding.is_floating_point():
            raise ValueError(
                f"{source}: embedding of {instruction!r} must be a float tensor (1, tokens, dim), "
                f"got {tuple(embedding.shape)} {embedding.dtype}"
            )
        return embedding.detach().cpu()

    @property
    def dim(self) -> int | None:
        for embedding in self._host.values():
            return embedding.shape[-1]
        return None

    def instructions(self) -> list[str]:
        return list(self._host)

    def __contains__(self, instruction: str) -> bool:
        return instruction in self._host

    def __len__(self) -> int:
        return len(self._host)

    def check_known(self, instructions: Iterable[str], key: str = "task_description") -> None:
        """Raise before any work when an instruction can be neither found nor encoded."""
        for instruction in instructions:
            if not isinstance(instruction, str):
                raise ValueError(f"{key}: expected an instruction string, got {type(instruction).__name__}")
            if instruction not in self._host and self._encoder is None:
                close = difflib.get_close_matches(instruction, list(self._host), n=3)
                hint = f"; closest known: {close}" if close else ""
                raise ValueError(
                    f"{key}: unknown instruction {instruction!r}: it is not in {self.source} "
                    f"({len(self._host)} instructions){hint}. Pass a T5 encoder (text_encoder=...) to encode new ones."
                )

    def get(self, instruction: str) -> torch.Tensor:
        """(1, 512, D) on the policy's device and dtype (with `projection`: its output, computed once)."""
        cached = self._device_cache.get(instruction)
        if cached is not None:
            return cached
        self.check_known([instruction])
        if instruction not in self._host:
            encoded = self._check(instruction, self._encoder(instruction), "text_encoder")
            if self.dim is not None and encoded.shape[-1] != self.dim:
                raise ValueError(f"text_encoder: returned dim {encoded.shape[-1]}, the checkpoint uses {self.dim}")
            self._host[instruction] = encoded
        if self.projection is not None:  # the wide host embedding in, only the projected context kept
            embedding = self.projection(self._host[instruction])
        else:
            embedding = self._host[instruction].to(self.device, self.dtype)
        self._device_cache[instruction] = embedding
        return embedding

    def batch(self, instructions: list[str]) -> torch.Tensor:
        self.check_known(instructions)
        parts = [self.get(instruction) for instruction in instructions]
        out = torch.cat(parts, dim=0)
        if all(is_projected(part) for part in parts):
            mark_projected(out)
        return out

    def cache_info(self) -> dict:
        return {"text_instructions": len(self._host), "text_on_device": len(self._device_cache)}
