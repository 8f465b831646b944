"""Property tests of the scorer: any prompt and answer give a Score or a typed error naming a reason; text
the model cannot score never gets a number; user text never becomes a control token of the template."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from semgrad_guard import InvalidInputError, Score, SemGradError, SemGradScorer, errors
from semgrad_guard.prompts import _is_blank
from tests.reliability.strategies import answers, hostile_text, long_text, prompts

CODES = {getattr(errors, name).code for name in errors.__all__}
GOOD = ("What is 2 plus 2?", "4")


def check_invalid(score: Score) -> str:
    """The code an invalid Score names (one of the error tree's); an invalid Score has no numbers."""
    assert not score.valid and score.semgrad is None and score.nll is None
    assert score.invalid_reason, "an invalid score must say why"
    code = score.invalid_reason.split(":", 1)[0]
    assert code in CODES, score.invalid_reason
    return code


def check_valid(score: Score, answer: Any) -> None:
    """A number only for a scorable answer: real text, within the bound, every field finite."""
    assert score.valid and score.is_finite(), score
    assert isinstance(answer, str) and not _is_blank(answer)
    assert score.n_answer_tokens is not None and score.n_answer_tokens >= 2  # some text + end-of-turn


def outcome(scorer: SemGradScorer, prompt: Any, answer: Any) -> str:
    """Score the pair marked, beside a good pair, sync and async; the code, or "scored"."""
    marked, good = scorer.score_batch([(prompt, answer), GOOD], errors="mark")
    assert good.valid, "one bad pair must not sink the others of its batch"
    again, _ = asyncio.run(scorer.ascore_batch([(prompt, answer), GOOD], errors="mark"))
    assert (again.valid, again.invalid_reason, again.semgrad) == (
        marked.valid,
        marked.invalid_reason,
        marked.semgrad,
    )
    code = "scored" if marked.valid else check_invalid(marked)
    if marked.valid:
        check_valid(marked, answer)
    event(code)  # the share of each outcome: pytest --hypothesis-show-statistics
    return code


@given(prompt=prompts, answer=answers)
def test_any_pair_is_a_score_or_an_invalid_with_its_reason(
    rel_scorer: SemGradScorer, prompt: Any, answer: Any
) -> None:
    code = outcome(rel_scorer, prompt, answer)
    if isinstance(answer, str) and len(answer) > (rel_scorer._ready()[1].max_chars or 0):
        assert code == "too_long"  # refused before the tokenizer reads it
    try:
        raised = rel_scorer.score(prompt, answer)
    except SemGradError as exc:  # errors="raise": the same verdict, as a typed error
        assert isinstance(exc, InvalidInputError) and exc.code == code
    else:
        assert code == "scored" and raised.valid


@given(prompt=st.one_of(hostile_text, st.just(GOOD[0])), answer=st.one_of(hostile_text, long_text))
def test_text_answers_never_crash_and_blank_ones_are_refused(
    rel_scorer: SemGradScorer, prompt: str, answer: str
) -> None:
    code = outcome(rel_scorer, prompt, answer)
    if _is_blank(answer):  # refused as empty, or as too long before anything was tokenized
        assert code in ("empty_answer", "too_long")


@pytest.mark.parametrize("where", ["answer", "message"])
@given(text=hostile_text)
def test_text_never_becomes_a_control_token(rel_scorer: SemGradScorer, where: str, text: str) -> None:
    tokenizer, chat = rel_scorer.tokenizer, rel_scorer._ready()[1]
    control = set(tokenizer.added_tokens_decoder)  # ids of <|im_start|>, <|im_end|>, <repo_name>, ...
    try:
        if where == "answer":
            ids = chat.encode_answer(text)
            assert not control & set(ids[:-1]) and ids[-1] == chat.end_of_turn_id
            return
        hostile = chat.encode_prompt([{"role": "user", "content": text}])
    except InvalidInputError:
        return  # blank or not Unicode: refused, nothing was tokenized
    plain = chat.encode_prompt([{"role": "user", "content": "x"}])
    assert [t for t in hostile if t in control] == [t for t in plain if t in control]


@given(prompt=prompts, answer=answers)
def test_a_model_that_gives_nan_never_gives_a_number(
    nan_scorer: SemGradScorer, prompt: Any, answer: Any
) -> None:
    (marked,) = nan_scorer.score_batch([(prompt, answer)], errors="mark")
    code = check_invalid(marked)
    with pytest.raises(SemGradError) as raised:
        nan_scorer.score(prompt, answer)
    assert raised.value.code == code
    if isinstance(answer, str) and isinstance(prompt, str) and code != "non_finite":
        assert isinstance(raised.value, InvalidInputError)  # refused as input before any pass
