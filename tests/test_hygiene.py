"""The scorer never changes the caller's model: no hooks, grads, requires_grad or mode left behind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from semgrad_guard import SemGradScorer


def hooks(model: Any) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )


def snapshot(model: Any) -> tuple[bool, list[bool], int]:
    return model.training, [p.requires_grad for p in model.parameters()], hooks(model)


def test_model_left_clean_after_success(make_tiny: Callable[..., SemGradScorer]) -> None:
    scorer = make_tiny()
    model = scorer.model
    model.train()
    for p in list(model.parameters())[:3]:
        p.requires_grad_(False)
    before = snapshot(model)
    scorer.score("Hi?", "Hello")
    scorer.generate_and_score("Hi?", max_new_tokens=3)
    assert snapshot(model) == before
    assert all(p.grad is None for p in model.parameters())


def test_frozen_model_still_scores(make_tiny: Callable[..., SemGradScorer]) -> None:
    scorer = make_tiny()
    expected = scorer.score("Hi?", "Hello")
    scorer.model.requires_grad_(False)
    assert scorer.score("Hi?", "Hello").semgrad == pytest.approx(expected.semgrad, rel=1e-6)


def test_model_left_clean_after_failure(make_tiny: Callable[..., SemGradScorer], monkeypatch: Any) -> None:
    scorer = make_tiny()
    model = scorer.model
    model.train()
    before = snapshot(model)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(model.model.layers[-1], "forward", broken)
    with pytest.raises(RuntimeError, match="boom"):
        scorer.score("Hi?", "Hello")
    assert snapshot(model) == before


def test_scoring_inside_inference_mode(make_tiny: Callable[..., SemGradScorer]) -> None:
    scorer = make_tiny()
    expected = scorer.score("Hi?", "Hello")
    with torch.inference_mode():
        got = scorer.score("Hi?", "Hello")
    assert got.semgrad == pytest.approx(expected.semgrad, rel=1e-6)
