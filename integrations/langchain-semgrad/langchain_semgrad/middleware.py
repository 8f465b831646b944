"""`SemGradMiddleware`: the guard inside a LangChain agent loop (``create_agent``, langchain 1.x).

After each model call that gives a final text answer, the middleware scores that answer against the
messages the call received (system prompt, history, tool calls and tool results), attaches a
:class:`~langchain_semgrad.GuardResult` to the message as the guard does, and routes a low-confidence answer
by policy. A turn that calls tools is an intermediate step of the loop: it passes unscored. The decision
itself (thresholds, scorer-failure policy, the result and its publication) is the guard's
:class:`~langchain_semgrad.runnables.GuardCore`. Needs ``langchain>=1``:
``pip install "langchain-semgrad[agents]"``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, get_args

from langchain.agents.middleware import AgentMiddleware, AgentState, ModelRequest, ModelResponse, hook_config
from langchain.chat_models import init_chat_model
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables import Runnable, RunnableLambda, ensure_config
from langgraph.runtime import Runtime
from langgraph.types import interrupt
from typing_extensions import NotRequired, TypedDict

from langchain_semgrad._capture import ModelCalls
from langchain_semgrad._effects import Emit, Invoke, Steps, adrive, drive
from langchain_semgrad._messages import attach
from langchain_semgrad.runnables import (
    GUARDS_KEY,
    METADATA_KEY,
    AgentPolicy,
    GuardCore,
    GuardResult,
    PromptSource,
    ScorerErrorPolicy,
    _FirstPass,
)
from semgrad_guard import RawField, Scorer
from semgrad_guard.prompts import Prompt
from semgrad_guard.results import check_decision

__all__ = [
    "AnswerReviewDecision",
    "AnswerReviewRequest",
    "SemGradMiddleware",
    "agent_prompt",
]

logger = logging.getLogger(__name__)

REVIEW_KEY = "semgrad_review"
"""Key of the reviewer's decision in a reviewed answer's ``response_metadata`` (``policy="human"``)."""
RETRY_NOTE = (
    "Your last answer may be unreliable. Check it against the conversation and the tool results, then "
    "answer again; call a tool if you need more information, or say that you are not sure."
)
REJECTED_NOTE = "A reviewer rejected your last answer{reason}. Answer again."
REVIEW_DESCRIPTION = "SemGrad flagged this answer as low-confidence: approve, edit or reject it."
_ROLES = {"system": "system", "human": "user", "ai": "assistant", "tool": "tool"}


def agent_prompt(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """An agent transcript as the scorer's messages: what ``SemGradMiddleware`` scores an answer against.

    Tool results are ``tool`` turns; an assistant turn's tool calls follow its text as JSON lines
    ``{"name": ..., "arguments": ...}``, so the scorer reads which tool was asked what. Other roles count
    as user turns.
    """
    return [{"role": _ROLES.get(m.type, "user"), "content": _turn_text(m)} for m in messages]


def _turn_text(message: BaseMessage) -> str:
    calls = message.tool_calls if isinstance(message, AIMessage) else []
    lines = [json.dumps({"name": c["name"], "arguments": c["args"]}, ensure_ascii=False) for c in calls]
    return "\n".join([message.text, *lines] if message.text else lines)


class AnswerReviewRequest(TypedDict):
    """The interrupt value of ``policy="human"``: a low-confidence answer waiting for a reviewer."""

    type: Literal["semgrad_review"]
    answer: str
    """The answer the model gave."""
    result: dict[str, Any]
    """The :class:`~langchain_semgrad.GuardResult` (JSON): risk, confidence, score, scored prompt."""
    description: str


class AnswerReviewDecision(TypedDict):
    """What ``Command(resume=...)`` answers an :class:`AnswerReviewRequest` with.

    ``{"type": "approve"}`` keeps the answer; ``{"type": "edit", "answer": "..."}`` replaces its text;
    ``{"type": "reject", "message": "..."}`` sends the model back to answer again, with the reviewer's reason.
    """

    type: Literal["approve", "edit", "reject"]
    answer: NotRequired[str]
    message: NotRequired[str]


ModelStep = Runnable[ModelRequest[Any], ModelResponse[Any]]


class SemGradMiddleware(AgentMiddleware[AgentState[Any], Any, Any], GuardCore):
    """Scores each final answer of a ``create_agent`` loop with SemGrad and routes untrusted ones.

    Place it last in ``middleware=[...]`` so that it wraps the model call most closely; wherever it sits,
    the prompt scored is the one the chat model received (recorded from the call itself).

    Args:
        policy: what to do with a low-confidence answer: ``"annotate"`` (keep it, flagged), ``"fallback"``
            (run the turn again on ``fallback``, as ``ModelFallbackMiddleware`` does on errors), ``"retry"``
            (ask the same model again, with ``retry_note`` after its answer), ``"human"`` (interrupt for
            review, resumable with ``Command(resume=AnswerReviewDecision)``; needs a checkpointer) or
            ``"raise"`` (:class:`~langchain_semgrad.LowConfidenceError` out of the agent).
        fallback: the chat model (or ``init_chat_model`` name) for ``"fallback"``.
        max_risk: untrusted when the calibrated risk exceeds it (needs a calibrated scorer).
        threshold: a raw threshold on ``threshold_field`` (it must name its field).
        threshold_field: the raw Score field ``threshold`` applies to. Neither ``max_risk`` nor
            ``threshold``: the calibration's own acceptance threshold decides.
        retry_note: the user turn the ``"retry"`` route adds after the rejected answer.
        review_description: the text of the ``"human"`` route's interrupt.
        on_scorer_error: ``"fail_open"`` (keep the answer, flagged) or ``"fail_closed"`` (route it as
            untrusted) when scoring raises or times out.
        scorer_timeout: seconds a score may take before it counts as failed (``None``: no limit).
        scorer: the scorer; ``None`` shares the process-wide ``semgrad_guard.default_scorer()``.
        event_name: the custom event each decision is published as (the guard's by default).
    """

    def __init__(
        self,
        *,
        policy: AgentPolicy = "annotate",
        fallback: str | BaseChatModel | None = None,
        max_risk: float | None = None,
        threshold: float | None = None,
        threshold_field: RawField | None = None,
        retry_note: str = RETRY_NOTE,
        review_description: str = REVIEW_DESCRIPTION,
        on_scorer_error: ScorerErrorPolicy = "fail_open",
        scorer_timeout: float | None = None,
        scorer: Scorer | None = None,
        event_name: str = "semgrad_guard",
    ) -> None:
        """Check and keep the settings; no model is loaded until the first answer is scored."""
        super().__init__()
        check_decision(threshold, threshold_field, max_risk, "SemGradMiddleware")
        if policy not in get_args(AgentPolicy):
            raise ValueError(f"policy={policy!r}: expected one of {list(get_args(AgentPolicy))}")
        if on_scorer_error not in get_args(ScorerErrorPolicy):
            raise ValueError(f"on_scorer_error={on_scorer_error!r}: expected 'fail_open' or 'fail_closed'")
        if policy == "fallback" and fallback is None:
            raise ValueError("policy='fallback' needs fallback= (the chat model that answers instead)")
        self.policy: AgentPolicy = policy
        self.fallback = init_chat_model(fallback) if isinstance(fallback, str) else fallback
        self.max_risk = max_risk
        self.threshold = threshold
        self.threshold_field: RawField | None = threshold_field
        self.retry_note = retry_note
        self.review_description = review_description
        self.on_scorer_error: ScorerErrorPolicy = on_scorer_error
        self.scorer_timeout = scorer_timeout
        self.scorer = scorer
        self.event_name = event_name

    def get_name(self) -> str:
        """The name each GuardResult carries: the middleware's name (its class name)."""
        return self.name

    # ------------------------------------------------------------------------- the model turn, wrapped
    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelResponse[Any]:
        """Run the turn; score a final answer and route it by policy (tool-call turns pass unscored)."""
        step = RunnableLambda(handler, name="agent_model_call")
        (response,) = drive(self._turn(request, step), ensure_config())
        return response  # type: ignore[no-any-return]

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResponse[Any]:
        """Async :meth:`wrap_model_call`: the scoring pass runs off the event loop."""

        async def call(turn: ModelRequest[Any]) -> ModelResponse[Any]:
            return await handler(turn)

        step = RunnableLambda(call, name="agent_model_call")
        (response,) = [output async for output in adrive(self._turn(request, step), ensure_config())]
        return response  # type: ignore[no-any-return]

    def _turn(self, request: ModelRequest[Any], step: ModelStep) -> Steps[None]:
        """One model turn for both paths: call, score a final answer, route; yields the I/O it needs."""
        calls = ModelCalls(agent_prompt)
        response = yield Invoke(step, request, capture=calls)
        answer = _final_answer(response)
        if answer is None:  # an intermediate step (tool calls) or no message: nothing to score
            yield Emit(response)
            return
        prompt, source = _scored_prompt(calls, request, answer)
        first = yield from self._first_pass(request, prompt, source, answer)
        if first.route in ("fallback", "retry"):
            response, result = yield from self._second_answer(first, step)
        else:
            result = self._result(first, first.verdict)
        data = yield from self._publish(result)
        yield Emit(_with_decision(response, data))

    def _second_answer(
        self, first: _FirstPass, step: ModelStep
    ) -> Steps[tuple[ModelResponse[Any], GuardResult]]:
        """The ``fallback`` and ``retry`` routes: run the turn again, then score its answer if it gave one."""
        request: ModelRequest[Any] = first.input
        if first.route == "fallback":
            assert self.fallback is not None
            second = request.override(model=self.fallback)
        else:
            second = request.override(
                messages=[*request.messages, first.answer, HumanMessage(self.retry_note)]
            )
        calls = ModelCalls(agent_prompt)
        response = yield Invoke(step, second, capture=calls)
        final = _final_answer(response)
        if final is None:  # the second model called tools instead: the loop goes on, unscored
            return response, self._result(first, None)
        prompt, source = _scored_prompt(calls, second, final)
        verdict = yield from self._judge(prompt, final)
        extra = {"final_scored_prompt": prompt, "final_scored_prompt_source": source}
        return response, self._result(first, verdict, **extra)

    # ----------------------------------------------------------------- policy="human": review the answer
    @hook_config(can_jump_to=["model"])
    def after_model(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        """For ``policy="human"``: interrupt on an answer this middleware sent for review, apply the decision.

        The answer is already in the checkpointed state, so resuming runs neither the model nor the scorer
        again: only this hook, which gets the reviewer's decision back from ``interrupt``.
        """
        messages = state["messages"]
        answer = messages[-1] if messages else None
        if not isinstance(answer, AIMessage) or REVIEW_KEY in answer.response_metadata:
            return None
        decision = answer.response_metadata.get(METADATA_KEY)
        if not decision or decision.get("guard") != self.name or decision.get("route") != "human":
            return None
        request = AnswerReviewRequest(
            type="semgrad_review", answer=answer.text, result=decision, description=self.review_description
        )
        reply: AnswerReviewDecision = interrupt(request)
        kind = reply.get("type")
        if kind == "approve":
            return {"messages": [_reviewed(answer, {"decision": "approve"})]}
        if kind == "edit" and isinstance(reply.get("answer"), str):
            edited = _reviewed(answer, {"decision": "edit", "original": answer.text})
            return {"messages": [edited.model_copy(update={"content": reply["answer"]})]}
        if kind == "reject":
            reason = reply.get("message")
            note = HumanMessage(REJECTED_NOTE.format(reason=f": {reason}" if reason else ""))
            rejected = _reviewed(answer, {"decision": "reject", "message": reason})
            return {"messages": [rejected, note], "jump_to": "model"}
        raise ValueError(
            f"unexpected review decision {reply!r}: expected {{'type': 'approve'}}, "
            "{'type': 'edit', 'answer': '...'} or {'type': 'reject', 'message': '...'}"
        )

    async def aafter_model(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Async :meth:`after_model` (the interrupt itself does not block)."""
        return self.after_model(state, runtime)


def _final_answer(response: ModelResponse[Any]) -> AIMessage | None:
    """The turn's answer: its last AI message, unless that message calls tools (an intermediate step)."""
    message = next((m for m in reversed(response.result) if isinstance(m, AIMessage)), None)
    return None if message is None or message.tool_calls else message


def _scored_prompt(
    calls: ModelCalls, request: ModelRequest[Any], answer: AIMessage
) -> tuple[Prompt, PromptSource]:
    """The messages the chat model that gave ``answer`` received; the request's, if no call was seen."""
    call = calls.answering_call(answer.text)
    if call is not None:
        return call.prompt, "model_call"
    logger.debug("SemGradMiddleware saw no chat model call: scoring the request's messages")
    system = [request.system_message] if request.system_message is not None else []
    return agent_prompt([*system, *request.messages]), "reconstructed"


def _with_decision(response: ModelResponse[Any], data: dict[str, Any]) -> ModelResponse[Any]:
    """The response with the decision attached to its last AI message (a copy; the input is unchanged)."""
    found = [i for i, m in enumerate(response.result) if isinstance(m, AIMessage)]
    if not found:
        return response
    result, index = list(response.result), found[-1]
    result[index] = attach(result[index], METADATA_KEY, GUARDS_KEY, data)
    return ModelResponse(result=result, structured_response=response.structured_response)


def _reviewed(answer: AIMessage, review: dict[str, Any]) -> AIMessage:
    return answer.model_copy(update={"response_metadata": {**answer.response_metadata, REVIEW_KEY: review}})
