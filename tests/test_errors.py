"""Bad input gets a typed error, or an invalid Score when the caller asks; nothing crashes in torch."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable

import pytest
import torch

from semgrad_guard import (
    ChatTemplateError,
    EmptyAnswerError,
    InputTooLongError,
    InvalidInputError,
    ModelLoadError,
    ModelProfile,
    NonFiniteScoreError,
    ProfileMismatchError,
    SemGradScorer,
)

Make = Callable[..., SemGradScorer]


@pytest.mark.parametrize("answer", ["", "   \n\t"])
def test_empty_answer(make_tiny: Make, answer: str) -> None:
    scorer = make_tiny()
    with pytest.raises(EmptyAnswerError):
        scorer.score("Why?", answer)
    marked = scorer.score("Why?", answer, errors="mark")
    assert not marked.valid and marked.semgrad is None
    assert marked.invalid_reason is not None and marked.invalid_reason.startswith("empty_answer")


def test_non_string_answer_is_invalid_input(make_tiny: Make) -> None:
    with pytest.raises(InvalidInputError):
        make_tiny().score("Why?", 42)  # type: ignore[arg-type]


def test_too_long_for_model_context(make_tiny: Make) -> None:
    scorer = make_tiny()  # the tiny model's context is 256 tokens
    with pytest.raises(InputTooLongError, match="limit is 256"):
        scorer.score("word " * 300, "yes")


def test_too_long_for_configured_limit_marks_only_that_pair(make_tiny: Make) -> None:
    scorer = make_tiny(max_length=60)
    scores = scorer.score_batch([("Hi?", "Hello"), ("tell me " * 40, "no"), ("Hey?", "")], errors="mark")
    assert [s.valid for s in scores] == [True, False, False]
    assert scores[1].invalid_reason is not None and scores[1].invalid_reason.startswith("too_long")
    with pytest.raises(InputTooLongError):
        scorer.score_batch([("Hi?", "Hello"), ("tell me " * 40, "no")])


def test_profile_position_inside_the_question(make_tiny: Make) -> None:
    # Offset -6 lands in the question, not on the assistant header's <|im_start|>.
    profile = ModelProfile(name="wrong", offset=-6, anchor="<|im_start|>")
    with pytest.raises(ProfileMismatchError, match=re.escape("expects '<|im_start|>'")):
        make_tiny(profile=profile).score("What is the capital of France?", "Paris")


def test_offset_longer_than_prompt(tokenizer: object, make_tiny: Make) -> None:
    scorer = make_tiny(profile=ModelProfile(name="far", offset=-500))
    with pytest.raises(InvalidInputError, match="fewer than offset"):
        scorer.score("Hi?", "Hello")


def test_messages_without_chat_template(make_tiny: Make) -> None:
    scorer = make_tiny()
    scorer.tokenizer.chat_template = None
    with pytest.raises(ChatTemplateError, match="no chat template"):
        scorer.score([{"role": "user", "content": "Hi?"}], "Hello")


@pytest.mark.parametrize(
    "messages",
    [[], [{"role": "user"}], [{"role": "user", "content": 3}], [{"role": "assistant", "content": "Hello"}]],
)
def test_malformed_messages(make_tiny: Make, messages: list[dict[str, object]]) -> None:
    with pytest.raises(ChatTemplateError):
        make_tiny().score(messages, "Hello")  # type: ignore[arg-type]


def test_non_finite_values(make_tiny: Make) -> None:
    scorer = make_tiny()
    with torch.no_grad():
        scorer.model.model.layers[-1].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteScoreError):
        scorer.score("Hi?", "Hello")
    marked = scorer.score("Hi?", "Hello", errors="mark")
    assert not marked.valid and marked.invalid_reason is not None and "non_finite" in marked.invalid_reason


def test_missing_model_is_a_load_error(tmp_path: object) -> None:
    with pytest.raises(ModelLoadError):
        SemGradScorer(f"{tmp_path}/nothing-here").load()
    with pytest.raises(ModelLoadError, match="no GGUF file"):
        SemGradScorer(f"{tmp_path}/missing.gguf").load()


def test_errors_are_value_errors_for_callers_that_catch_those(make_tiny: Make) -> None:
    with pytest.raises(ValueError):
        make_tiny().score("Hi?", "")


def test_bad_config_is_rejected_before_loading() -> None:
    with pytest.raises(ValueError):
        SemGradScorer(batch_size=0)
    with pytest.raises(ValueError):
        SemGradScorer(dtype="float8")  # type: ignore[arg-type]


def test_string_prompt_without_template_uses_raw_text(make_tiny: Make) -> None:
    scorer = make_tiny(profile=ModelProfile(name="base", offset=-1))
    scorer.tokenizer.chat_template = None
    score = scorer.score("The capital of France is", "Paris")
    assert score.valid and score.position == score.n_prompt_tokens - 1  # type: ignore[operator]
    assert copy.deepcopy(score) == score
