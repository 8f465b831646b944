"""SemGradCallbackHandler bookkeeping on a fake chat model and a fake scorer."""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any
from uuid import uuid4

import pytest
from langchain_core.language_models.fake import FakeListLLM
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGeneration, Generation, LLMResult
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_semgrad import AsyncSemGradCallbackHandler, ScoredRun, SemGradCallbackHandler

from semgrad_guard import Score
from semgrad_guard.prompts import Prompt

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
    handler = SemGradCallbackHandler(scorer, on_score=seen.append, threshold=1e-3)
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
    handler = AsyncSemGradCallbackHandler(scorer, on_score=hook, threshold=1e-3)
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


def _words(prompt: Prompt) -> int:
    """A stand-in for the prompt's token count: its words, over every message."""
    texts = [prompt] if isinstance(prompt, str) else [m["content"] for m in prompt]
    return sum(len(text.split()) for text in texts)


async def _call(result: Any) -> None:
    if inspect.isawaitable(result):
        await result


@pytest.mark.asyncio
@pytest.mark.parametrize("handler_class", [SemGradCallbackHandler, AsyncSemGradCallbackHandler])
@pytest.mark.parametrize("end_order", ["last_started_first", "first_started_first"])
@pytest.mark.parametrize("kind", ["chat", "text"])
async def test_runs_ending_out_of_order_keep_their_own_prompt(
    make_scorer, handler_class, end_order, kind
) -> None:
    """Start A, start B, then end them in either order: each answer is scored with its own run's prompt."""

    class PromptSizedScorer(make_scorer):  # type: ignore[misc,valid-type]
        def score(self, prompt: Prompt, answer: str, *, errors: Any = "raise") -> Score:
            self.calls.append((prompt, answer))
            return Score(model="fake", semgrad=float(_words(prompt)), n_prompt_tokens=_words(prompt))

    scorer = PromptSizedScorer()
    handler = handler_class(scorer)
    questions = {"a": "What is the capital of France?", "b": "Name one planet of the solar system, please."}
    prompts: dict[str, Prompt] = {}
    run_ids = {name: uuid4() for name in questions}
    for name, question in questions.items():
        if kind == "chat":
            messages = [SystemMessage(f"system for {name}"), HumanMessage(question)]
            prompts[name] = [
                {"role": "system", "content": f"system for {name}"},
                {"role": "user", "content": question},
            ]
            await _call(handler.on_chat_model_start({}, [messages], run_id=run_ids[name]))
        else:
            prompts[name] = f"Human: {question}"
            await _call(handler.on_llm_start({}, [prompts[name]], run_id=run_ids[name]))
    assert handler.in_flight == 2 and _words(prompts["a"]) != _words(prompts["b"])
    ends = ["b", "a"] if end_order == "last_started_first" else ["a", "b"]
    for name in ends:
        answer = f"answer to {name}"
        generation = ChatGeneration(message=AIMessage(answer)) if kind == "chat" else Generation(text=answer)
        await _call(handler.on_llm_end(LLMResult(generations=[[generation]]), run_id=run_ids[name]))

    assert handler.in_flight == 0
    assert scorer.calls == [(prompts[name], f"answer to {name}") for name in ends]
    assert [r.run_id for r in handler.results] == [run_ids[name] for name in ends]
    for name in ends:
        result = handler.get(run_ids[name])
        assert result is not None and result.score is not None
        assert result.prompt == prompts[name] and result.answer == f"answer to {name}"
        assert result.score.n_prompt_tokens == _words(prompts[name])
        assert result.score == scorer.score(prompts[name], f"answer to {name}")  # scoring the pair directly


@pytest.mark.asyncio
@pytest.mark.parametrize("handler_class", [SemGradCallbackHandler, AsyncSemGradCallbackHandler])
async def test_get_finds_a_score_by_any_ancestor_run_id(chat, scorer, handler_class) -> None:
    handler = handler_class(scorer, threshold=1e-3)
    inner = RunnableLambda(lambda question: f"{question}?") | chat
    chain = RunnableLambda(lambda question: question) | RunnableLambda(lambda q: inner.invoke(q))
    chain_id, other_id = uuid4(), uuid4()
    await chain.ainvoke("q", {"callbacks": [handler], "run_id": chain_id})
    chain.invoke("p", {"callbacks": [handler], "run_id": other_id})
    first, second = handler.results
    assert handler.get(chain_id) == first and first.answer == "sure: q?"
    assert handler.get(other_id) == second and second.answer == "sure: p?"
    assert handler.get(first.run_id) == first and handler.get(uuid4()) is None


def test_get_by_ancestor_returns_the_last_model_call_below_it(scorer) -> None:
    handler = SemGradCallbackHandler(scorer)
    llm = FakeListLLM(responses=["one", "two"])
    chain = RunnableLambda(lambda q: llm.invoke(q)) | RunnableLambda(lambda a: llm.invoke(a))
    chain_id = uuid4()
    chain.invoke("q", {"callbacks": [handler], "run_id": chain_id})
    result = handler.get(chain_id)
    assert result is not None and (result.prompt, result.answer) == ("one", "two")


@pytest.mark.asyncio
@pytest.mark.parametrize("handler_class", [SemGradCallbackHandler, AsyncSemGradCallbackHandler])
async def test_tool_call_steps_are_skipped_without_a_warning(scorer, handler_class, caplog) -> None:
    from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel

    tool_call = AIMessage("", tool_calls=[{"name": "search", "args": {"q": "x"}, "id": "call-1"}])
    agent_step = FakeMessagesListChatModel(responses=[tool_call, AIMessage("It is x.")])
    handler = handler_class(scorer)
    with caplog.at_level(logging.DEBUG, logger="langchain_semgrad.callbacks"):
        await agent_step.ainvoke("q", {"callbacks": [handler]})
        await agent_step.ainvoke("q", {"callbacks": [handler]})
    assert [r.answer for r in handler.results] == ["It is x."] and handler.in_flight == 0
    assert scorer.calls == [([{"role": "user", "content": "q"}], "It is x.")]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
