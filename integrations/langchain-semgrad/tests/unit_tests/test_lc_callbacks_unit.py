"""SemGradCallbackHandler bookkeeping on a fake chat model and a fake scorer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.language_models.fake import FakeListLLM
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_semgrad import AsyncSemGradCallbackHandler, ScoredRun, SemGradCallbackHandler

QUESTIONS = [f"question {i} {'hard' if i % 2 else 'easy'}" for i in range(8)]


def check_pairs(results: list[ScoredRun]) -> None:
    """Each result pairs a prompt with the answer to that very prompt, however the runs interleaved."""
    for result in results:
        assert isinstance(result.prompt, list)
        question = result.prompt[-1]["content"]
        assert result.answer.endswith(question) and result.score is not None
        assert result.low_confidence == ("unsure" in result.answer)


def test_concurrent_runs_stay_apart_and_leave_nothing(chat, scorer) -> None:
    seen: list[ScoredRun] = []
    handler = SemGradCallbackHandler(scorer, on_score=seen.append, threshold=0.5)
    answers = chat.batch(QUESTIONS, {"callbacks": [handler], "max_concurrency": 8})
    assert len(handler.results) == len(seen) == 8 and handler.in_flight == 0
    check_pairs(handler.results)
    by_answer = {r.answer: r for r in handler.results}
    assert sorted(by_answer) == sorted(a.content for a in answers)
    assert handler.get(seen[0].run_id) == seen[0]


@pytest.mark.asyncio
async def test_async_handler_under_gather(chat, scorer) -> None:
    async def hook(result: ScoredRun) -> None:
        await asyncio.sleep(0)
        hooked.append(result)

    hooked: list[ScoredRun] = []
    handler = AsyncSemGradCallbackHandler(scorer, on_score=hook, threshold=0.5)
    await asyncio.gather(*(chat.ainvoke(q, {"callbacks": [handler]}) for q in QUESTIONS))
    assert len(hooked) == 8 and handler.in_flight == 0
    check_pairs(handler.results)


def test_errors_leave_no_state_and_are_recorded(chat, make_scorer) -> None:
    handler = SemGradCallbackHandler(make_scorer(error=RuntimeError("scorer bug")))
    failing = type(chat)(fail=True)
    with pytest.raises(RuntimeError, match="model failed"):
        failing.invoke("q", {"callbacks": [handler]})
    assert handler.in_flight == 0 and handler.results == []
    chat.invoke("q", {"callbacks": [handler]})  # the scorer fails: recorded, the call still succeeds
    (result,) = handler.results
    assert result.score is None and "scorer bug" in (result.error or "") and handler.in_flight == 0


def test_hook_errors_never_break_the_chain(chat, scorer) -> None:
    def broken(result: ScoredRun) -> None:
        raise ValueError("hook bug")

    handler = SemGradCallbackHandler(scorer, on_score=broken)
    assert chat.invoke("q", {"callbacks": [handler]}).content == "sure: q"
    assert len(handler.results) == 1


def test_keeps_only_the_last_n(chat, scorer) -> None:
    handler = SemGradCallbackHandler(scorer, max_results=3)
    chat.batch(QUESTIONS, {"callbacks": [handler]})
    assert len(handler.results) == 3


def test_text_llm_and_custom_event_inside_a_chain(scorer) -> None:
    events: list[tuple[str, Any]] = []

    class Sink(SemGradCallbackHandler):
        def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
            events.append((name, data))

    handler = Sink(scorer)
    llm = FakeListLLM(responses=["Paris"])
    chain = ChatPromptTemplate.from_template("Capital of {country}?") | llm | StrOutputParser()
    assert chain.invoke({"country": "France"}, {"callbacks": [handler]}) == "Paris"
    (result,) = handler.results
    assert result.prompt == "Human: Capital of France?" and result.answer == "Paris"
    assert [name for name, _ in events] == ["semgrad_score"] and events[0][1]["answer"] == "Paris"
    RunnableLambda(lambda _: llm.invoke("x")).invoke(None, {"callbacks": [handler]})
    assert len(events) == 2


def test_rejects_an_empty_history(scorer) -> None:
    with pytest.raises(ValueError, match="max_results"):
        SemGradCallbackHandler(scorer, max_results=0)


@pytest.mark.asyncio
@pytest.mark.parametrize("handler_class", [SemGradCallbackHandler, AsyncSemGradCallbackHandler])
async def test_score_event_reaches_astream_events(chat, scorer, handler_class) -> None:
    handler = handler_class(scorer)
    chain = RunnableLambda(lambda question: question) | chat
    events = [e async for e in chain.astream_events("q", {"callbacks": [handler]}, version="v2")]
    custom = [e for e in events if e["event"] == "on_custom_event"]
    assert [e["name"] for e in custom] == ["semgrad_score"] and custom[0]["data"][
        "answer"
    ].strip() == "sure: q"
    assert handler.in_flight == 0
