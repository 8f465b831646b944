"""Shared fixtures: the real embedded model (loaded once) and tiny random Llama models on its tokenizer."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from semgrad_guard import SemGradScorer


@pytest.fixture(scope="session")
def embedded() -> SemGradScorer:
    """The embedded SmolLM2-135M-Instruct, loaded once for the whole session."""
    return SemGradScorer(device="cpu").load()


@pytest.fixture(scope="session")
def tokenizer(embedded: SemGradScorer) -> Any:
    """SmolLM2's real tokenizer and chat template, for the tiny models."""
    return embedded.tokenizer


def _tiny_model(tokenizer: Any, *, tied: bool, seed: int = 0, layers: int = 4) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: Any, tokenizer: Any) -> Path:
    """A tiny random 4-layer Llama with SmolLM2's tokenizer, saved as a local Hugging Face folder."""
    folder = tmp_path_factory.mktemp("tiny")
    _tiny_model(tokenizer, tied=False).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def make_tiny(tokenizer: Any) -> Callable[..., SemGradScorer]:
    """A scorer over a fresh tiny random Llama (tied or untied) and a copy of the tokenizer."""

    def make(*, tied: bool = True, **kwargs: Any) -> SemGradScorer:
        model = _tiny_model(tokenizer, tied=tied, layers=kwargs.pop("layers", 4))
        return SemGradScorer((model, copy.deepcopy(tokenizer)), name="tiny", **kwargs)

    return make
