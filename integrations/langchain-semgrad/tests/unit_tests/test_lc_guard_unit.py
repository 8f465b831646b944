"""Policy logic of SemGradGuard on a fake chat model and a fake scorer (no model, no network)."""

from __future__ import annotations

import asyncio
import logging
import sys
import types
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from langchain_core._api import LangChainBetaWarning, LangChainDeprecationWarning
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.load import dumpd, dumps, loads
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, HumanMessagePromptTemplate, PromptTemplate
from langchain_core.runnables import RunnableLambda, RunnableSequence
from langchain_semgrad import (
    GuardResult,
    LowConfidenceError,
    ReviewQueue,
    SemGradCallbackHandler,
    SemGradGuard,
)

from semgrad_guard import InputTooLongError, NoThresholdError, default_scorer, set_default_scorer

HARD, EASY = "a hard question", "an easy question"


class EventSink(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        self.events.append((name, data))


def result_of(message: AIMessage) -> GuardResult:
    return GuardResult.model_validate(message.response_metadata["semgrad"])


def retriever() -> RunnableLambda[str, list[Document]]:
    return RunnableLambda(
        lambda query: [Document(page_content=f"notes on {query}"), Document(page_content="x")]
    )


def test_policy_needs_its_runnable(chat, scorer) -> None:
    with pytest.raises(ValueError, match="retriever"):
        SemGradGuard(chat, policy="retrieve", scorer=scorer, threshold=1e-3, threshold_field="semgrad")
    with pytest.raises(ValueError, match="fallback"):
        SemGradGuard(chat, policy="fallback", scorer=scorer, threshold=1e-3, threshold_field="semgrad")


def test_without_threshold_or_calibration_first_use_fails_clearly(chat, scorer) -> None:
    guard = SemGradGuard(chat, scorer=scorer, on_scorer_error="fail_open")
    with pytest.raises(NoThresholdError, match="threshold"):
        guard.invoke(EASY)


def test_calibrated_scorer_decides_without_a_threshold(chat, make_scorer) -> None:
    guard = SemGradGuard(chat, scorer=make_scorer(calibrated=True))
    assert result_of(guard.invoke(EASY)).route == "pass"
    assert result_of(guard.invoke(HARD)).route == "annotate"
    # an explicit raw threshold takes precedence over the calibration (semgrad is 0.0 here)
    assert (
        result_of(
            SemGradGuard(
                chat, scorer=make_scorer(calibrated=True), threshold=1e-3, threshold_field="semgrad"
            ).invoke(HARD)
        ).route
        == "pass"
    )


def test_annotate_passes_confident_and_flags_unsure(chat, scorer) -> None:
    guard = SemGradGuard(chat, scorer=scorer, threshold=1e-3, threshold_field="semgrad")
    confident, unsure = guard.invoke(EASY), guard.invoke(HARD)
    assert isinstance(confident, AIMessage) and confident.content == f"sure: {EASY}"
    assert (result_of(confident).route, result_of(confident).flagged) == ("pass", False)
    assert (result_of(unsure).route, result_of(unsure).flagged) == ("annotate", True)
    assert result_of(unsure).score is not None and result_of(unsure).score.semgrad == 2e-3
    assert result_of(unsure).final_score == result_of(unsure).score


def test_string_chain_keeps_str_and_reports_through_the_event(chat, scorer) -> None:
    sink = EventSink()
    guard = SemGradGuard(chat | StrOutputParser(), scorer=scorer, threshold=1e-3, threshold_field="semgrad")
    out = guard.invoke(HARD, {"callbacks": [sink]})
    assert isinstance(out, str) and out == f"unsure about {HARD}"
    assert [name for name, _ in sink.events] == ["semgrad_guard"]
    assert sink.events[0][1]["route"] == "annotate"


def test_message_input_gives_message_output_and_scores_the_messages(chat, scorer) -> None:
    messages = [SystemMessage("Be brief."), HumanMessage(EASY)]
    out = SemGradGuard(chat, scorer=scorer, threshold=1e-3, threshold_field="semgrad").invoke(messages)
    assert isinstance(out, AIMessage)
    assert scorer.calls[-1][0] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": EASY},
    ]


def test_retrieve_only_when_unsure_and_leaves_input_alone(chat, scorer) -> None:
    template = ChatPromptTemplate.from_messages([("system", "Context: {context}"), ("human", "{question}")])
    calls: list[str] = []
    docs = RunnableLambda(lambda q: calls.append(q) or [Document(page_content="it is 42")])
    guard = SemGradGuard(
        template | chat,
        policy="retrieve",
        retriever=docs,
        scorer=scorer,
        threshold=1e-3,
        threshold_field="semgrad",
    )
    easy = {"question": EASY}
    assert result_of(guard.invoke(easy)).route == "pass" and calls == []
    hard = {"question": HARD}
    out = guard.invoke(hard)
    result = result_of(out)
    assert hard == {"question": HARD}
    assert (result.route, result.documents, result.low_confidence, result.final_low_confidence) == (
        "retrieve",
        [Document(page_content="it is 42")],
        True,
        False,
    )
    assert calls == [HARD]
    # the second answer was scored on the prompt that carried the context (rendered by the template)
    assert scorer.calls[-1][0][0] == {"role": "system", "content": "Context: it is 42"}


def test_retrieve_with_string_input_rewrites_the_question(chat, scorer) -> None:
    guard = SemGradGuard(
        chat,
        policy="retrieve",
        retriever=retriever(),
        scorer=scorer,
        threshold=1e-3,
        threshold_field="semgrad",
    )
    out = guard.invoke(HARD)
    assert "Text: notes on a hard question\n\nx\n\nQuestion: a hard question" in out.content
    documents = result_of(out).documents
    assert [doc.page_content for doc in documents or []] == ["notes on a hard question", "x"]


def test_fallback_routes_to_the_other_runnable(chat, scorer) -> None:
    big = type(chat)(prefix="big model ")
    guard = SemGradGuard(
        chat, policy="fallback", fallback=big, scorer=scorer, threshold=1e-3, threshold_field="semgrad"
    )
    out = guard.invoke(HARD)
    assert out.content.startswith("big model unsure")
    result = result_of(out)
    assert (result.route, result.low_confidence, result.final_low_confidence) == ("fallback", True, True)


def test_human_queues_and_returns_the_holding_answer(chat, scorer, tmp_path) -> None:
    queue = ReviewQueue(tmp_path / "review.sqlite3")
    guard = SemGradGuard(
        chat, policy="human", review_queue=queue, scorer=scorer, threshold=1e-3, threshold_field="semgrad"
    )
    out = guard.invoke(HARD)
    assert isinstance(out, AIMessage) and out.content == guard.holding_answer
    (item,) = ReviewQueue(tmp_path / "review.sqlite3").items()
    assert item.id == result_of(out).review_id and item.answer == f"unsure about {HARD}"
    assert guard.invoke(EASY).content == f"sure: {EASY}" and len(queue.items()) == 1


def test_human_with_custom_handler_and_string_output(chat, scorer) -> None:
    seen: list[tuple[Any, str]] = []

    def handler(prompt: Any, answer: str, score: Any) -> str:
        seen.append((prompt, answer))
        return "escalated to a person"

    guard = SemGradGuard(
        chat | StrOutputParser(),
        policy="human",
        review_handler=handler,
        scorer=scorer,
        threshold=1e-3,
        threshold_field="semgrad",
    )
    assert guard.invoke(HARD) == "escalated to a person"
    # the prompt is what the chat model received: the string input became a user message
    assert seen == [([{"role": "user", "content": HARD}], f"unsure about {HARD}")]


def test_raise_works_with_with_fallbacks(chat, scorer) -> None:
    guard = SemGradGuard(chat, policy="raise", scorer=scorer, threshold=1e-3, threshold_field="semgrad")
    with pytest.raises(LowConfidenceError) as caught:
        guard.invoke(HARD)
    assert caught.value.result.route == "raise" and caught.value.answer.content == f"unsure about {HARD}"
    rescued = guard.with_fallbacks([RunnableLambda(lambda _: AIMessage("rescued"))])
    assert rescued.invoke(HARD).content == "rescued"
    assert result_of(rescued.invoke(EASY)).route == "pass"


@pytest.mark.parametrize("error", [InputTooLongError("too long"), RuntimeError("scorer bug")])
def test_scorer_failure_fails_open_flagged(chat, make_scorer, error, caplog) -> None:
    guard = SemGradGuard(
        chat, policy="fallback", fallback=type(chat)(prefix="big "), scorer=make_scorer(error=error)
    )
    with caplog.at_level(logging.WARNING, logger="langchain_semgrad.runnables"):
        out = guard.invoke(HARD)
    result = result_of(out)
    assert out.content == f"unsure about {HARD}"
    assert (result.route, result.flagged, result.low_confidence, result.score) == ("pass", True, None, None)
    assert (
        result.scorer_error is not None
        and str(error) in result.scorer_error
        and "fail_open" in result.scorer_error
    )
    assert "failing open" in caplog.text


def test_scorer_failure_fails_closed_routes_as_low_confidence(chat, make_scorer, caplog) -> None:
    scorer, big = make_scorer(error=RuntimeError("scorer bug")), type(chat)(prefix="big ")
    guard = SemGradGuard(chat, policy="fallback", fallback=big, scorer=scorer, on_scorer_error="fail_closed")
    with caplog.at_level(logging.WARNING, logger="langchain_semgrad.runnables"):
        out = guard.invoke(EASY)
    assert out.content == f"big sure: {EASY}" and result_of(out).route == "fallback"
    assert "failing closed" in caplog.text


def test_scorer_timeout_counts_as_failure(chat, make_scorer) -> None:
    guard = SemGradGuard(
        chat, scorer=make_scorer(delay=0.5), scorer_timeout=0.05, threshold=1e-3, threshold_field="semgrad"
    )
    result = result_of(guard.invoke(EASY))
    assert result.route == "pass" and result.flagged and "TimeoutError" in (result.scorer_error or "")


@pytest.mark.asyncio
async def test_async_paths_match_sync(chat, scorer) -> None:
    guard = SemGradGuard(
        chat,
        policy="fallback",
        fallback=type(chat)(prefix="big "),
        scorer=scorer,
        threshold=1e-3,
        threshold_field="semgrad",
    )
    inputs = [EASY, HARD, f"{EASY} 2", f"{HARD} 2"]
    sync = guard.batch(inputs, {"max_concurrency": 4})
    async_ = await guard.abatch(inputs, {"max_concurrency": 4})
    single = [await guard.ainvoke(value) for value in inputs]
    assert [m.content for m in sync] == [m.content for m in async_] == [m.content for m in single]
    assert [result_of(m).route for m in async_] == ["pass", "fallback", "pass", "fallback"]


@pytest.mark.asyncio
async def test_async_human_and_raise(chat, scorer, tmp_path) -> None:
    queue = ReviewQueue(tmp_path / "q.sqlite3")
    guard = SemGradGuard(
        chat, policy="human", review_queue=queue, scorer=scorer, threshold=1e-3, threshold_field="semgrad"
    )
    assert (await guard.ainvoke(HARD)).content == guard.holding_answer and len(queue.items()) == 1
    with pytest.raises(LowConfidenceError):
        await SemGradGuard(
            chat, policy="raise", scorer=scorer, threshold=1e-3, threshold_field="semgrad"
        ).ainvoke(HARD)


def test_stream_buffers_then_streams_the_route(chat, scorer) -> None:
    guard = SemGradGuard(
        chat,
        policy="fallback",
        fallback=type(chat)(prefix="big "),
        scorer=scorer,
        threshold=1e-3,
        threshold_field="semgrad",
    )
    chunks = list(guard.stream(HARD))
    assert len(chunks) > 2 and all(isinstance(c, AIMessageChunk) for c in chunks)
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole += chunk
    assert whole.content.strip() == f"big unsure about {HARD}"
    result = result_of(whole)
    assert result.route == "fallback" and result.score is not None and result.final_score is not None
    (confident,) = list(guard.stream(EASY))
    assert isinstance(confident, AIMessageChunk) and result_of(confident).route == "pass"


@pytest.mark.asyncio
async def test_astream_of_a_string_chain(chat, scorer) -> None:
    guard = SemGradGuard(
        chat | StrOutputParser(),
        policy="retrieve",
        retriever=retriever(),
        scorer=scorer,
        threshold=1e-3,
        threshold_field="semgrad",
    )
    chunks = [chunk async for chunk in guard.astream(HARD)]
    assert all(isinstance(c, str) for c in chunks) and len(chunks) > 2
    assert "".join(chunks).startswith("sure: Read this text and answer the question.")
    events = [e async for e in guard.astream_events(HARD, version="v2") if e["event"] == "on_custom_event"]
    assert [e["name"] for e in events] == ["semgrad_guard"] and events[0]["data"]["route"] == "retrieve"


def test_guard_never_mutates_the_answer_or_input(chat, scorer) -> None:
    answer = AIMessage("unsure about it", response_metadata={"model": "x"})
    messages = [HumanMessage(HARD)]
    guard = SemGradGuard(
        RunnableLambda(lambda _: answer), scorer=scorer, threshold=1e-3, threshold_field="semgrad"
    )
    out = guard.invoke(messages)
    assert answer.response_metadata == {"model": "x"} and out.response_metadata["model"] == "x"
    assert messages == [HumanMessage(HARD)]


def test_adapters_share_the_default_scorer(chat, scorer) -> None:
    previous = default_scorer()
    set_default_scorer(scorer)
    try:
        handler = SemGradCallbackHandler()
        SemGradGuard(chat, threshold=1e-3, threshold_field="semgrad").invoke(EASY, {"callbacks": [handler]})
    finally:
        set_default_scorer(previous)
    # one call from the guard, one from the handler observing the chat model: the same scorer object
    assert len(scorer.calls) == 2 and handler.results[0].score is not None


def test_event_loops_in_many_threads(chat, scorer) -> None:
    guard = SemGradGuard(
        chat,
        policy="fallback",
        fallback=type(chat)(prefix="big "),
        scorer=scorer,
        threshold=1e-3,
        threshold_field="semgrad",
    )
    questions = [f"{HARD} {i}" if i % 2 else f"{EASY} {i}" for i in range(8)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda q: asyncio.run(guard.ainvoke(q)), questions))
    for question, answer in zip(questions, answers, strict=True):
        assert answer.content.endswith(question)
        assert result_of(answer).route == ("fallback" if "hard" in question else "pass")


def test_nested_guards_keep_each_others_records(chat, scorer) -> None:
    inner = SemGradGuard(chat, scorer=scorer, threshold=1e-3, threshold_field="semgrad", name="inner")
    outer = SemGradGuard(inner, scorer=scorer, threshold=1e-3, threshold_field="semgrad", name="outer")
    out = outer.invoke(HARD)
    records = [GuardResult.model_validate(r) for r in out.response_metadata["semgrad_guards"]]
    assert [(r.guard, r.route) for r in records] == [("inner", "annotate"), ("outer", "annotate")]
    assert result_of(out) == records[-1]  # "semgrad" is the outermost guard's
    # streamed through a fallback that is itself a guard: chunks add up without garbling either record
    rerouting = SemGradGuard(
        chat,
        policy="fallback",
        fallback=SemGradGuard(
            type(chat)(prefix="big "), scorer=scorer, threshold=3e-3, threshold_field="semgrad"
        ),
        scorer=scorer,
        threshold=1e-3,
        threshold_field="semgrad",
        name="outer",
    )
    whole = None
    for chunk in rerouting.stream(HARD):
        whole = chunk if whole is None else whole + chunk
    assert whole is not None and result_of(whole).route == "fallback" and result_of(whole).guard == "outer"
    guards = [GuardResult.model_validate(r).guard for r in whole.response_metadata["semgrad_guards"]]
    assert guards == ["SemGradGuard", "outer"]


def test_schemas_and_graph_are_the_wrapped_steps(chat, scorer) -> None:
    chain = ChatPromptTemplate.from_messages([("system", "{context}"), ("human", "{question}")]) | chat
    guard = SemGradGuard(chain, scorer=scorer, threshold=1e-3, threshold_field="semgrad")
    schema = guard.get_input_schema().model_json_schema()
    assert schema == chain.get_input_schema().model_json_schema()
    assert sorted(schema["properties"]) == ["context", "question"]
    assert guard.get_output_schema().model_json_schema() == chain.get_output_schema().model_json_schema()
    graph = guard.get_graph()
    assert [node.name for node in graph.nodes.values()] == [
        node.name for node in chain.get_graph().nodes.values()
    ]
    assert "EchoChat" in [node.name for node in graph.nodes.values()]


@pytest.fixture
def serializable_chat(chat, monkeypatch) -> Any:
    """The echo chat model made serializable, as a provider's is, in a module ``loads`` can import."""

    class SerializableEcho(type(chat)):  # type: ignore[misc]
        @classmethod
        def is_lc_serializable(cls) -> bool:
            return True

        @classmethod
        def get_lc_namespace(cls) -> list[str]:
            return ["semgrad_test_models"]

    module = types.ModuleType("semgrad_test_models")
    module.SerializableEcho = SerializableEcho  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return SerializableEcho


def test_dumpd_and_loads_round_trip_and_refuse_live_parts(serializable_chat, scorer) -> None:
    template = ChatPromptTemplate.from_messages([("human", "{question}")])
    guard = SemGradGuard(template | serializable_chat(), policy="raise", max_risk=0.849, name="g")
    allowed = [SemGradGuard, RunnableSequence, ChatPromptTemplate, HumanMessagePromptTemplate, PromptTemplate]
    allowed.append(serializable_chat)
    namespaces = ["langchain_semgrad", "semgrad_test_models"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LangChainBetaWarning)
        back = loads(dumps(guard), allowed_objects=allowed, valid_namespaces=namespaces)
        assert isinstance(back, SemGradGuard) and dumpd(back) == dumpd(guard)
        assert (back.policy, back.max_risk, back.name) == ("raise", 0.849, "g")
        live = SemGradGuard(serializable_chat(), scorer=scorer, threshold=1e-3, threshold_field="semgrad")
        assert dumpd(live)["kwargs"]["scorer"]["type"] == "not_implemented"
        with pytest.raises(NotImplementedError, match="FakeScorer"):
            loads(dumps(live), allowed_objects=allowed, valid_namespaces=namespaces)


TOOL_CALL = AIMessage("", tool_calls=[{"name": "search", "args": {"q": "x"}, "id": "call-1"}])


def test_a_tool_call_step_is_not_scored_and_not_warned_about(scorer, caplog) -> None:
    agent_step = FakeMessagesListChatModel(responses=[TOOL_CALL, TOOL_CALL])
    guard = SemGradGuard(agent_step, scorer=scorer, threshold=1e-3, threshold_field="semgrad")
    with caplog.at_level(logging.DEBUG, logger="langchain_semgrad"):
        out = guard.invoke(HARD)
        (streamed,) = list(guard.stream(HARD))
    assert scorer.calls == [] and caplog.records == []
    for message in (out, streamed):
        assert message.tool_calls == TOOL_CALL.tool_calls  # passed through intact, streamed too
        result = result_of(message)
        assert (result.route, result.flagged, result.score) == ("pass", False, None)
        assert result.scorer_error is None
        assert result.not_scored is not None and "tools" in result.not_scored


def test_batch_returns_exceptions_in_place_and_reports_progress(chat, scorer) -> None:
    guard = SemGradGuard(chat, policy="raise", scorer=scorer, threshold=1e-3, threshold_field="semgrad")
    inputs = [EASY, HARD, f"{EASY} 2"]
    with pytest.raises(LowConfidenceError):
        guard.batch(inputs)
    outputs = guard.batch(inputs, return_exceptions=True)
    assert isinstance(outputs[1], LowConfidenceError) and outputs[1].result.route == "raise"
    assert [o.content for o in (outputs[0], outputs[2])] == [f"sure: {EASY}", f"sure: {EASY} 2"]
    done = dict(guard.batch_as_completed(inputs, return_exceptions=True))  # (index, output) as each ends
    assert sorted(done) == [0, 1, 2] and isinstance(done[1], LowConfidenceError)
    assert done[0].content == outputs[0].content


@pytest.mark.asyncio
async def test_abatch_returns_exceptions_in_place(chat, scorer) -> None:
    guard = SemGradGuard(chat, policy="raise", scorer=scorer, threshold=1e-3, threshold_field="semgrad")
    outputs = await guard.abatch([HARD, EASY], return_exceptions=True)
    assert isinstance(outputs[0], LowConfidenceError) and outputs[1].content == f"sure: {EASY}"
    done = {i: o async for i, o in guard.abatch_as_completed([HARD, EASY], return_exceptions=True)}
    assert isinstance(done[0], LowConfidenceError) and done[1].content == f"sure: {EASY}"


@pytest.mark.asyncio
@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_astream_events_show_the_decision_run(chat, scorer, version) -> None:
    guard = SemGradGuard(chat | StrOutputParser(), scorer=scorer, threshold=1e-3, threshold_field="semgrad")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LangChainDeprecationWarning)  # v1 is deprecated, still served
        events = [e async for e in guard.astream_events(HARD, version=version)]
    (decision,) = [e for e in events if e["event"] == "on_chain_end" and e["name"] == "semgrad_decision"]
    assert decision["data"]["output"]["route"] == "annotate"
    assert {"semgrad:annotate", "semgrad:flagged"} <= set(decision["tags"])
    assert decision["metadata"]["semgrad_route"] == "annotate"
    custom = [e["name"] for e in events if e["event"] == "on_custom_event"]
    assert custom == (["semgrad_guard"] if version == "v2" else [])  # v1 has no custom events
