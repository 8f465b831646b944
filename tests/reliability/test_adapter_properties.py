"""Property tests of the adapters: the LlamaIndex evaluator gives an EvaluationResult (invalid with a reason
when the pair cannot be scored) or a ValueError naming the bad argument; the LangChain guard answers or
raises by its policy, and an answer it cannot score follows ``on_scorer_error`` and says so."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_semgrad import GuardResult, LowConfidenceError, SemGradGuard
from langchain_semgrad.review import ReviewQueue
from llama_index.evaluation.semgrad import SemGradEvaluator, SemGradInputError

from semgrad_guard import SemGradScorer
from semgrad_guard.prompts import _is_blank
from tests.reliability.strategies import hostile_text, junk, long_text, messages, unicode_text


def scorable_text(text: object) -> bool:
    """Text the scorer could read: a string, Unicode (no lone surrogate), not blank."""
    if not isinstance(text, str) or _is_blank(text):
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@given(
    query=st.one_of(unicode_text, hostile_text, st.none()),
    response=st.one_of(unicode_text, hostile_text, long_text, st.none()),
    contexts=st.one_of(
        st.none(), st.lists(unicode_text, max_size=3), st.lists(hostile_text), hostile_text, junk
    ),
    prompt=st.one_of(st.none(), st.just(None), messages, hostile_text),  # None twice: mostly the query
    threshold=st.sampled_from([None, 1e-3]),
)
def test_evaluator_gives_a_result_or_a_value_error(
    rel_scorer: SemGradScorer, query: Any, response: Any, contexts: Any, prompt: Any, threshold: Any
) -> None:
    field = None if threshold is None else "semgrad"
    evaluator = SemGradEvaluator(rel_scorer, threshold=threshold, threshold_field=field)
    try:
        result = evaluator.evaluate(query=query, response=response, contexts=contexts, prompt=prompt)
    except SemGradInputError as exc:
        event("SemGradInputError")
        assert str(exc)
        return
    except ValueError as exc:  # the one other refusal: no query (nor prompt), or no response
        assert "Must specify" in str(exc), f"{type(exc).__name__}: {exc}"
        assert response is None or (query is None and prompt is None)
        event("missing query or response")
        return
    event("invalid_result" if result.invalid_result else "scored")
    if result.invalid_result:
        assert result.invalid_reason and result.score is None and result.passing is None
    else:
        assert scorable_text(response) and result.score is not None and 0.0 <= result.score <= 1.0
        assert (result.passing is None) == (threshold is None)  # the tiny model has no calibration


@pytest.mark.parametrize(("query", "response"), [(5, "Paris"), ("What?", 5)])
def test_evaluator_refuses_a_query_or_response_that_is_not_text(
    rel_scorer: SemGradScorer, query: Any, response: Any
) -> None:
    with pytest.raises(ValueError) as raised:
        SemGradEvaluator(rel_scorer).evaluate(query=query, response=response)
    assert isinstance(raised.value, SemGradInputError), type(raised.value)


@pytest.fixture(scope="module")
def review_queue(tmp_path_factory: pytest.TempPathFactory) -> ReviewQueue:
    return ReviewQueue(tmp_path_factory.mktemp("review") / "queue.sqlite3")


@pytest.mark.parametrize("policy", ["annotate", "raise", "human"])
@given(
    question=unicode_text,  # lone surrogates in the question: see the test below
    answer=st.one_of(hostile_text, long_text),
    on_error=st.sampled_from(["fail_open", "fail_closed"]),
    threshold=st.sampled_from([1e-6, 1e3]),  # every answer low-confidence, or none
    use_async=st.booleans(),
)
def test_guard_follows_its_policy_and_says_why(
    rel_scorer: SemGradScorer,
    review_queue: ReviewQueue,
    policy: str,
    question: str,
    answer: str,
    on_error: str,
    threshold: float,
    use_async: bool,
) -> None:
    guard = SemGradGuard(
        FakeListChatModel(responses=[answer]),
        policy=policy,
        threshold=threshold,
        threshold_field="semgrad",
        on_scorer_error=on_error,
        scorer=rel_scorer,
        review_queue=review_queue,
    )
    try:
        output = asyncio.run(guard.ainvoke(question)) if use_async else guard.invoke(question)
    except LowConfidenceError as exc:
        result, returned = exc.result, None
        assert policy == "raise" or result.review_error, "only the raise route (or a failed queue) raises"
    else:
        result, returned = GuardResult.model_validate(output.response_metadata["semgrad"]), output
    if result.scorer_error is not None:  # not scored: the failure policy decided, and says which
        event(f"scorer error, {on_error}")
        assert result.score is None and result.flagged
        assert result.scorer_error.endswith(f"({on_error})")
        assert result.route == ("pass" if on_error == "fail_open" else policy) or result.review_error
    else:
        event(f"scored, route {result.route}")
        assert scorable_text(answer), "an answer the scorer cannot read must never get a score"
        assert result.score is not None and result.score.valid
        assert result.route == ("pass" if result.low_confidence is False else policy) or result.review_error
    if returned is not None and result.route in ("pass", "annotate"):
        assert returned.content == answer  # passed through unchanged


@pytest.mark.parametrize("on_error", ["fail_open", "fail_closed"])
def test_guard_follows_its_policy_for_a_question_that_is_not_unicode(
    rel_scorer: SemGradScorer, on_error: str
) -> None:
    guard = SemGradGuard(
        FakeListChatModel(responses=["Paris"]), policy="annotate", on_scorer_error=on_error, scorer=rel_scorer
    )
    output = guard.invoke("What is the capital of France?\ud800")
    result = GuardResult.model_validate(output.response_metadata["semgrad"])
    assert result.scorer_error is not None and result.scorer_error.endswith(f"({on_error})")
