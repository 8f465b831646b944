"""Callback handlers that score every chat-model or LLM call they observe, keyed by ``run_id``.

The prompt is taken from ``on_chat_model_start`` / ``on_llm_start`` and the answer from ``on_llm_end``; each
result goes to a user hook, to the custom event ``"semgrad_score"`` (when the call runs inside a chain), and
to a bounded map queryable by run id: the model call's own, or that of any chain, tool or retriever run
above it. A prompt waits in a run-keyed map under a lock between start and end and is dropped on end or
error, so concurrent runs never see each other's data and errors leave nothing. An AI message that only
calls tools (an agent step) is not an answer: it is skipped, without a warning.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from uuid import UUID

from langchain_core.callbacks import (
    AsyncCallbackHandler,
    BaseCallbackHandler,
    adispatch_custom_event,
    dispatch_custom_event,
)
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from pydantic import BaseModel, ConfigDict

from langchain_semgrad._messages import calls_tools_only, messages_to_prompt
from semgrad_guard import RawField, Score, Scorer, default_scorer
from semgrad_guard.prompts import Prompt

__all__ = ["AsyncSemGradCallbackHandler", "ScoredRun", "SemGradCallbackHandler"]

logger = logging.getLogger(__name__)

LINKS_PER_RESULT = 16
"""Parent links (run -> parent run) kept per kept result, for :meth:`get` by an ancestor's run id."""


class ScoredRun(BaseModel):
    """The score of one observed model call (or why it could not be scored)."""

    model_config = ConfigDict(frozen=True)

    run_id: UUID
    parent_run_id: UUID | None = None
    prompt: str | list[dict[str, str]]
    answer: str
    score: Score | None
    low_confidence: bool | None
    """From ``threshold`` if the handler has one, else the calibration; ``None`` when neither exists."""
    error: str | None = None


ScoreHook = Callable[[ScoredRun], Any]
"""Called with each result; the async handler awaits it when it returns an awaitable."""


class _ScoringState:
    """What both handlers share: settings, the in-flight prompts and the recent results, under one lock."""

    def __init__(
        self,
        scorer: Scorer | None = None,
        *,
        on_score: ScoreHook | None = None,
        max_results: int = 1000,
        threshold: float | None = None,
        score_field: RawField = "semgrad",
        event_name: str = "semgrad_score",
    ) -> None:
        """Configure the handler; no model is loaded until the first score."""
        if max_results < 1:
            raise ValueError("max_results must be at least 1")
        self.scorer = scorer
        self.on_score = on_score
        self.max_results = max_results
        self.threshold = threshold
        self.score_field: RawField = score_field
        self.event_name = event_name
        self._lock = threading.Lock()
        self._prompts: dict[UUID, Prompt] = {}
        self._results: OrderedDict[UUID, ScoredRun] = OrderedDict()
        self._parents: OrderedDict[UUID, UUID | None] = OrderedDict()  # recent runs' parents
        self._below: OrderedDict[UUID, UUID] = OrderedDict()  # an ancestor -> its last scored model run

    def get(self, run_id: UUID) -> ScoredRun | None:
        """The result of a recent model call (the last ``max_results`` are kept), or ``None``.

        ``run_id`` is the model call's run id, or that of any run above it: the chain you invoked with
        ``{"run_id": ...}``, a tool, a retriever. Then it is the last model call scored below that run.
        """
        with self._lock:
            found = self._results.get(run_id)
            below = self._below.get(run_id)
            return found if found is not None or below is None else self._results.get(below)

    @property
    def results(self) -> list[ScoredRun]:
        """The kept results, oldest first (a copy)."""
        with self._lock:
            return list(self._results.values())

    @property
    def in_flight(self) -> int:
        """Runs started and not yet ended or failed: zero once every observed call is over."""
        with self._lock:
            return len(self._prompts)

    def _scorer(self) -> Scorer:
        return self.scorer if self.scorer is not None else default_scorer()

    def _link(self, run_id: UUID, parent_run_id: UUID | None) -> None:
        """Remember a run's parent, so a score can be found by any ancestor's run id."""
        with self._lock:
            self._parents[run_id] = parent_run_id
            self._trim(self._parents)

    def _on_start(self, *_: Any, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        """A chain, tool or retriever run started: link it to its parent (model calls can run inside any)."""
        self._link(run_id, parent_run_id)

    async def _aon_start(
        self, *_: Any, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        """Async :meth:`_on_start`."""
        self._link(run_id, parent_run_id)

    def _trim(self, links: OrderedDict[UUID, Any]) -> None:
        while len(links) > LINKS_PER_RESULT * self.max_results:
            links.popitem(last=False)

    def _begin(self, run_id: UUID, prompt: Prompt) -> None:
        with self._lock:
            self._prompts[run_id] = prompt

    def _forget(self, run_id: UUID) -> None:
        with self._lock:
            self._prompts.pop(run_id, None)

    def _end(self, run_id: UUID, response: LLMResult) -> tuple[Prompt, str] | None:
        """Take the run's prompt out of the map and pair it with the first generation's text.

        ``None`` when there is nothing to score: no prompt or generation, or a message that only calls tools.
        """
        with self._lock:
            prompt = self._prompts.pop(run_id, None)
        if prompt is None or not response.generations or not response.generations[0]:
            return None
        generation = response.generations[0][0]
        if isinstance(generation, ChatGeneration) and calls_tools_only(generation.message):
            logger.debug("run %s only calls tools: not scored", run_id)
            return None
        return prompt, generation.text

    def _record(
        self, run_id: UUID, parent_run_id: UUID | None, pair: tuple[Prompt, str], attempt: Score | Exception
    ) -> ScoredRun:
        prompt, answer = pair
        score, error, low = None, None, None
        if isinstance(attempt, Score):
            score = attempt
            low = (
                attempt.untrusted(self.threshold, self.score_field)
                if self.threshold is not None
                else attempt.low_confidence
            )
        else:
            error = f"{type(attempt).__name__}: {attempt}"
            logger.warning("SemGrad could not score run %s: %s", run_id, error)
        stored = prompt if isinstance(prompt, str) else [dict(m) for m in prompt]
        scored = ScoredRun(
            run_id=run_id,
            parent_run_id=parent_run_id,
            prompt=stored,
            answer=answer,
            score=score,
            low_confidence=low,
            error=error,
        )
        with self._lock:
            self._results[run_id] = scored
            while len(self._results) > self.max_results:
                self._results.popitem(last=False)
            ancestor, seen = parent_run_id, set()
            while ancestor is not None and ancestor not in seen:  # every run above: this is its latest
                seen.add(ancestor)
                self._below[ancestor] = run_id
                self._below.move_to_end(ancestor)
                if ancestor in self._parents:  # an active run's link is kept longest
                    self._parents.move_to_end(ancestor)
                ancestor = self._parents.get(ancestor)
            self._trim(self._below)
        return scored


def _chat_prompt(messages: list[list[BaseMessage]]) -> Prompt:
    return messages_to_prompt(messages[0])


class SemGradCallbackHandler(_ScoringState, BaseCallbackHandler):
    """Scores each observed model call when it ends (in the calling thread, or LangChain's executor).

    Args:
        scorer: the scorer; ``None`` shares ``semgrad_guard.default_scorer()``. With a remote provider the
            local model scores the pair as a proxy; with a local model sharing its weights it scores itself.
        on_score: hook called with each :class:`ScoredRun` (its errors are logged, never raised).
        max_results: how many recent results :meth:`get` can return.
        threshold: raw threshold on ``score_field`` for ``low_confidence`` (else the calibration's).
        score_field: the Score field ``threshold`` applies to.
        event_name: name of the custom event each result is published as.
    """

    def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[BaseMessage]], *, run_id: UUID, **kwargs: Any
    ) -> None:
        """Remember the chat prompt until the run ends."""
        self._begin(run_id, _chat_prompt(messages))

    def on_llm_start(
        self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID, **kwargs: Any
    ) -> None:
        """Remember the text prompt (one user turn) until the run ends."""
        self._begin(run_id, prompts[0])

    on_chain_start = on_tool_start = on_retriever_start = _ScoringState._on_start

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """Drop the failed run's prompt."""
        self._forget(run_id)

    def on_llm_end(
        self, response: LLMResult, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        """Score the answer, keep the result, and publish it."""
        pair = self._end(run_id, response)
        if pair is None:
            return
        try:
            attempt: Score | Exception = self._scorer().score(*pair)
        except Exception as exc:  # recorded with the result, never raised into the observed chain
            attempt = exc
        scored = self._record(run_id, parent_run_id, pair, attempt)
        if self.on_score is not None:
            try:
                self.on_score(scored)
            except Exception:
                logger.exception("the on_score hook failed for run %s", run_id)
        try:
            dispatch_custom_event(self.event_name, scored.model_dump(mode="json"))
        except RuntimeError:  # the model ran outside any chain: there is no parent run to attach it to
            logger.debug("no parent run for the %s event of run %s", self.event_name, run_id)


class AsyncSemGradCallbackHandler(_ScoringState, AsyncCallbackHandler):
    """Async variant: the score is awaited in a worker thread, so the event loop never blocks.

    Takes the same arguments as :class:`SemGradCallbackHandler`; ``on_score`` may be a coroutine function.
    """

    async def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[BaseMessage]], *, run_id: UUID, **kwargs: Any
    ) -> None:
        """Remember the chat prompt until the run ends."""
        self._begin(run_id, _chat_prompt(messages))

    async def on_llm_start(
        self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID, **kwargs: Any
    ) -> None:
        """Remember the text prompt (one user turn) until the run ends."""
        self._begin(run_id, prompts[0])

    on_chain_start = on_tool_start = on_retriever_start = _ScoringState._aon_start

    async def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """Drop the failed run's prompt."""
        self._forget(run_id)

    async def on_llm_end(
        self, response: LLMResult, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        """Score the answer, keep the result, and publish it."""
        pair = self._end(run_id, response)
        if pair is None:
            return
        try:
            attempt: Score | Exception = await self._scorer().ascore(*pair)
        except Exception as exc:  # recorded with the result, never raised into the observed chain
            attempt = exc
        scored = self._record(run_id, parent_run_id, pair, attempt)
        if self.on_score is not None:
            try:
                outcome = self.on_score(scored)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                logger.exception("the on_score hook failed for run %s", run_id)
        try:
            await adispatch_custom_event(self.event_name, scored.model_dump(mode="json"))
        except RuntimeError:  # the model ran outside any chain: there is no parent run to attach it to
            logger.debug("no parent run for the %s event of run %s", self.event_name, run_id)
