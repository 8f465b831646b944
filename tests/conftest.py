"""Shared fixtures: the real embedded model (loaded once) and tiny random Llama models on its tokenizer."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from semgrad_guard import SemGradScorer
from semgrad_guard.evaluation.precision import float64_norms
from tests._models import tiny_lm


@pytest.fixture(scope="session", autouse=True)
def _float64_norms() -> Iterator[None]:
    """transformers' RMSNorm rounds to float32 even in a float64 model (scores move ~1e-7 with batch shape):
    the float64 tests check our pass, not that norm, so it computes in float64 here (other dtypes as is)."""
    with float64_norms():
        yield


@pytest.fixture(scope="session")
def embedded() -> SemGradScorer:
    """The embedded SmolLM2-135M-Instruct, loaded once for the whole session."""
    return SemGradScorer(device="cpu").load()


@pytest.fixture(scope="session")
def embedded64() -> SemGradScorer:
    """The embedded model in float64, where the pass is exact to rounding: the reference for exactness."""
    return SemGradScorer(device="cpu", dtype="float64").load()


@pytest.fixture(scope="session")
def tokenizer(embedded: SemGradScorer) -> Any:
    """SmolLM2's real tokenizer and chat template, for the tiny models."""
    return embedded.tokenizer


def _tiny_model(tokenizer: Any, *, tied: bool, layers: int = 4) -> Any:
    return tiny_lm(len(tokenizer), layers=layers, max_position_embeddings=256, tie_word_embeddings=tied)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: Any, tokenizer: Any) -> Path:
    """A tiny random 4-layer Llama with SmolLM2's tokenizer, saved as a local Hugging Face folder."""
    folder = tmp_path_factory.mktemp("tiny")
    _tiny_model(tokenizer, tied=False).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def make_tiny(tokenizer: Any) -> Callable[..., SemGradScorer]:
    """A scorer over a fresh tiny random Llama (tied or untied, float32 or ``dtype``) and a tokenizer copy."""

    def make(*, tied: bool = True, dtype: torch.dtype = torch.float32, **kwargs: Any) -> SemGradScorer:
        model = _tiny_model(tokenizer, tied=tied, layers=kwargs.pop("layers", 4)).to(dtype)
        return SemGradScorer((model, copy.deepcopy(tokenizer)), name="tiny", **kwargs)

    return make
