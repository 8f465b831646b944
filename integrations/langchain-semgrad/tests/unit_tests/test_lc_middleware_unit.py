"""SemGradMiddleware in real ``create_agent`` loops: a fake tool-calling chat model and a fake scorer."""

from __future__ import annotations

import logging
from typing import Any

import pytest

pytest.importorskip("langchain.agents")

from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langchain_semgrad import GuardResult, LowConfidenceError, SemGradMiddleware
from langchain_semgrad.middleware import RETRY_NOTE, agent_prompt
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command
from pydantic import Field

from semgrad_guard import SemGradScorer
from semgrad_guard.prompts import ChatFormat

QUESTION = {"messages": [{"role": "user", "content": "What is 2 + 3?"}]}
SYSTEM = "You add numbers with the add tool."
RAW = {"threshold": 1e-3, "threshold_field": "semgrad"}


@tool
def add(a: int, b: int) -> int:
    """Add two whole numbers."""
    return a + b


class AgentChat(BaseChatModel):
    """Calls ``add`` first; answers '<word>: the sum is N' from the tool result; 'sure' after a note."""

    word: str = "unsure"
    calls_tool: bool = True
    seen: list[list[BaseMessage]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "agent-chat"

    def bind_tools(self, tools: Any, **kwargs: Any) -> AgentChat:  # type: ignore[override]
        return self

    def _generate(
        self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        self.seen.append(list(messages))
        results = [m.text for m in messages if isinstance(m, ToolMessage)]
        if self.calls_tool and not results:
            message = AIMessage("", tool_calls=[{"name": "add", "args": {"a": 2, "b": 3}, "id": "call-1"}])
        else:
            noted = isinstance(messages[-1], HumanMessage) and "again" in messages[-1].text
            word = "sure" if noted else self.word
            message = AIMessage(f"{word}: the sum is {results[-1] if results else '?'}")
        return ChatResult(generations=[ChatGeneration(message=message)])


def decision(message: BaseMessage) -> GuardResult:
    return GuardResult.model_validate(message.response_metadata["semgrad"])


def agent(model: AgentChat, middleware: SemGradMiddleware, **kwargs: Any) -> Any:
    return create_agent(model, tools=[add], system_prompt=SYSTEM, middleware=[middleware], **kwargs)


def test_only_the_final_answer_is_scored_against_the_messages_the_model_saw(scorer) -> None:
    model = AgentChat()
    out = agent(model, SemGradMiddleware(scorer=scorer, **RAW)).invoke(QUESTION)
    step, result, answer = out["messages"][1:]
    assert step.tool_calls and "semgrad" not in step.response_metadata  # the tool-call turn: not scored
    assert isinstance(result, ToolMessage) and answer.text == "unsure: the sum is 5"
    assert len(scorer.calls) == 1 and len(model.seen) == 2
    prompt, scored_answer = scorer.calls[0]
    assert prompt == agent_prompt(model.seen[-1]) and scored_answer == answer.text
    assert [m["role"] for m in prompt] == ["system", "user", "assistant", "tool"]
    assert prompt[0]["content"] == SYSTEM and prompt[3]["content"] == "5"
    assert prompt[2]["content"] == '{"name": "add", "arguments": {"a": 2, "b": 3}}'
    verdict = decision(answer)
    assert (verdict.policy, verdict.route, verdict.flagged, verdict.guard) == (
        "annotate",
        "annotate",
        True,
        "SemGradMiddleware",
    )
    assert verdict.scored_prompt == prompt and verdict.scored_prompt_source == "model_call"
    assert answer.response_metadata["semgrad_guards"] == [answer.response_metadata["semgrad"]]


def test_a_trusted_answer_passes_and_an_answer_without_tools_is_scored_too(scorer) -> None:
    out = agent(AgentChat(word="sure", calls_tool=False), SemGradMiddleware(scorer=scorer, **RAW)).invoke(
        QUESTION
    )
    verdict = decision(out["messages"][-1])
    assert (verdict.route, verdict.flagged, verdict.low_confidence) == ("pass", False, False)
    assert scorer.calls[0][0] == [{"role": "system", "content": SYSTEM}, QUESTION["messages"][0]]


def test_fallback_reruns_the_turn_on_the_fallback_model(scorer) -> None:
    fallback = AgentChat(word="sure")
    middleware = SemGradMiddleware(policy="fallback", fallback=fallback, scorer=scorer, **RAW)
    model = AgentChat()
    out = agent(model, middleware).invoke(QUESTION)
    answer = out["messages"][-1]
    assert answer.text == "sure: the sum is 5" and len(out["messages"]) == 4  # one answer in the state
    verdict = decision(answer)
    assert (verdict.route, verdict.flagged, verdict.final_low_confidence) == ("fallback", True, False)
    assert verdict.score is not None and verdict.score.semgrad == 2e-3
    assert fallback.seen == [model.seen[-1]]  # the same turn: system prompt, question, tool call, result
    assert verdict.final_scored_prompt == agent_prompt(fallback.seen[-1])


def test_a_fallback_that_calls_tools_continues_the_loop(scorer) -> None:
    fallback = AgentChat(word="sure")
    middleware = SemGradMiddleware(policy="fallback", fallback=fallback, scorer=scorer, **RAW)
    out = agent(AgentChat(calls_tool=False), middleware).invoke(QUESTION)
    rerouted, result, answer = out["messages"][1:]
    assert rerouted.tool_calls and decision(rerouted).route == "fallback"
    assert decision(rerouted).final_score is None  # its turn called a tool: not an answer
    assert isinstance(result, ToolMessage) and answer.text == "sure: the sum is 5"
    assert decision(answer).final_low_confidence is False  # the next final answer was judged on its own


def test_retry_asks_again_with_a_note_the_state_does_not_keep(scorer) -> None:
    model = AgentChat()
    out = agent(model, SemGradMiddleware(policy="retry", scorer=scorer, **RAW)).invoke(QUESTION)
    answer = out["messages"][-1]
    assert answer.text == "sure: the sum is 5" and len(out["messages"]) == 4
    assert model.seen[-1][-2:] == [model.seen[-1][-2], HumanMessage(RETRY_NOTE)]
    assert model.seen[-1][-2].text == "unsure: the sum is 5"  # the model saw its rejected answer
    verdict = decision(answer)
    assert (verdict.policy, verdict.route, verdict.final_low_confidence) == ("retry", "retry", False)
    assert verdict.final_scored_prompt == agent_prompt(model.seen[-1])


def test_raise_stops_the_agent_with_the_decision(scorer) -> None:
    with pytest.raises(LowConfidenceError) as caught:
        agent(AgentChat(), SemGradMiddleware(policy="raise", scorer=scorer, **RAW)).invoke(QUESTION)
    assert caught.value.result.route == "raise" and caught.value.answer.text == "unsure: the sum is 5"


@pytest.mark.parametrize(
    ("reply", "text", "review"),
    [
        ({"type": "approve"}, "unsure: the sum is 5", {"decision": "approve"}),
        ({"type": "edit", "answer": "5"}, "5", {"decision": "edit", "original": "unsure: the sum is 5"}),
    ],
)
def test_human_interrupts_and_resumes_from_the_checkpoint(scorer, reply, text, review) -> None:
    model = AgentChat()
    graph = agent(
        model, SemGradMiddleware(policy="human", scorer=scorer, **RAW), checkpointer=InMemorySaver()
    )
    config = {"configurable": {"thread_id": "review"}}
    paused = graph.invoke(QUESTION, config)
    (pending,) = paused["__interrupt__"]
    assert pending.value["type"] == "semgrad_review" and pending.value["answer"] == "unsure: the sum is 5"
    assert pending.value["result"]["route"] == "human" and pending.value["result"]["flagged"]
    out = graph.invoke(Command(resume=reply), config)
    answer = out["messages"][-1]
    assert answer.text == text and answer.response_metadata["semgrad_review"] == review
    assert decision(answer).route == "human" and len(out["messages"]) == 4
    assert len(model.seen) == 2 and len(scorer.calls) == 1  # resuming ran neither the model nor the scorer


def test_human_reject_sends_the_model_back_with_the_reason(scorer) -> None:
    model = AgentChat()
    graph = agent(
        model, SemGradMiddleware(policy="human", scorer=scorer, **RAW), checkpointer=InMemorySaver()
    )
    config = {"configurable": {"thread_id": "reject"}}
    graph.invoke(QUESTION, config)
    out = graph.invoke(Command(resume={"type": "reject", "message": "show the sum"}), config)
    rejected, note, answer = out["messages"][-3:]
    assert rejected.response_metadata["semgrad_review"]["decision"] == "reject"
    assert note.text == "A reviewer rejected your last answer: show the sum. Answer again."
    assert answer.text == "sure: the sum is 5" and decision(answer).route == "pass"
    with pytest.raises(ValueError, match="unexpected review decision"):
        graph.invoke(QUESTION, {"configurable": {"thread_id": "bad"}})
        graph.invoke(Command(resume={"type": "maybe"}), {"configurable": {"thread_id": "bad"}})


@pytest.mark.asyncio
async def test_async_fallback_and_human(scorer) -> None:
    fallback = AgentChat(word="sure")
    middleware = SemGradMiddleware(policy="fallback", fallback=fallback, scorer=scorer, **RAW)
    out = await agent(AgentChat(), middleware).ainvoke(QUESTION)
    assert decision(out["messages"][-1]).route == "fallback" and out["messages"][-1].text.startswith("sure")
    graph = agent(
        AgentChat(), SemGradMiddleware(policy="human", scorer=scorer, **RAW), checkpointer=InMemorySaver()
    )
    config = {"configurable": {"thread_id": "async"}}
    assert (await graph.ainvoke(QUESTION, config))["__interrupt__"]
    resumed = await graph.ainvoke(Command(resume={"type": "edit", "answer": "five"}), config)
    assert resumed["messages"][-1].text == "five" and len(scorer.calls) == 3


def test_a_failing_scorer_fails_open_flagged(make_scorer, caplog) -> None:
    middleware = SemGradMiddleware(
        policy="fallback",
        fallback=AgentChat(word="sure"),
        scorer=make_scorer(error=RuntimeError("down")),
        **RAW,
    )
    with caplog.at_level(logging.WARNING):
        answer = agent(AgentChat(), middleware).invoke(QUESTION)["messages"][-1]
    verdict = decision(answer)
    assert answer.text == "unsure: the sum is 5"  # kept: open
    assert (verdict.route, verdict.flagged, verdict.low_confidence) == ("pass", True, None)
    assert "RuntimeError: down (fail_open)" in (verdict.scorer_error or "") and "failing open" in caplog.text


def test_a_failing_scorer_fails_closed_into_the_policy(make_scorer) -> None:
    scorer = make_scorer(delay=0.5)
    fallback = AgentChat(word="sure")
    middleware = SemGradMiddleware(
        policy="fallback",
        fallback=fallback,
        scorer=scorer,
        scorer_timeout=0.05,
        on_scorer_error="fail_closed",
        **RAW,
    )
    answer = agent(AgentChat(), middleware).invoke(QUESTION)["messages"][-1]
    verdict = decision(answer)
    assert answer.text == "sure: the sum is 5" and verdict.route == "fallback"
    assert "scorer_timeout=0.05" in (verdict.scorer_error or "") and "fail_closed" in verdict.scorer_error


def test_settings_that_cannot_work_are_refused(scorer) -> None:
    with pytest.raises(ValueError, match="fallback="):
        SemGradMiddleware(policy="fallback", scorer=scorer, **RAW)
    with pytest.raises(ValueError, match="policy='review'"):
        SemGradMiddleware(policy="review", scorer=scorer)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threshold_field"):
        SemGradMiddleware(threshold=1e-3, scorer=scorer)


@pytest.fixture(scope="module")
def smollm2() -> SemGradScorer:
    return SemGradScorer(device="cpu").load()


@pytest.mark.slow
def test_the_scored_prompt_is_the_whole_turn_in_the_scorers_chat_template(smollm2) -> None:
    model = AgentChat(word="sure")
    answer = agent(model, SemGradMiddleware(scorer=smollm2, **RAW)).invoke(QUESTION)["messages"][-1]
    verdict = decision(answer)
    template = ChatFormat(smollm2.tokenizer)
    expected = template.encode_prompt(agent_prompt(model.seen[-1]))
    question_only = template.encode_prompt([QUESTION["messages"][0]])
    assert verdict.score is not None and verdict.scored_prompt_tokens == len(expected)
    assert verdict.score.n_prompt_tokens == len(expected) > len(question_only)
    direct = smollm2.score(agent_prompt(model.seen[-1]), answer.text)
    assert verdict.score.semgrad == pytest.approx(direct.semgrad, rel=1e-9)
