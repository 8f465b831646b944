"""What the pass consumes: one pair's token ids, its gradient position, and any reusable prompt cache.

Kept apart from :mod:`semgrad_guard.statistics` so that encoding and queueing pairs imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

__all__ = ["EncodedPair", "PassMode", "PrefixCache"]

PassMode = Literal["fast", "naive"]
"""How the pass runs; both are exact (see the module docstring)."""


@dataclass(frozen=True)
class PrefixCache:
    """Key/value states of one prompt's first ``length`` tokens, one ``(key, value)`` per layer.

    Each tensor is ``(1, kv_heads, length, head_dim)``; made by a generation that already read the prompt.
    """

    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    length: int


@dataclass(frozen=True)
class EncodedPair:
    """Token ids of one pair, the absolute prompt position of the gradient, and any reusable prompt cache."""

    prompt_ids: list[int]
    answer_ids: list[int]
    position: int
    prefix: PrefixCache | None = None

    @property
    def start(self) -> int:
        """First position whose hidden states the loss differentiates: p, or the last prompt token."""
        return min(self.position, len(self.prompt_ids) - 1)

    @property
    def length(self) -> int:
        """Total tokens, prompt plus answer."""
        return len(self.prompt_ids) + len(self.answer_ids)
