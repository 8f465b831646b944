"""Agent runs: final answers scored once each, told apart from steps, evaluated alone or in batch.

The agents are real ``FunctionAgent`` / ``ReActAgent`` workflows; their LLM is LlamaIndex's
``MockFunctionCallingLLM`` with a scripted reply (a tool call, then an answer), since SmolLM2 cannot call
tools. The scorer is the embedded SmolLM2, or a fake one where only the marking is checked.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.agent.workflow import FunctionAgent, ReActAgent
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole, TextBlock, ToolCallBlock
from llama_index.core.instrumentation.events.llm import LLMChatEndEvent
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.tools import FunctionTool
from llama_index.evaluation.semgrad import (
    AgentRun,
    SemGradEvaluator,
    SemGradEventHandler,
    SemGradLocalLLM,
    aevaluate_agent_run,
    aevaluate_agent_runs,
    agent_answers,
    arecord_agent_run,
)
from llama_index.evaluation.semgrad.agents import agent_messages, message_text
from llama_index_instrumentation import get_dispatcher

from semgrad_guard import Score, SemGradScorer
from semgrad_guard.prompts import ChatFormat

FLOAT32_DRIFT = 1e-3  # the same pair in passes of other shapes (docs/method.md "Precision")
SYSTEM = "Answer from the library documents."
FACTS = {
    "When was Harbor Lane Library founded?": ("Founded in 1921 by Edith Marlow.", "It was founded in 1921."),
    "What is the cafe at Harbor Lane Library called?": ("The cafe is The Quiet Cup.", "The Quiet Cup."),
}


def lookup(query: str) -> str:
    """Look up the library documents."""
    return FACTS[query][0]


def reply(messages: list[ChatMessage], **kwargs: Any) -> ChatMessage:
    """A tool call first, then the answer to the question (what a function-calling LLM would do)."""
    question = next(m.content for m in messages if m.role == MessageRole.USER)
    if not any(m.role == MessageRole.TOOL for m in messages):
        call = ToolCallBlock(tool_call_id="call-1", tool_name="lookup", tool_kwargs={"query": question})
        return ChatMessage(role="assistant", blocks=[call])
    return ChatMessage(role="assistant", content=FACTS[question or ""][1])


def function_agent(tool: Any = None) -> FunctionAgent:
    llm = MockFunctionCallingLLM(response_generator=reply)
    return FunctionAgent(tools=[tool or FunctionTool.from_defaults(fn=lookup)], llm=llm, system_prompt=SYSTEM)


class CountingScorer(SemGradScorer):
    """semgrad grows with the answer's length; counts the pairs it scored (no model)."""

    def __init__(self) -> None:
        super().__init__()
        self.pairs: list[tuple[Any, str]] = []

    def score(self, prompt: Any, answer: str, *, errors: Any = "raise") -> Score:
        self.pairs.append((prompt, answer))
        risk = min(len(answer) / 100, 1.0)
        return Score(model="fake", semgrad=risk, risk=risk, confidence=1 - risk, low_confidence=risk > 0.5)


def run_agent(agent: Any, questions: list[str]) -> list[AgentRun]:
    async def runs() -> list[AgentRun]:
        return [await arecord_agent_run(agent.run(user_msg=question)) for question in questions]

    return asyncio.run(runs())


def test_each_final_answer_is_scored_once_and_marked(li_events, li_register) -> None:
    scorer = CountingScorer()
    li_register(SemGradEventHandler(scorer=scorer, mode="sync"))
    runs = run_agent(function_agent(), list(FACTS))
    scores = li_events.of("SemGradScoreEvent")
    assert [event.step for event in scores] == ["intermediate", "final_answer"] * 2
    assert len(scorer.pairs) == 4  # two LLM turns a run, each scored once
    for run, (step, answer) in zip(runs, zip(scores[::2], scores[1::2], strict=True), strict=True):
        assert answer.answer == run.answer and answer.prompt == run.scorer_prompt()
        assert [m["role"] for m in answer.prompt] == ["system", "user", "assistant", "tool"]
        assert answer.prompt[2]["content"] == step.answer  # the tool call, as the next turn reads it
        assert step.answer == f'{{"name": "lookup", "arguments": {{"query": "{run.question}"}}}}'
        assert answer.tags["llamaindex.run_id"] == step.tags["llamaindex.run_id"]
    assert runs[1].tool_outputs == ["The cafe is The Quiet Cup."] and runs[1].agent_name == "Agent"
    finals = agent_answers(li_events.events)
    assert [e.answer for e in finals] == [
        "It was founded in 1921.",
        "The Quiet Cup.",
    ]  # least confident first
    assert agent_answers(li_events.events, below=0.8) == finals[:1]


def test_calls_outside_agents_are_not_marked_and_react_actions_are_steps(li_events, li_register) -> None:
    li_register(SemGradEventHandler(scorer=CountingScorer(), mode="sync"))
    get_dispatcher().event(
        LLMChatEndEvent(
            messages=[ChatMessage(role="user", content="Hi")],
            response=ChatResponse(message=ChatMessage(role="assistant", content="Hello")),
        )
    )
    scripted = iter(
        [
            'Thought: I need the documents.\nAction: lookup\nAction Input: {"query": "'
            + next(iter(FACTS))
            + '"}',
            "Thought: I can answer.\nAnswer: It was founded in 1921.",
        ]
    )
    llm = MockFunctionCallingLLM(
        response_generator=lambda messages, **kw: ChatMessage(role="assistant", content=next(scripted))
    )
    react = ReActAgent(tools=[FunctionTool.from_defaults(fn=lookup)], llm=llm)
    (run,) = run_agent(react, [next(iter(FACTS))])
    assert [event.step for event in li_events.of("SemGradScoreEvent")] == [
        None,
        "intermediate",
        "final_answer",
    ]
    assert run.answer == "It was founded in 1921."  # ReAct's parsed answer; the event scored the whole reply


def test_message_text_keeps_text_and_tool_calls() -> None:
    call = ToolCallBlock(tool_call_id="1", tool_name="lookup", tool_kwargs={"query": "Tōkyō"})
    message = ChatMessage(role="assistant", blocks=[call])
    assert message_text(message) == '{"name": "lookup", "arguments": {"query": "Tōkyō"}}'
    message.blocks.insert(0, TextBlock(text="Let me check."))
    assert message_text(message).splitlines()[0] == "Let me check."
    assert agent_messages([ChatMessage(role="tool", content="42")]) == [{"role": "tool", "content": "42"}]


@pytest.mark.slow
def test_evaluated_runs_match_the_handlers_final_answer_scores(
    li_scorer: SemGradScorer, li_events, li_register
) -> None:
    handler = li_register(SemGradEventHandler(scorer=li_scorer))
    runs = run_agent(function_agent(), list(FACTS))
    handler.flush(timeout=120)
    finals = {e.answer: e.score for e in li_events.of("SemGradScoreEvent") if e.step == "final_answer"}
    evaluator = SemGradEvaluator(scorer=li_scorer)
    singles = [asyncio.run(aevaluate_agent_run(evaluator, run)) for run in runs]
    batch = asyncio.run(aevaluate_agent_runs(evaluator, runs, workers=2))
    for run, single, batched in zip(runs, singles, batch, strict=True):
        score = finals[run.answer]
        prompt_ids = ChatFormat(li_scorer.tokenizer).encode_prompt(run.scorer_prompt())
        assert score.valid and score.n_prompt_tokens == len(prompt_ids)
        assert single.score == pytest.approx(score.confidence, rel=1e-9)  # one pass: the handler's, reused
        assert batched.score == pytest.approx(single.score, rel=FLOAT32_DRIFT)
        assert single.contexts == run.tool_outputs and single.response == run.answer


@pytest.mark.slow
def test_a_query_inside_a_tool_is_an_intermediate_step(
    li_index: VectorStoreIndex, li_llm: SemGradLocalLLM, li_events, li_register
) -> None:
    li_register(SemGradEventHandler(scorer=CountingScorer(), mode="sync", reuse_attached_scores=False))
    engine = li_index.as_query_engine(llm=li_llm, similarity_top_k=1)

    async def search(query: str) -> str:
        """Search the library documents."""
        return str(await engine.aquery(query))

    tool = FunctionTool.from_defaults(async_fn=search, name="lookup")
    run_agent(function_agent(tool), [next(iter(FACTS))])
    steps = [(event.source, event.step) for event in li_events.of("SemGradScoreEvent")]
    assert steps == [
        ("llm_chat", "intermediate"),  # the agent calls the tool
        ("llm_chat", "intermediate"),  # the query engine's LLM, inside the tool
        ("query", "intermediate"),
        ("llm_chat", "final_answer"),
    ]
