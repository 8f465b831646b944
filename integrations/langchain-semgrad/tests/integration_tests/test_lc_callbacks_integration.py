"""Callback handlers observing the real local chat model and text LLM, under concurrency."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_semgrad import AsyncSemGradCallbackHandler, ScoredRun, SemGradCallbackHandler

# The same pair scored in passes of other shapes differs by float32 summation order: up to 1e-3
# relative between two float32 runs (measured drift, docs/method.md "Precision").
FLOAT32_DRIFT = 1e-3

pytestmark = pytest.mark.slow

QUESTIONS = ["What is the capital of Italy?", "Name a kind of tree.", "What is 3 + 4?"]


def check(handler: SemGradCallbackHandler | AsyncSemGradCallbackHandler, answers: list[str], scorer) -> None:
    results = handler.results
    assert handler.in_flight == 0 and len(results) == len(QUESTIONS)
    by_question = {r.prompt[-1]["content"]: r for r in results if isinstance(r.prompt, list)}
    for question, answer in zip(QUESTIONS, answers, strict=True):
        result = by_question[question]
        assert result.answer == answer and result.score is not None and handler.get(result.run_id) == result
        assert result.score.semgrad == pytest.approx(
            scorer.score(question, answer).semgrad, rel=FLOAT32_DRIFT
        )


def test_sync_handler_under_concurrent_batch(chat, scorer) -> None:
    hooked: list[ScoredRun] = []
    handler = SemGradCallbackHandler(on_score=hooked.append)
    answers = chat.batch(QUESTIONS, {"callbacks": [handler], "max_concurrency": 3})
    check(handler, [a.text for a in answers], scorer)
    assert len(hooked) == 3
    with pytest.raises(ValueError, match="HumanMessage"):  # ChatHuggingFace rejects this prompt mid-run
        chat.invoke([HumanMessage("hi"), AIMessage("hello")], {"callbacks": [handler]})
    assert handler.in_flight == 0 and len(handler.results) == 3


@pytest.mark.asyncio
async def test_async_handler_under_gather(chat, scorer) -> None:
    handler = AsyncSemGradCallbackHandler()
    answers = await asyncio.gather(*(chat.ainvoke(q, {"callbacks": [handler]}) for q in QUESTIONS))
    check(handler, [a.text for a in answers], scorer)


def test_text_llm_is_scored_as_one_user_turn(chat) -> None:
    handler = SemGradCallbackHandler()
    answer = chat.llm.invoke("The capital of Spain is", {"callbacks": [handler]})
    (result,) = handler.results
    assert result.prompt == "The capital of Spain is" and result.answer == answer and result.score is not None
