"""`SemGradGuard`: runs the answering step, scores its answer, and routes an untrusted answer by policy.

The guard keeps the answering step's output type (a chat model's message stays a message, a chain's string
stays a string). Message outputs carry a :class:`GuardResult` under ``response_metadata["semgrad"]``; every
call also publishes it as the custom event ``"semgrad_guard"`` (visible to callback handlers and in
``astream_events``), which is where string outputs report it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any, Literal, NamedTuple

from langchain_core.callbacks import (
    AsyncCallbackManagerForChainRun,
    CallbackManagerForChainRun,
    adispatch_custom_event,
    dispatch_custom_event,
)
from langchain_core.documents import Document
from langchain_core.messages import AIMessageChunk, BaseMessageChunk
from langchain_core.prompts import BasePromptTemplate
from langchain_core.runnables import Runnable, RunnableConfig, RunnableSequence, RunnableSerializable
from pydantic import BaseModel, ConfigDict, model_validator
from typing_extensions import Self

from langchain_semgrad._messages import (
    answer_text,
    as_chunk,
    attach,
    input_to_prompt,
    query_of,
    replace_text,
    with_context,
)
from langchain_semgrad.review import ReviewQueue
from semgrad_guard import NoThresholdError, RawField, Score, SemGradError, SemGradScorer, default_scorer
from semgrad_guard.prompts import Prompt

__all__ = ["GuardResult", "LowConfidenceError", "SemGradGuard"]

logger = logging.getLogger(__name__)

Policy = Literal["retrieve", "fallback", "human", "raise", "annotate"]
"""What the guard does with a low-confidence answer."""
Route = Literal["pass", "annotate", "retrieve", "fallback", "human", "raise"]
"""What the guard did: ``"pass"`` means the answer was trusted (or the scorer failed open)."""
ScorerErrorPolicy = Literal["fail_open", "fail_closed"]
"""``"fail_open"``: pass the answer through, flagged. ``"fail_closed"``: route it as low-confidence."""
ReviewHandler = Callable[[Prompt, str, "Score | None"], "str | None"]
"""A custom human-review step: ``(prompt, answer, score) -> replacement answer or None (holding answer)``."""

METADATA_KEY = "semgrad"
CONTEXT_TEMPLATE = "Read this text and answer the question.\n\nText: {context}\n\nQuestion: {question}"
_REROUTES = ("retrieve", "fallback")


class GuardResult(BaseModel):
    """What the guard decided for one call; JSON under ``response_metadata["semgrad"]`` and in the event."""

    model_config = ConfigDict(frozen=True)

    policy: Policy
    route: Route
    flagged: bool
    """The first answer was low-confidence, or could not be scored."""
    low_confidence: bool | None
    """The first answer's verdict (``None`` when the scorer failed)."""
    score: Score | None
    """Score of the first answer."""
    final_score: Score | None
    """Score of the answer returned (the first one unless rerouted; ``None`` for a holding answer)."""
    final_low_confidence: bool | None
    scorer_error: str | None = None
    """The scorer failure, with the fail-open/closed policy in force, when scoring did not succeed."""
    review_id: str | None = None
    documents: int | None = None
    """How many documents the ``retrieve`` route added."""


class LowConfidenceError(SemGradError):
    """Raised by ``policy="raise"``; ``Runnable.with_fallbacks`` can catch it and route elsewhere."""

    code = "low_confidence"

    def __init__(self, message: str, *, result: GuardResult, answer: Any) -> None:
        """Keep the decision and the rejected answer for the handler that catches this."""
        super().__init__(message)
        self.result = result
        self.answer = answer


class _Verdict(NamedTuple):
    """One scoring attempt, judged: the Score or the error, and whether to route it as untrusted."""

    score: Score | None
    low_confidence: bool | None
    error: str | None
    untrusted: bool


class _FirstPass(NamedTuple):
    """The first answer and what to do with it; travels between the steps of one call."""

    input: Any
    first_input: Any
    prompt: Prompt
    answer: Any
    verdict: _Verdict
    route: Route


@lru_cache(maxsize=1)
def _timeout_pool() -> ThreadPoolExecutor:
    """Worker threads for sync scoring with a timeout (a timed-out pass finishes in the background)."""
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="semgrad-guard")


_queue_lock = threading.Lock()


@lru_cache(maxsize=1)
def _default_queue() -> ReviewQueue:
    """The process-wide default review queue, opened on first use."""
    with _queue_lock:
        return ReviewQueue()


class SemGradGuard(RunnableSerializable[Any, Any]):
    """Wraps an answering step, scores each (prompt, answer) with SemGrad, and routes untrusted answers.

    Args:
        runnable: the answering step: a chat model, or a chain whose input becomes the prompt.
        policy: what to do with a low-confidence answer: ``"retrieve"`` (rerun with retrieved context),
            ``"fallback"`` (route to ``fallback``), ``"human"`` (queue for review and return a holding
            answer), ``"raise"`` (:class:`LowConfidenceError`) or ``"annotate"`` (pass through, flagged).
        threshold: untrusted when ``score_field`` exceeds it; ``None`` uses the scorer's calibration.
        score_field: the raw Score field ``threshold`` applies to.
        retriever: any retriever or runnable from a query string to documents (or text), for ``"retrieve"``.
        fallback: the runnable that answers instead, for ``"fallback"``; it gets the original input.
        review_queue: where ``"human"`` puts items (default: the SQLite queue at ``default_review_path()``).
        review_handler: a custom human step ``(prompt, answer, score) -> replacement or None`` used instead
            of the queue.
        holding_answer: returned (in the answering step's output type) while an item awaits review.
        on_scorer_error: ``"fail_open"`` (pass through, flagged) or ``"fail_closed"`` (route as untrusted)
            when scoring raises or times out; either way a warning is logged and the metadata says so.
        scorer_timeout: seconds a score may take before it counts as failed (``None``: no limit).
        scorer: the scorer; ``None`` shares the process-wide ``semgrad_guard.default_scorer()``.
        prompt: renders dict inputs into the scored prompt (default: the chain's leading prompt template).
        input_key: the dict key holding the question (query and fallback prompt for dict inputs).
        context_key: the dict key that receives retrieved context (set to ``""`` on the first pass).
        context_template: how context joins a string or last human turn (``{context}``, ``{question}``).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    runnable: Runnable[Any, Any]
    policy: Policy = "annotate"
    threshold: float | None = None
    score_field: RawField = "semgrad"
    retriever: Runnable[Any, Any] | None = None
    fallback: Runnable[Any, Any] | None = None
    review_queue: ReviewQueue | None = None
    review_handler: ReviewHandler | None = None
    holding_answer: str = "A reviewer will check this answer and get back to you."
    on_scorer_error: ScorerErrorPolicy = "fail_open"
    scorer_timeout: float | None = None
    scorer: SemGradScorer | None = None
    prompt: BasePromptTemplate[Any] | None = None
    input_key: str = "question"
    context_key: str = "context"
    context_template: str = CONTEXT_TEMPLATE
    event_name: str = "semgrad_guard"

    def __init__(self, runnable: Runnable[Any, Any], **kwargs: Any) -> None:
        """Take the answering step positionally: ``SemGradGuard(llm, policy="retrieve", ...)``."""
        super().__init__(runnable=runnable, **kwargs)

    @model_validator(mode="after")
    def _check_policy(self) -> Self:
        if self.policy == "retrieve" and self.retriever is None:
            raise ValueError("policy='retrieve' needs retriever= (a retriever or runnable giving documents)")
        if self.policy == "fallback" and self.fallback is None:
            raise ValueError("policy='fallback' needs fallback= (the runnable that answers instead)")
        runnable = self.runnable
        if self.prompt is None and isinstance(runnable, RunnableSequence):
            self.prompt = runnable.first if isinstance(runnable.first, BasePromptTemplate) else None
        return self

    @property
    def InputType(self) -> Any:
        """The answering step's input type."""
        return self.runnable.InputType

    @property
    def OutputType(self) -> Any:
        """The answering step's output type: the guard does not change it."""
        return self.runnable.OutputType

    # ------------------------------------------------------------------------------ shared, no I/O
    def _scorer(self) -> SemGradScorer:
        return self.scorer if self.scorer is not None else default_scorer()

    def _prompt_of(self, value: Any) -> Prompt:
        if self.prompt is not None and isinstance(value, dict):
            return input_to_prompt(self.prompt.invoke(value), input_key=self.input_key)
        return input_to_prompt(value, input_key=self.input_key)

    def _first_input(self, input_: Any) -> Any:
        if self.policy == "retrieve" and isinstance(input_, dict) and self.context_key not in input_:
            return {**input_, self.context_key: ""}
        return input_

    def _verdict(self, attempt: Score | Exception) -> _Verdict:
        """Judge one scoring attempt; a failure follows ``on_scorer_error`` (a missing threshold raises)."""
        if isinstance(attempt, Score):
            try:
                low = attempt.untrusted(self.threshold, self.score_field)
            except NoThresholdError:
                raise
            except SemGradError as exc:
                attempt = exc
            else:
                return _Verdict(attempt, low, None, low)
        closed = self.on_scorer_error == "fail_closed"
        reason = f"{type(attempt).__name__}: {attempt} ({self.on_scorer_error})"
        logger.warning(
            "SemGrad scoring failed, %s: %s",
            "failing closed (routing as low-confidence)" if closed else "failing open (passing, flagged)",
            reason,
        )
        return _Verdict(None, None, reason, closed)

    def _route(self, verdict: _Verdict) -> Route:
        return self.policy if verdict.untrusted else "pass"

    def _judged(
        self, input_: Any, first_input: Any, prompt: Prompt, answer: Any, attempt: Score | Exception
    ) -> _FirstPass:
        verdict = self._verdict(attempt)
        return _FirstPass(input_, first_input, prompt, answer, verdict, self._route(verdict))

    def _result(self, first: _FirstPass, final: _Verdict | None, **extra: Any) -> GuardResult:
        return GuardResult(
            policy=self.policy,
            route=first.route,
            flagged=first.verdict.low_confidence is not False,
            low_confidence=first.verdict.low_confidence,
            score=first.verdict.score,
            final_score=final.score if final is not None else None,
            final_low_confidence=final.low_confidence if final is not None else None,
            scorer_error=first.verdict.error or (final.error if final is not None else None),
            **extra,
        )

    def _rejected(self, first: _FirstPass) -> LowConfidenceError:
        result = self._result(first, first.verdict)
        detail = first.verdict.error or f"{self.score_field}={getattr(first.verdict.score, self.score_field)}"
        return LowConfidenceError(f"low-confidence answer ({detail})", result=result, answer=first.answer)

    def _reroute(self, first: _FirstPass, context: str | None) -> tuple[Runnable[Any, Any], Any]:
        """The runnable to ask again and its input: the step with context, or the fallback."""
        if first.route == "fallback":
            assert self.fallback is not None
            return self.fallback, first.input
        assert context is not None
        rerun = with_context(
            first.input,
            context,
            template=self.context_template,
            input_key=self.input_key,
            context_key=self.context_key,
        )
        return self.runnable, rerun

    def _query(self, first: _FirstPass) -> str:
        return query_of(input_to_prompt(first.input, input_key=self.input_key))

    def _hold(self, first: _FirstPass) -> tuple[Any, GuardResult]:
        """The ``human`` route: queue (or hand to the custom handler) and return the holding answer."""
        text, score = answer_text(first.answer), first.verdict.score
        review_id = None
        if self.review_handler is not None:
            replacement = self.review_handler(first.prompt, text, score)
        else:
            queue = self.review_queue if self.review_queue is not None else _default_queue()
            details = {"policy": self.policy, "scorer_error": first.verdict.error}
            review_id, replacement = queue.add(first.prompt, text, score, details).id, None
        holding = replace_text(first.answer, replacement or self.holding_answer)
        return holding, self._result(first, None, review_id=review_id)

    def _settle(self, first: _FirstPass) -> tuple[Any, GuardResult]:
        """The routes that need no second answer: pass, annotate, human (raise is handled before)."""
        if first.route == "human":
            return self._hold(first)
        return first.answer, self._result(first, first.verdict)

    def _publish(self, output: Any, result: GuardResult) -> tuple[Any, dict[str, Any]]:
        data = result.model_dump(mode="json")
        return attach(output, METADATA_KEY, data), data

    # ------------------------------------------------------------------------------------ sync I/O
    def _score(self, prompt: Prompt, answer: Any) -> Score | Exception:
        scorer = self._scorer()
        try:
            text = answer_text(answer) if answer is not None else ""
            if self.scorer_timeout is None:
                return scorer.score(prompt, text)
            return _timeout_pool().submit(scorer.score, prompt, text).result(timeout=self.scorer_timeout)
        except Exception as exc:  # the scorer's failures go to on_scorer_error, whatever they are
            return exc

    def _first_pass(self, input_: Any, config: RunnableConfig) -> _FirstPass:
        first_input = self._first_input(input_)
        prompt = self._prompt_of(first_input)
        answer = self.runnable.invoke(first_input, config)
        first = self._judged(input_, first_input, prompt, answer, self._score(prompt, answer))
        if first.route == "raise":
            error = self._rejected(first)
            dispatch_custom_event(self.event_name, error.result.model_dump(mode="json"), config=config)
            raise error
        return first

    def _second_step(self, first: _FirstPass, config: RunnableConfig) -> tuple[Runnable[Any, Any], Any, int]:
        if first.route == "fallback":
            return (*self._reroute(first, None), 0)
        assert self.retriever is not None
        documents = _as_documents(self.retriever.invoke(self._query(first), config))
        return (*self._reroute(first, _context(documents)), len(documents))

    def _guard(self, input_: Any, run_manager: CallbackManagerForChainRun, config: RunnableConfig) -> Any:
        first = self._first_pass(input_, config)
        if first.route in _REROUTES:
            step, step_input, documents = self._second_step(first, config)
            final = step.invoke(step_input, config)
            verdict = self._verdict(self._score(self._prompt_of(step_input), final))
            result = self._result(first, verdict, documents=documents if first.route == "retrieve" else None)
        else:
            final, result = self._settle(first)
        output, data = self._publish(final, result)
        dispatch_custom_event(self.event_name, data, config=config)
        return output

    def _guard_stream(
        self, inputs: Iterator[Any], run_manager: CallbackManagerForChainRun, config: RunnableConfig
    ) -> Iterator[Any]:
        first = self._first_pass(_single(inputs), config)
        if first.route not in _REROUTES:
            final, result = self._settle(first)
            output, data = self._publish(final, result)
            dispatch_custom_event(self.event_name, data, config=config)
            yield as_chunk(output)
            return
        step, step_input, documents = self._second_step(first, config)
        buffered: Any = None
        for chunk in step.stream(step_input, config):
            buffered = chunk if buffered is None else buffered + chunk
            yield chunk
        verdict = self._verdict(self._score(self._prompt_of(step_input), buffered))
        result = self._result(first, verdict, documents=documents if first.route == "retrieve" else None)
        data = result.model_dump(mode="json")
        dispatch_custom_event(self.event_name, data, config=config)
        if isinstance(buffered, BaseMessageChunk):
            yield AIMessageChunk(content="", response_metadata={METADATA_KEY: data})

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Answer, score, and route by policy; the output keeps the answering step's type."""
        return self._call_with_config(self._guard, input, config, **kwargs)

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        """Buffer and score the first answer, then stream the chosen route's output (metadata chunk last)."""
        yield from self._transform_stream_with_config(iter([input]), self._guard_stream, config, **kwargs)

    # ----------------------------------------------------------------------------------- async I/O
    async def _ascore(self, prompt: Prompt, answer: Any) -> Score | Exception:
        scorer = self._scorer()
        try:
            text = answer_text(answer) if answer is not None else ""
            return await asyncio.wait_for(scorer.ascore(prompt, text), self.scorer_timeout)
        except Exception as exc:  # the scorer's failures go to on_scorer_error, whatever they are
            return exc

    async def _afirst_pass(self, input_: Any, config: RunnableConfig) -> _FirstPass:
        first_input = self._first_input(input_)
        prompt = self._prompt_of(first_input)
        answer = await self.runnable.ainvoke(first_input, config)
        first = self._judged(input_, first_input, prompt, answer, await self._ascore(prompt, answer))
        if first.route == "raise":
            error = self._rejected(first)
            await adispatch_custom_event(self.event_name, error.result.model_dump(mode="json"), config=config)
            raise error
        return first

    async def _asecond_step(
        self, first: _FirstPass, config: RunnableConfig
    ) -> tuple[Runnable[Any, Any], Any, int]:
        if first.route == "fallback":
            return (*self._reroute(first, None), 0)
        assert self.retriever is not None
        documents = _as_documents(await self.retriever.ainvoke(self._query(first), config))
        return (*self._reroute(first, _context(documents)), len(documents))

    async def _asettle(self, first: _FirstPass) -> tuple[Any, GuardResult]:
        if first.route == "human":  # the review queue and custom handlers block: keep them off the loop
            return await asyncio.to_thread(self._hold, first)
        return self._settle(first)

    async def _aguard(
        self, input_: Any, run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig
    ) -> Any:
        first = await self._afirst_pass(input_, config)
        if first.route in _REROUTES:
            step, step_input, documents = await self._asecond_step(first, config)
            final = await step.ainvoke(step_input, config)
            verdict = self._verdict(await self._ascore(self._prompt_of(step_input), final))
            result = self._result(first, verdict, documents=documents if first.route == "retrieve" else None)
        else:
            final, result = await self._asettle(first)
        output, data = self._publish(final, result)
        await adispatch_custom_event(self.event_name, data, config=config)
        return output

    async def _aguard_stream(
        self, inputs: AsyncIterator[Any], run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig
    ) -> AsyncIterator[Any]:
        first = await self._afirst_pass(await _asingle(inputs), config)
        if first.route not in _REROUTES:
            final, result = await self._asettle(first)
            output, data = self._publish(final, result)
            await adispatch_custom_event(self.event_name, data, config=config)
            yield as_chunk(output)
            return
        step, step_input, documents = await self._asecond_step(first, config)
        buffered: Any = None
        async for chunk in step.astream(step_input, config):
            buffered = chunk if buffered is None else buffered + chunk
            yield chunk
        verdict = self._verdict(await self._ascore(self._prompt_of(step_input), buffered))
        result = self._result(first, verdict, documents=documents if first.route == "retrieve" else None)
        data = result.model_dump(mode="json")
        await adispatch_custom_event(self.event_name, data, config=config)
        if isinstance(buffered, BaseMessageChunk):
            yield AIMessageChunk(content="", response_metadata={METADATA_KEY: data})

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Async :meth:`invoke`; scoring runs in a worker thread, never on the event loop."""
        return await self._acall_with_config(self._aguard, input, config, **kwargs)

    async def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        """Async :meth:`stream`."""

        async def single() -> AsyncIterator[Any]:
            yield input

        stream = self._atransform_stream_with_config(single(), self._aguard_stream, config, **kwargs)
        async for chunk in stream:
            yield chunk


def _as_documents(retrieved: Any) -> list[Document]:
    """A retriever's output as documents (a runnable may return one string or a list of strings)."""
    items: Sequence[Any] = [retrieved] if isinstance(retrieved, (str, Document)) else retrieved
    return [item if isinstance(item, Document) else Document(page_content=str(item)) for item in items]


def _context(documents: Sequence[Document]) -> str:
    return "\n\n".join(document.page_content for document in documents)


def _single(inputs: Iterator[Any]) -> Any:
    return next(iter(inputs))


async def _asingle(inputs: AsyncIterator[Any]) -> Any:
    async for value in inputs:
        return value
    raise ValueError("SemGradGuard.astream got no input")
