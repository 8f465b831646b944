"""The Semantic Preservation Score: the metric, the chosen position, a planted signal, caching and the CLI."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from semgrad_guard import ModelProfile, SemGradScorer
from semgrad_guard.cli import main
from semgrad_guard.evaluation.datasets import QAItem, qa_prompt
from semgrad_guard.prompts import ChatFormat
from semgrad_guard.sps import (
    SPSResult,
    compute_sps,
    layer_bands,
    load_default_items,
    preservation_scores,
    template_tail_length,
)

SMOLLM2_TAIL = ["<|im_end|>", "Ċ", "<|im_start|>", "ass", "istant", "Ċ"]


def items(count: int = 6, paraphrases: int = 3) -> list[QAItem]:
    """Questions of very different lengths, each with word-order paraphrases."""
    words = ["water", "iron", "light", "sound", "heat", "salt", "gold", "air"]
    out = []
    for i in range(count):
        padding = " very" * (7 * i)  # question i is 7*i tokens longer than question 0
        topic = words[i % len(words)]
        out.append(
            QAItem(
                question=f"What is the{padding} {topic} number {i}?",
                answers=["x"],
                paraphrases=[
                    f"Tell me the{padding} {topic} number {i}, version {j}?" for j in range(paraphrases)
                ],
            )
        )
    return out


def hooks(model: Any) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@contextmanager
def planted(
    model: Any, tokenizer: Any, qa: list[QAItem], offset: int, state: int, seed: int = 0
) -> Iterator[None]:
    """Make hidden state ``state`` at ``offset`` depend only on the question (paraphrases coincide there).

    The planted value is swapped back before the next layer reads it, so no other state changes.
    """
    chat = ChatFormat(tokenizer)
    question_of = {
        tuple(chat.encode_prompt(qa_prompt(text))): q
        for q, item in enumerate(qa)
        for text in [item.question, *item.paraphrases]
    }
    generator = torch.Generator().manual_seed(seed)
    signal = 10 * torch.randn(len(qa), model.config.hidden_size, generator=generator)
    seen: dict[str, Any] = {}

    def remember(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        seen["ids"], seen["mask"] = kwargs["input_ids"], kwargs["attention_mask"]

    def plant(module: Any, args: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        seen["original"] = hidden
        hidden = hidden.clone()
        for row, length in enumerate(seen["mask"].sum(1).tolist()):
            question = question_of[tuple(seen["ids"][row, :length].tolist())]
            hidden[row, length + offset] = signal[question]
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def restore(module: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        if args:
            return (seen["original"], *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": seen["original"]}

    layers = model.model.layers
    handles = [
        model.register_forward_pre_hook(remember, with_kwargs=True),
        layers[state - 1].register_forward_hook(plant),
        layers[state].register_forward_pre_hook(restore, with_kwargs=True),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def test_score_is_not_fooled_by_anisotropy() -> None:
    generator = torch.Generator().manual_seed(0)
    shared = 100 * torch.randn(64, generator=generator)  # every state points the same way
    questions = torch.randn(10, 64, generator=generator)
    source = torch.arange(10).repeat_interleave(5) * 5  # rows 0, 5, 10, ... are the questions
    noise = 0.1 * torch.randn(50, 64, generator=generator)
    # Paraphrases near their question: high SPS although raw cosines are all about 1.
    structured = shared + questions.repeat_interleave(5, 0) + noise
    assert torch.nn.functional.cosine_similarity(structured[1], structured[7], dim=0) > 0.99
    sps, retrieval = preservation_scores(structured, source)
    assert sps > 0.8 and retrieval == 1.0
    # No paraphrase structure at all, same anisotropy: SPS about 0.
    unstructured = shared + torch.randn(50, 64, generator=generator)
    sps, retrieval = preservation_scores(unstructured, source)
    assert abs(float(sps)) < 0.1 and retrieval < 0.5
    # A state identical for every prompt (a template token's embedding) scores exactly 0.
    sps, _ = preservation_scores(shared.repeat(50, 1), source)
    assert float(sps) == 0.0


def test_layer_bands_cover_the_last_half() -> None:
    assert layer_bands(30) == [(0, 14), (7, 21), (14, 28), (15, 29)]
    assert layer_bands(4) == [(0, 1), (1, 2), (2, 3)]
    assert layer_bands(4, 1) == [(0, 0), (1, 1), (2, 2), (3, 3)]


def test_chosen_position_is_a_prompt_position(make_tiny: Callable[..., SemGradScorer]) -> None:
    scorer = make_tiny()
    model, tokenizer = scorer.model, scorer.tokenizer
    before = (model.training, hooks(model))
    result = compute_sps(model, tokenizer, items(), name="tiny")
    assert (model.training, hooks(model)) == before
    assert template_tail_length(tokenizer) == 6
    assert result.offsets == list(range(-8, 0))  # the template tail and two question tokens
    assert result.tokens[2:] == SMOLLM2_TAIL and result.template == [False] * 2 + [True] * 6
    shortest = min(len(ChatFormat(tokenizer).encode_prompt(qa_prompt(i.question))) for i in items())
    assert result.profile.offset in result.offsets and -result.profile.offset <= shortest
    index = result.offsets.index(result.profile.offset)
    assert result.profile.anchor == (result.tokens[index] if result.template[index] else None)
    assert result.profile.source == "sps" and result.profile.layers
    assert len(result.sps) == 8 and len(result.sps[0]) == 4 and result.n_prompts == 24


@pytest.mark.parametrize(("offset", "state"), [(-3, 2), (-5, 1), (-8, 3)])
def test_planted_signal_is_found(make_tiny: Callable[..., SemGradScorer], offset: int, state: int) -> None:
    scorer = make_tiny()
    model, tokenizer, qa = scorer.model, scorer.tokenizer, items()
    with planted(model, tokenizer, qa, offset, state):
        result = compute_sps(model, tokenizer, qa, band_width=1, batch_size=4)
    assert (result.profile.offset, result.profile.layers) == (offset, (state,))
    assert result.sps[result.offsets.index(offset)][state] > 0.95
    if offset == -8:  # a question token: no anchor, and the result says so
        assert result.profile.anchor is None and "question token" in result.warnings[0]
    else:
        assert result.profile.anchor == SMOLLM2_TAIL[offset] and not result.warnings


def test_position_is_invariant_to_question_length(make_tiny: Callable[..., SemGradScorer]) -> None:
    scorer = make_tiny()
    model, tokenizer = scorer.model, scorer.tokenizer
    # Rows of very different lengths share a padded batch, or run one by one: the same states are read.
    batched = compute_sps(model, tokenizer, items(), batch_size=24)
    alone = compute_sps(model, tokenizer, items(), batch_size=1)
    assert torch.allclose(torch.tensor(batched.sps), torch.tensor(alone.sps), atol=1e-5)
    # A planted signal is found at the same offset whether the questions are short or long.
    longer = [
        QAItem(
            question="Background first. " * 20 + item.question,
            answers=item.answers,
            paraphrases=["Background first. " * 20 + p for p in item.paraphrases],
        )
        for item in items()
    ]
    for qa in (items(), longer):
        with planted(model, tokenizer, qa, -4, 2):
            result = compute_sps(model, tokenizer, qa, band_width=1)
        assert (result.profile.offset, result.profile.layers, result.profile.anchor) == (
            -4,
            (2,),
            "<|im_start|>",
        )
        assert result.tokens[2:] == SMOLLM2_TAIL


def test_profile_checked_on_real_prompt_shapes(make_tiny: Callable[..., SemGradScorer]) -> None:
    scorer = make_tiny()
    with planted(scorer.model, scorer.tokenizer, items(), -4, 2):
        result = compute_sps(scorer.model, scorer.tokenizer, items(), band_width=1)
    assert set(result.probes) == {
        "plain",
        "system message",
        "RAG context in the user turn",
        "multi-turn history",
    }
    assert set(result.probes.values()) == {"<|im_start|>"} and not result.warnings
    # A template whose assistant header differs after a system message cannot keep the position: say so.
    tokenizer = copy.deepcopy(scorer.tokenizer)
    header = "{{ '<|im_start|>assistant\n' }}"
    assert header in tokenizer.chat_template
    tokenizer.chat_template = tokenizer.chat_template.replace(
        header,
        "{% if messages[0]['role'] == 'system' %}{{ '<|im_start|>assistant x\n' }}{% else %}"
        + header
        + "{% endif %}",
    )
    with planted(scorer.model, tokenizer, items(), -4, 2):
        moved = compute_sps(scorer.model, tokenizer, items(), band_width=1)
    assert moved.probes["system message"] != "<|im_start|>"
    assert any("system message" in w and "cannot hold" in w for w in moved.warnings)


def test_shipped_default_set() -> None:
    default = load_default_items()
    assert len(default) == 40 and all(len(item.paraphrases) >= 2 for item in default)


def test_auto_profile_is_computed_once_and_cached(
    make_tiny: Callable[..., SemGradScorer], tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("SEMGRAD_GUARD_CACHE", str(tmp_path))
    scorer = make_tiny(profile="auto")
    profile = scorer.profile
    assert profile.source == "sps"
    (cached,) = (tmp_path / "profiles").glob("tiny-*.json")
    assert SPSResult.load(cached).profile.offset == profile.offset
    assert scorer.score("Hi?", "Hello").profile == profile

    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the cached profile should have been reused")

    monkeypatch.setattr("semgrad_guard.sps.compute_sps", fail)
    again = SemGradScorer((scorer.model, scorer.tokenizer), name="tiny", profile="auto")
    assert again.profile == profile


def test_cli_profile_writes_a_profile_the_scorer_uses(tiny_dir: Path, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "profile.json"
    assert main(["profile", "--model", str(tiny_dir), "--out", str(out), "--limit", "6"]) == 0
    printed = capsys.readouterr()
    assert "| offset | token |" in printed.out and "SPS forward passes" in printed.err
    result = json.loads(out.read_text())
    assert result["n_questions"] == 6 and result["data"] == "sps_default.jsonl"
    profile = ModelProfile.load(out)
    assert profile.source == "sps"
    scorer = SemGradScorer(str(tiny_dir), profile=out, device="cpu")
    assert scorer.score("Hi?", "Hello").profile == profile


def test_cli_profile_reports_unusable_data(tiny_dir: Path, tmp_path: Path, capsys: Any) -> None:
    data = tmp_path / "one.jsonl"
    data.write_text(items(1)[0].model_dump_json() + "\n")
    out = tmp_path / "profile.json"
    assert main(["profile", "--model", str(tiny_dir), "--data", str(data), "--out", str(out)]) == 2
    assert "at least two questions" in capsys.readouterr().err and not out.exists()
