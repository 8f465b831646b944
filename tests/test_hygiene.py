"""The scorer never changes the caller's model: no hooks, grads, requires_grad or mode left behind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from semgrad_guard import SemGradScorer, model_parts, statistics
from semgrad_guard.model_parts import num_layers
from semgrad_guard.statistics import gradient_statistics


def hooks(model: Any) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )


def snapshot(model: Any) -> tuple[list[bool], list[bool], int]:
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()], hooks(model)


def mixed_modes(model: Any) -> None:
    """A caller's model in training with some submodules frozen in eval mode: each must keep its own mode."""
    model.train()
    model.model.layers[0].eval()
    model.model.norm.eval()


def test_model_left_clean_after_success(make_tiny: Callable[..., SemGradScorer]) -> None:
    scorer = make_tiny()
    model = scorer.model
    mixed_modes(model)
    for p in list(model.parameters())[:3]:
        p.requires_grad_(False)
    before = snapshot(model)
    scorer.score("Hi?", "Hello")
    scorer.generate_and_score("Hi?", max_new_tokens=3, errors="mark")  # random tokens may decode to ""
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
    mixed_modes(model)
    before = snapshot(model)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(model.model.layers[-1], "forward", broken)
    with pytest.raises(RuntimeError, match="boom"):
        scorer.score("Hi?", "Hello")
    assert snapshot(model) == before


@pytest.mark.parametrize("context", [torch.inference_mode, torch.no_grad])
def test_pass_inside_a_callers_grad_mode(make_tiny: Callable[..., SemGradScorer], context: Any) -> None:
    """The pass itself on this thread: the batcher's worker thread does not inherit a caller's grad mode."""
    scorer = make_tiny(dtype=torch.float64)
    pair = scorer._encode("Hi?", "Hello")
    layers, depth = scorer.profile.layers, num_layers(scorer.model)
    expected = gradient_statistics(scorer.model, [pair], layers, depth)
    for mode in ("fast", "naive"):
        with context():
            got = gradient_statistics(scorer.model, [pair], layers, depth, mode)  # type: ignore[arg-type]
        torch.testing.assert_close(got[0].hidden_grad, expected[0].hidden_grad, rtol=1e-9, atol=0)
    with torch.inference_mode():
        assert scorer.score("Hi?", "Hello").semgrad == pytest.approx(float(expected[0].hidden_grad.mean()))


def test_loaded_model_is_frozen_and_shared_model_is_not_changed(
    make_tiny: Callable[..., SemGradScorer], tiny_dir: Any, monkeypatch: Any
) -> None:
    """No parameter graph is built during the pass, and a shared model's flags come back as they were."""
    seen: list[bool] = []
    original = statistics._fast

    def spy(model: Any, *args: Any) -> Any:
        seen.append(any(p.requires_grad for p in model.parameters()))
        return original(model, *args)

    monkeypatch.setattr(statistics, "_fast", spy)
    loaded = SemGradScorer(str(tiny_dir), device="cpu")
    loaded.score("Hi?", "Hello")
    assert not any(p.requires_grad for p in loaded.model.parameters())
    shared = make_tiny()
    shared.score("Hi?", "Hello")
    assert seen == [False, False]
    assert all(p.requires_grad for p in shared.model.parameters())


def test_decoder_layers_found_through_get_decoder(make_tiny: Callable[..., SemGradScorer]) -> None:
    model = make_tiny().model
    # A decoy of the same length, met first when walking the modules.
    model.model.embed_tokens.decoy = torch.nn.ModuleList([torch.nn.Identity() for _ in range(4)])
    assert model_parts.decoder_layers(model, 4) is model.model.layers
