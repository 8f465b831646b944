"""Paraphrase directions at a profile's position and layers, fitted from SPS hidden states (forward only)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from semgrad_guard.directions import (
    DEFAULT_DIRECTIONS,
    ParaphraseDirections,
    paraphrase_differences,
    principal_directions,
)
from semgrad_guard.evaluation.datasets import QAItem
from semgrad_guard.model_parts import num_layers
from semgrad_guard.profiles import ModelProfile
from semgrad_guard.sps.states import DEFAULT_DATA, encode_items, load_default_items, tail_states

__all__ = ["directions_from_states", "fit_directions"]


def directions_from_states(
    states: torch.Tensor,
    source: list[int],
    k: int,
    profile: ModelProfile,
    *,
    name: str,
    data: str,
    n_questions: int,
) -> ParaphraseDirections:
    """Directions from hidden states (prompts, layers, width) already taken at the profile's place."""
    assert profile.layers is not None
    differences = paraphrase_differences(states, source)
    vectors, singular, energy = principal_directions(differences, k)
    return ParaphraseDirections(
        vectors=vectors,
        singular_values=singular,
        energy=energy,
        layers=tuple(profile.layers),
        offset=profile.offset,
        model=name,
        data=data,
        n_questions=n_questions,
        n_differences=len(differences),
    )


def fit_directions(
    model: Any,
    tokenizer: Any,
    profile: ModelProfile,
    items: Sequence[QAItem] | None = None,
    *,
    k: int = DEFAULT_DIRECTIONS,
    name: str = "model",
    data: str | None = None,
    max_paraphrases: int = 4,
    batch_size: int = 16,
    progress: bool = False,
) -> ParaphraseDirections:
    """Paraphrase directions at a given profile's position and layers: forward passes only, model unchanged.

    Per layer, the top-``k`` principal components (about zero) of the hidden-state differences paraphrase
    minus original question (:mod:`semgrad_guard.directions`). ``items`` default to the shipped set. When the
    profile names an anchor, every prompt must have it at the offset (``ValueError`` otherwise).
    """
    if items is None:
        items, data = load_default_items(), data or DEFAULT_DATA
    usable = [item for item in items if item.paraphrases]
    if not usable:
        raise ValueError("paraphrase directions need questions that have paraphrases")
    layer_count = num_layers(model)
    profile = profile.resolved(layer_count)
    assert profile.layers is not None
    prompts, source = encode_items(tokenizer, usable, max_paraphrases)
    if min(len(p) for p in prompts) < -profile.offset:
        raise ValueError(f"a prompt is shorter than offset {profile.offset}")
    if profile.anchor is not None:
        found = {tokenizer.convert_ids_to_tokens(p[profile.offset]) for p in prompts}
        if found != {profile.anchor}:
            raise ValueError(f"offset {profile.offset} lands on {sorted(found)}, not {profile.anchor!r}")
    states = tail_states(model, prompts, [profile.offset], layer_count, batch_size, progress)
    return directions_from_states(
        states[:, 0, list(profile.layers)],
        source,
        k,
        profile,
        name=name,
        data=data or "user items",
        n_questions=len(usable),
    )
