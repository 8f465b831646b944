"""Agent runs scored with SemGrad: the final answer against the messages it was produced from.

:func:`arecord_agent_run` follows a workflow agent's run (``FunctionAgent``, ``ReActAgent``,
``AgentWorkflow``) through its event stream and keeps the input of the LLM call that gave the final answer:
system prompt, history, and the run's tool calls and tool results. :func:`aevaluate_agent_run` scores that
with a :class:`~llama_index.evaluation.semgrad.SemGradEvaluator`; :func:`aevaluate_agent_runs` scores a list
of runs through ``BatchEvalRunner``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from llama_index.core.agent.workflow import AgentInput, AgentOutput, ToolCallResult
from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock
from llama_index.core.bridge.pydantic import BaseModel, Field
from llama_index.core.evaluation import BatchEvalRunner, EvaluationResult
from llama_index.evaluation.semgrad.base import SemGradEvaluator
from workflows.handler import WorkflowHandler

__all__ = [
    "AgentRun",
    "aevaluate_agent_run",
    "aevaluate_agent_runs",
    "agent_messages",
    "arecord_agent_run",
    "message_text",
]


def message_text(message: ChatMessage) -> str:
    """A message's text, then its tool calls as JSON lines ``{"name": ..., "arguments": ...}``.

    An assistant turn that only calls tools has no text of its own; this is what the scorer reads for it,
    in the prompt of a later turn and as the answer of that turn.
    """
    calls = [block for block in message.blocks if isinstance(block, ToolCallBlock)]
    lines = [json.dumps({"name": c.tool_name, "arguments": c.tool_kwargs}, ensure_ascii=False) for c in calls]
    text = message.content or ""
    return "\n".join([text, *lines] if text else lines)


def agent_messages(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """The scorer's prompt for an agent's LLM input: each message's role and :func:`message_text`."""
    return [{"role": str(message.role.value), "content": message_text(message)} for message in messages]


class AgentRun(BaseModel):
    """One agent run: its question, final answer, and the LLM input the answer was produced from."""

    question: str | None = Field(description="The user's message that started the run.")
    answer: str = Field(description="The final response's text.")
    messages: list[ChatMessage] = Field(
        description="The input of the LLM call that gave the final answer: system prompt, history, tool "
        "calls and tool results, as the agent sent them."
    )
    tool_outputs: list[str] = Field(default_factory=list, description="The run's tool results, in order.")
    agent_name: str = Field(description="The agent that answered (the last one of an AgentWorkflow).")

    def scorer_prompt(self) -> list[dict[str, str]]:
        """The prompt the answer is scored against (:func:`agent_messages` of :attr:`messages`)."""
        return agent_messages(self.messages)


async def arecord_agent_run(handler: WorkflowHandler, question: str | None = None) -> AgentRun:
    """Follow a run's event stream to its end and keep what its final answer came from.

    Args:
        handler: what ``agent.run(...)`` returned, its events not yet streamed by anyone else.
        question: the user's message; default the last user message of the final LLM input.

    Raises:
        ValueError: the run ended without an agent output, or no LLM input was seen before it.
    """
    last_input: AgentInput | None = None
    tool_outputs: list[str] = []
    async for event in handler.stream_events():
        if isinstance(event, AgentInput):
            last_input = event
        elif isinstance(event, ToolCallResult):
            tool_outputs.append(str(event.tool_output.content))
    output: object = await handler
    if not isinstance(output, AgentOutput) or last_input is None:
        raise ValueError(
            f"the run ended with {type(output).__name__}, after {'an' if last_input else 'no'} AgentInput "
            "event: arecord_agent_run follows FunctionAgent, ReActAgent and AgentWorkflow runs"
        )
    users = [m.content for m in last_input.input if m.role == MessageRole.USER and m.content]
    return AgentRun(
        question=question if question is not None else (users[-1] if users else None),
        answer=output.response.content or "",
        messages=last_input.input,
        tool_outputs=tool_outputs,
        agent_name=output.current_agent_name,
    )


def _arguments(run: AgentRun) -> dict[str, Any]:
    return {
        "query": run.question,
        "response": run.answer,
        "contexts": run.tool_outputs,
        "prompt": run.scorer_prompt(),
    }


async def aevaluate_agent_run(evaluator: SemGradEvaluator, run: AgentRun) -> EvaluationResult:
    """Score a run's final answer against its LLM input; the tool outputs are the result's contexts."""
    return await evaluator.aevaluate(**_arguments(run))


async def aevaluate_agent_runs(
    evaluator: SemGradEvaluator, runs: Sequence[AgentRun], workers: int = 4
) -> list[EvaluationResult]:
    """Score many runs with ``BatchEvalRunner`` (``workers`` at a time; the scorer batches their passes)."""
    if not runs:
        return []
    arguments = [_arguments(run) for run in runs]
    per_run: dict[str, Any] = {"prompt": [a["prompt"] for a in arguments]}  # BatchEvalRunner's eval kwargs
    results = await BatchEvalRunner({"semgrad": evaluator}, workers=workers).aevaluate_response_strs(
        queries=[a["query"] for a in arguments],
        response_strs=[a["response"] for a in arguments],
        contexts_list=[a["contexts"] for a in arguments],
        **per_run,
    )
    return results["semgrad"]
