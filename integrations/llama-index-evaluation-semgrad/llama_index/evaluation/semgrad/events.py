"""Automatic scoring through LlamaIndex instrumentation: every LLM answer (and query) gets a Score event.

Inside a workflow agent (``FunctionAgent``, ``ReActAgent``, ``AgentWorkflow``) each score also says where it
sits in the run (:data:`AgentStep`), so the final answers can be told from the steps that led to them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import threading
from collections.abc import Iterable
from typing import Any, Literal

from llama_index.core.agent.react.output_parser import extract_tool_use
from llama_index.core.base.llms.types import ChatMessage, ToolCallBlock
from llama_index.core.base.response.schema import Response
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.llm import LLMChatEndEvent, LLMCompletionEndEvent
from llama_index.core.instrumentation.events.query import QueryEndEvent
from llama_index.core.prompts import BasePromptTemplate
from llama_index.core.schema import QueryBundle
from llama_index.evaluation.semgrad._prompts import qa_prompt, response_contexts
from llama_index.evaluation.semgrad.agents import agent_messages, message_text
from llama_index.evaluation.semgrad.llm import SELF_SCORE_KEY
from llama_index_instrumentation import get_dispatcher

from semgrad_guard import Score, Scorer, default_scorer

__all__ = ["AgentStep", "ScoreSource", "SemGradEventHandler", "SemGradScoreEvent", "agent_answers"]

logger = logging.getLogger(__name__)

DISPATCHER_NAME = "llama_index.evaluation.semgrad"

ScoreSource = Literal["llm_chat", "llm_completion", "query"]
"""Which event was scored."""
AgentStep = Literal["final_answer", "intermediate"]
"""Where a score sits in an agent run: ``"final_answer"``, an agent's LLM turn that calls no tool (the run
ends with it); ``"intermediate"``, a turn that calls tools (function calling, or a ReAct ``Action:``), or an
LLM call or query made inside a tool."""
STEP_INPUT_TAG = "llamaindex.step.input_event"
"""The instrumentation tag LlamaIndex workflows put on the events of a step: the step's input event type."""
_AGENT_TURNS = ("AgentSetup", "AgentOutput")  # the agent's own LLM turn, and its early-stopping answer
_IN_TOOL = "ToolCall"


class SemGradScoreEvent(BaseEvent):
    """The Score of one LLM answer or query response, dispatched by :class:`SemGradEventHandler`.

    ``span_id`` is the span of the event that was scored, so tracing tools file it next to that call.
    """

    score: Score
    source: ScoreSource
    source_event_id: str = Field(description="id_ of the scored LLM or query end event.")
    prompt: str | list[dict[str, str]] = Field(description="The prompt that was scored.")
    answer: str
    reused: bool = Field(default=False, description="The Score came with the response; no new pass ran.")
    step: AgentStep | None = Field(
        default=None, description="Final answer or intermediate step of an agent run; None outside agents."
    )

    @classmethod
    def class_name(cls) -> str:
        """Class name."""
        return "SemGradScoreEvent"


class _Job:
    """What to score for one event (or the Score it already carries)."""

    __slots__ = ("answer", "event", "prompt", "score", "source", "step")

    def __init__(
        self,
        event: BaseEvent,
        source: ScoreSource,
        prompt: str | list[dict[str, str]],
        answer: str,
        step: AgentStep | None,
    ) -> None:
        self.event, self.source, self.prompt, self.answer, self.step = event, source, prompt, answer, step
        self.score: Score | None = None


class SemGradEventHandler(BaseEventHandler):
    """Scores every LLM chat/completion end and query end it sees, and dispatches a SemGradScoreEvent.

    Register it on the root dispatcher::

        handler = SemGradEventHandler()
        get_dispatcher().add_event_handler(handler)

    LlamaIndex calls handlers synchronously, also from inside async pipelines. With ``mode="auto"`` the
    handler scores inline when no event loop runs in the calling thread (a sync pipeline waits for the pass,
    as it waits for the LLM) and hands the pass to one background worker thread when a loop runs there, so
    an async pipeline is never blocked; :meth:`flush` waits for background scores. A scorer error never
    reaches the pipeline: it is logged and the event carries an invalid Score. The handler ignores its own
    events, so dispatching them cannot recurse.

    Attributes:
        scorer: ``None`` = the shared :func:`semgrad_guard.default_scorer`.
        score_llm_calls: score ``LLMChatEndEvent`` (prompt = the messages sent) and ``LLMCompletionEndEvent``
            (prompt = the completion prompt, as one user turn).
        score_queries: score ``QueryEndEvent`` (prompt = query + source nodes under the QA template).
        mode: ``"auto"``, ``"sync"`` (always inline) or ``"background"`` (always on the worker thread).
        reuse_attached_scores: when a response already carries a Score (``SemGradLocalLLM``'s self-score,
            ``SemGradQueryEngine``'s metadata) dispatch that one instead of running another pass.
        qa_template: the QA template used for query prompts (default LlamaIndex's text-QA selector).
        llm: the answering LLM, only to choose the chat or completion QA template variant.
    """

    scorer: Scorer | None = Field(default=None, exclude=True)
    score_llm_calls: bool = True
    score_queries: bool = True
    mode: Literal["auto", "sync", "background"] = "auto"
    reuse_attached_scores: bool = True
    qa_template: BasePromptTemplate | None = Field(default=None, exclude=True)
    llm: Any = Field(default=None, exclude=True)
    _executor: concurrent.futures.ThreadPoolExecutor | None = PrivateAttr(default=None)
    _pending: set[concurrent.futures.Future[None]] = PrivateAttr(default_factory=set)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @classmethod
    def class_name(cls) -> str:
        """Class name."""
        return "SemGradEventHandler"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        """Score ``event`` if it is an LLM or query end (inline or in the background, see the class doc)."""
        del kwargs  # Unused
        if isinstance(event, SemGradScoreEvent):
            return
        try:
            job = self._job(event)
        except Exception:  # a malformed event must not break the pipeline
            logger.exception("SemGrad could not read %s", event.class_name())
            return
        if job is None:
            return
        if self.mode == "background" or (self.mode == "auto" and _loop_running()):
            self._submit(job)
        else:
            self._run(job)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every background score has been dispatched (or ``timeout`` seconds pass)."""
        with self._lock:
            pending = list(self._pending)
        concurrent.futures.wait(pending, timeout=timeout)

    def close(self) -> None:
        """Finish pending scores and stop the worker thread (a later event starts a new one)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    # ----------------------------------------------------------------------------------------- internals
    def _job(self, event: BaseEvent) -> _Job | None:
        if isinstance(event, LLMChatEndEvent) and self.score_llm_calls:
            if event.response is None:
                return None
            message = event.response.message
            step = _agent_step(event, _calls_tools(message))
            job = _Job(event, "llm_chat", agent_messages(event.messages), message_text(message), step)
            job.score = self._attached(event.response.additional_kwargs)
            return job
        if isinstance(event, LLMCompletionEndEvent) and self.score_llm_calls:
            step = _agent_step(event, _is_react_action(event.response.text))
            job = _Job(event, "llm_completion", event.prompt, event.response.text, step)
            job.score = self._attached(event.response.additional_kwargs)
            return job
        if isinstance(event, QueryEndEvent) and self.score_queries:
            if not isinstance(event.response, Response) or event.response.response is None:
                logger.debug("SemGrad skips a %s query response", type(event.response).__name__)
                return None
            query = event.query.query_str if isinstance(event.query, QueryBundle) else str(event.query)
            contexts = response_contexts(event.response)
            prompt = qa_prompt(query, contexts, self.qa_template, self.llm) if contexts else query
            job = _Job(event, "query", prompt, event.response.response, _agent_step(event, False))
            metadata = event.response.metadata or {}
            # after a fallback route the attached Score is the primary answer's, not this one's
            job.score = self._attached(metadata) if metadata.get("semgrad_route") == "primary" else None
            return job
        return None

    def _attached(self, extras: dict[str, Any]) -> Score | None:
        score = extras.get(SELF_SCORE_KEY)
        if not self.reuse_attached_scores:
            return None
        if isinstance(score, dict):  # a guard's JSON metadata
            try:
                return Score.model_validate(score)
            except ValueError:
                return None
        return score if isinstance(score, Score) else None

    def _submit(self, job: _Job) -> None:
        context = contextvars.copy_context()  # keep the caller's instrumentation tags and span
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="semgrad-events")
            future = self._executor.submit(context.run, self._run, job)
            self._pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: concurrent.futures.Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)

    def _run(self, job: _Job) -> None:
        score, reused = job.score, job.score is not None
        if score is None:
            scorer = self.scorer if self.scorer is not None else default_scorer()
            try:
                score = scorer.score(job.prompt, job.answer, errors="mark")
            except Exception as exc:  # scoring must never break the pipeline
                logger.exception("SemGrad scoring failed for %s", job.event.class_name())
                score = Score.invalid(f"error: {type(exc).__name__}: {exc}", model="unknown")
        try:
            get_dispatcher(DISPATCHER_NAME).event(
                SemGradScoreEvent(
                    score=score,
                    source=job.source,
                    source_event_id=job.event.id_,
                    prompt=job.prompt,
                    answer=job.answer,
                    reused=reused,
                    step=job.step,
                    span_id=job.event.span_id,
                )
            )
        except Exception:
            logger.exception("SemGrad could not dispatch its score event")


def agent_answers(events: Iterable[BaseEvent], below: float | None = None) -> list[SemGradScoreEvent]:
    """The scores of agents' final answers among ``events`` (any events, e.g. a log), least confident first.

    ``below``: only the answers whose calibrated confidence is under it (an uncalibrated Score has no
    confidence, so none qualifies). Invalid scores (the answer could not be scored) are left out.
    """
    answers = [
        e for e in events if isinstance(e, SemGradScoreEvent) and e.step == "final_answer" and e.score.valid
    ]
    if below is not None:
        answers = [e for e in answers if e.score.confidence is not None and e.score.confidence < below]
    return sorted(answers, key=lambda e: (e.score.confidence is None, e.score.confidence or 0.0))


def _agent_step(event: BaseEvent, calls_tools: bool) -> AgentStep | None:
    """Where ``event`` sits in an agent run, from the workflow step it happened in (``None``: no agent)."""
    where = event.tags.get(STEP_INPUT_TAG)
    if where in _AGENT_TURNS:
        return "intermediate" if calls_tools else "final_answer"
    return "intermediate" if where == _IN_TOOL else None


def _calls_tools(message: ChatMessage) -> bool:
    return any(isinstance(block, ToolCallBlock) for block in message.blocks) or _is_react_action(
        message.content or ""
    )


def _is_react_action(text: str) -> bool:
    """A ReAct reply that calls a tool (``Action:`` and ``Action Input:``), as the ReAct parser reads it."""
    try:
        extract_tool_use(text)
    except ValueError:
        return False
    return True


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
