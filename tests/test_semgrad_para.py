"""Paraphrase directions and semgrad_para: the fit, the file, the estimator, the scorer and the pass."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from semgrad_guard import ModelProfile, SemGradScorer
from semgrad_guard.cli import main
from semgrad_guard.directions import (
    ParaphraseDirections,
    paraphrase_differences,
    principal_directions,
    profile_directions,
)
from semgrad_guard.estimators import semgrad, semgrad_para
from semgrad_guard.evaluation.datasets import QAItem
from semgrad_guard.model_parts import num_layers
from semgrad_guard.sps import compute_sps, fit_directions
from semgrad_guard.statistics import PassStatistics, gradient_statistics
from tests._tolerances import EXACT

PAIRS = [
    ("What is the capital of France?", "Paris"),
    ("Which gas do plants absorb from the air?", "Carbon dioxide, mostly through the stomata."),
    (
        "Context: "
        + " ".join(f"Fact {i}: river {i} flows north." for i in range(12))
        + "\nWhere does river 5 go?",
        "North.",
    ),
]


def items(count: int = 6) -> list[QAItem]:
    topics = ["water", "iron", "light", "sound", "heat", "salt"]
    return [
        QAItem(
            question=f"What is the {' very' * i} {topics[i]} number {i}?",
            answers=["x"],
            paraphrases=[f"Tell me the {' very' * i} {topics[i]} number {i}, version {j}?" for j in range(3)],
        )
        for i in range(count)
    ]


def orthonormal(directions: torch.Tensor, atol: float) -> None:
    gram = directions @ directions.transpose(-1, -2)
    torch.testing.assert_close(
        gram, torch.eye(directions.shape[1]).expand_as(gram).double(), rtol=0, atol=atol
    )


def test_principal_directions_recover_the_paraphrase_subspace() -> None:
    generator = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(16, 2, generator=generator, dtype=torch.float64))[0].T  # (2, 16)
    questions = torch.randn(5, 3, 16, generator=generator, dtype=torch.float64)  # 5 questions, 3 layers
    rows, source = [], []
    for q in range(5):
        source += [len(rows)] * 4
        rows.append(questions[q])
        for _ in range(3):  # paraphrases move only inside the span of `basis`
            rows.append(questions[q] + torch.randn(3, 2, generator=generator, dtype=torch.float64) @ basis)
    states = torch.stack(rows)  # (20, 3, 16)
    differences = paraphrase_differences(states, source)
    assert differences.shape == (15, 3, 16)
    vectors, singular, energy = principal_directions(differences, 2)
    orthonormal(vectors, 1e-12)
    for layer in range(3):  # the same plane: projecting the basis onto the directions keeps all of it
        torch.testing.assert_close((basis @ vectors[layer].T).norm(dim=1), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close((singular**2).sum(-1), energy)  # all the movement is inside
    capped, _, _ = principal_directions(differences, 100)
    assert capped.shape == (3, 15, 16)  # k is capped at the number of differences


def test_fitted_directions_are_orthonormal_and_round_trip(
    make_tiny: Callable[..., SemGradScorer], tmp_path: Path
) -> None:
    scorer = make_tiny()
    model, before = scorer.model, scorer.model.training
    fitted = fit_directions(model, scorer.tokenizer, scorer.profile, items(), k=4, name="tiny")
    assert model.training == before
    assert fitted.vectors.shape == (2, 4, 32) and fitted.layers == (2, 3) and fitted.offset == -4
    assert (fitted.n_questions, fitted.n_differences, fitted.k) == (6, 18, 4)
    orthonormal(fitted.vectors, 1e-12)
    assert ((fitted.explained > 0) & (fitted.explained <= 1 + 1e-12)).all()
    path = tmp_path / "d.directions.safetensors"
    fitted.save(path)
    loaded = ParaphraseDirections.load(path)
    orthonormal(loaded.vectors, 1e-6)
    torch.testing.assert_close(loaded.vectors, fitted.vectors, rtol=0, atol=1e-6)
    torch.testing.assert_close(loaded.singular_values, fitted.singular_values, rtol=1e-6, atol=0)
    assert (loaded.layers, loaded.offset, loaded.model, loaded.n_questions, loaded.n_differences) == (
        fitted.layers,
        fitted.offset,
        "tiny",
        6,
        18,
    )
    assert loaded.data == fitted.data == "user items"
    # A profile whose anchor is not at its offset in these prompts cannot get directions.
    with pytest.raises(ValueError, match="lands on"):
        fit_directions(model, scorer.tokenizer, scorer.profile.model_copy(update={"offset": -3}), items())


def test_projection_equals_a_hand_computation() -> None:
    generator = torch.Generator().manual_seed(1)
    grads = torch.randn(2, 6, generator=generator, dtype=torch.float64)  # 2 layers, hidden 6
    directions = torch.linalg.qr(torch.randn(2, 6, 3, generator=generator, dtype=torch.float64))[0]
    directions = directions.transpose(1, 2)  # (2 layers, 3 directions, 6)
    stats = PassStatistics(
        token_nll=torch.ones(2),
        token_entropy=torch.ones(2),
        hidden_grad=grads.abs().mean(-1),
        output_grad=0.0,
        output_grad_ce=0.0,
        hidden_grad_vectors=grads,
    )
    by_hand = 0.0
    for layer in range(2):
        squares = 0.0
        for j in range(3):
            dot = sum(float(directions[layer, j, i] * grads[layer, i]) for i in range(6))
            squares += dot * dot
        by_hand += squares**0.5 / 2
    assert semgrad_para(stats, directions) == pytest.approx(by_hand, rel=1e-12)
    with pytest.raises(ValueError, match="do not fit"):
        semgrad_para(stats, directions[:1])


def test_full_basis_gives_the_full_gradient_norm(make_tiny: Callable[..., SemGradScorer]) -> None:
    scorer = make_tiny()
    model = scorer.model
    pairs = [scorer._encode(prompt, answer) for prompt, answer in PAIRS[:2]]
    stats = gradient_statistics(model, pairs, scorer.profile.layers, num_layers(model))
    generator = torch.Generator().manual_seed(2)
    rotation = torch.linalg.qr(torch.randn(2, 32, 32, generator=generator, dtype=torch.float64))[0]
    for stat in stats:
        assert stat.hidden_grad_vectors.shape == (2, 32) and stat.hidden_grad_vectors.dtype == torch.float64
        full = float(stat.hidden_grad_vectors.norm(dim=-1).mean())
        assert semgrad_para(stat, rotation) == pytest.approx(full, rel=1e-10)
        assert semgrad_para(stat, torch.eye(32).expand(2, 32, 32)) == pytest.approx(full, rel=1e-10)
        # The vectors are the gradients SemGrad averages: their mean |.| is semgrad.
        assert float(stat.hidden_grad_vectors.abs().mean()) == pytest.approx(semgrad(stat), rel=1e-5)


@pytest.mark.parametrize("tied", [True, False])
def test_fast_and_naive_agree_on_gradient_vectors(
    make_tiny: Callable[..., SemGradScorer], tied: bool
) -> None:
    scorer = make_tiny(tied=tied, dtype=torch.float64)
    model = scorer.model
    pairs = [scorer._encode(prompt, answer) for prompt, answer in PAIRS]
    for layers in (scorer.profile.layers, (0, 2, 3)):
        with torch.no_grad():
            fast = gradient_statistics(model, pairs, layers, num_layers(model), "fast")
        naive = gradient_statistics(model, pairs, layers, num_layers(model), "naive")
        for a, b in zip(fast, naive, strict=True):
            difference = (a.hidden_grad_vectors - b.hidden_grad_vectors).norm(dim=-1)
            assert (difference <= EXACT * b.hidden_grad_vectors.norm(dim=-1)).all()


@pytest.mark.slow
def test_embedded_fast_and_naive_agree_on_gradient_vectors(embedded64: SemGradScorer) -> None:
    model, layers = embedded64.model, embedded64.profile.layers
    pairs = [embedded64._encode(prompt, answer) for prompt, answer in PAIRS]
    fast = gradient_statistics(model, pairs, layers, num_layers(model), "fast")
    naive = gradient_statistics(model, pairs, layers, num_layers(model), "naive")
    for a, b in zip(fast, naive, strict=True):
        difference = (a.hidden_grad_vectors - b.hidden_grad_vectors).norm(dim=-1)
        assert (difference <= EXACT * b.hidden_grad_vectors.norm(dim=-1)).all()


def test_scorer_fills_semgrad_para_from_a_saved_profile(
    make_tiny: Callable[..., SemGradScorer], tmp_path: Path
) -> None:
    plain = make_tiny()
    model, tokenizer = plain.model, plain.tokenizer
    score = plain.score(*PAIRS[0])
    assert plain.profile.directions is None and plain.directions is None and score.semgrad_para is None
    with pytest.raises(ValueError, match="semgrad_para"):
        score.untrusted(threshold=0.0, field="semgrad_para")

    result = compute_sps(model, tokenizer, items(), name="tiny", directions=3)
    assert result.profile.directions is None and result.directions is not None
    path = tmp_path / "tiny.json"
    result.save(path)
    saved = json.loads(path.read_text())
    assert saved["profile"]["directions"] == "tiny.directions.safetensors" and path.stat().st_size < 20_000
    profile = ModelProfile.load(path)
    assert profile.directions == str(tmp_path / "tiny.directions.safetensors")

    scorer = SemGradScorer((model, tokenizer), name="tiny", profile=path)
    assert scorer.directions is not None and scorer.directions.shape == (len(profile.layers or ()), 3, 32)
    torch.testing.assert_close(scorer.directions, result.directions.vectors, rtol=0, atol=1e-6)
    scores = scorer.score_batch(PAIRS)
    stats = gradient_statistics(model, [scorer._encode(p, a) for p, a in PAIRS], profile.layers, 4)
    for got, stat in zip(scores, stats, strict=True):
        coordinates = torch.einsum("lkh,lh->lk", scorer.directions, stat.hidden_grad_vectors)
        assert got.semgrad_para == pytest.approx(float(coordinates.norm(dim=-1).mean()), rel=1e-5)
        assert got.semgrad_para > 0 and got.semgrad == pytest.approx(semgrad(stat), rel=1e-5)
        assert got.untrusted(threshold=got.semgrad_para / 2, field="semgrad_para") is True
    other = plain.score_batch(PAIRS)  # the other fields do not depend on the directions
    if profile.offset == plain.profile.offset and profile.layers == plain.profile.layers:
        assert [s.semgrad for s in other] == pytest.approx([s.semgrad for s in scores], rel=1e-6)

    # Directions that do not fit the profile are refused.
    moved = profile.model_copy(update={"offset": profile.offset - 1, "anchor": None})
    with pytest.raises(ValueError, match="offset"):
        SemGradScorer((model, tokenizer), name="tiny", profile=moved).load()


def test_auto_profile_keeps_its_directions(
    make_tiny: Callable[..., SemGradScorer], tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("SEMGRAD_GUARD_CACHE", str(tmp_path))
    scorer = make_tiny(profile="auto")
    assert scorer.profile.directions is not None and Path(scorer.profile.directions).is_file()
    (cached,) = (tmp_path / "profiles").glob("tiny-*.json")
    assert Path(scorer.profile.directions).parent == cached.parent
    assert not list((tmp_path / "profiles").glob("*.tmp"))
    assert scorer.score(*PAIRS[0]).semgrad_para is not None


def test_builtin_directions_for_another_model_are_skipped_with_a_warning(
    make_tiny: Callable[..., SemGradScorer], caplog: Any
) -> None:
    tiny = make_tiny()
    # The built-in SmolLM2 profile matches by name; its shipped directions belong to the 135M model.
    scorer = SemGradScorer((tiny.model, tiny.tokenizer), name="SmolLM2-tiny")
    with caplog.at_level(logging.WARNING):
        assert scorer.profile.name == "smollm2" and scorer.profile.directions is not None
    assert "not using the built-in paraphrase directions" in caplog.text
    assert scorer.directions is None and scorer.score(*PAIRS[0]).semgrad_para is None
    assert profile_directions(ModelProfile(name="x", offset=-1), 32) is None


@pytest.mark.slow
def test_embedded_model_ships_directions(embedded: SemGradScorer) -> None:
    assert embedded.profile.directions == "smollm2-135m-instruct.directions.safetensors"
    assert embedded.directions is not None and embedded.directions.shape == (15, 8, 576)
    orthonormal(embedded.directions, 1e-6)
    score = embedded.score(*PAIRS[0])
    assert score.semgrad_para is not None and score.semgrad_para > 0


def test_cli_profile_writes_directions_beside_the_profile(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    assert main(["profile", "--model", str(tiny_dir), "--out", str(out), "--limit", "6"]) == 0
    assert json.loads(out.read_text())["profile"]["directions"] == "p.directions.safetensors"
    loaded = ParaphraseDirections.load(tmp_path / "p.directions.safetensors")
    assert loaded.k == 8 and loaded.data == "sps_default.jsonl" and loaded.n_questions == 6
    score = SemGradScorer(str(tiny_dir), profile=out, device="cpu").score(*PAIRS[0])
    assert score.semgrad_para is not None and score.profile is not None
    assert score.profile.directions == str(tmp_path / "p.directions.safetensors")
