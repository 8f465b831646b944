"""`SemGradGuard`: runs the answering step, scores its answer, and routes an untrusted answer by policy.

The guard keeps the answering step's output type (a chat model's message stays a message, a chain's string
stays a string). Message outputs carry a :class:`GuardResult` under ``response_metadata["semgrad"]`` (this
guard's) and ``response_metadata["semgrad_guards"]`` (every nested guard's, innermost first); every call
also publishes it as the custom event ``"semgrad_guard"`` and as the traced child run ``semgrad_decision``,
which is where string outputs report it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from langchain_core.callbacks import AsyncCallbackManagerForChainRun, CallbackManagerForChainRun
from langchain_core.documents import Document
from langchain_core.messages import AIMessageChunk, BaseMessageChunk
from langchain_core.prompts import BasePromptTemplate
from langchain_core.runnables import Runnable, RunnableConfig, RunnableSequence, RunnableSerializable
from pydantic import BaseModel, ConfigDict, field_validator, model_validator
from typing_extensions import Self

from langchain_semgrad._capture import ModelCalls
from langchain_semgrad._effects import (
    END,
    Dispatch,
    Emit,
    Invoke,
    Next,
    Offload,
    ScoreAnswer,
    Steps,
    Trace,
    adrive,
    drive,
)
from langchain_semgrad._messages import (
    answer_text,
    as_chunk,
    as_documents,
    attach,
    calls_tools_only,
    detach,
    input_to_prompt,
    query_of,
    replace_text,
    with_context,
)
from langchain_semgrad.review import ReviewQueue, ReviewQueueError, valid_unicode
from semgrad_guard import (
    InvalidInputError,
    NoThresholdError,
    RawField,
    Score,
    Scorer,
    SemGradError,
    default_scorer,
)
from semgrad_guard.prompts import Prompt
from semgrad_guard.results import check_decision

if TYPE_CHECKING:
    from langchain_core.runnables.graph import Graph
    from langchain_core.runnables.utils import ConfigurableFieldSpec
    from langchain_core.utils.pydantic import TypeBaseModel

__all__ = ["GuardResult", "LowConfidenceError", "SemGradGuard"]

logger = logging.getLogger(__name__)

Policy = Literal["retrieve", "fallback", "human", "raise", "annotate"]
"""What the guard does with a low-confidence answer."""
AgentPolicy = Literal["fallback", "human", "retry", "raise", "annotate"]
"""What ``SemGradMiddleware`` does with a low-confidence final answer of an agent."""
PromptSource = Literal["model_call", "reconstructed"]
"""Where the scored prompt came from: the model call that gave the answer, or rebuilt from the input."""
Route = Literal["pass", "annotate", "retrieve", "fallback", "human", "raise", "retry"]
"""What the guard did: ``"pass"`` means the answer was trusted (or the scorer failed open)."""
ScorerErrorPolicy = Literal["fail_open", "fail_closed"]
"""``"fail_open"``: pass the answer through, flagged. ``"fail_closed"``: route it as low-confidence."""
ReviewHandler = Callable[[Prompt, str, "Score | None"], "str | None"]
"""A custom human-review step: ``(prompt, answer, score) -> replacement answer or None (holding answer)``."""

METADATA_KEY = "semgrad"
GUARDS_KEY = "semgrad_guards"
TOOL_CALLS_ONLY = "the answer only calls tools (an agent step): there is no text to score"
CONTEXT_TEMPLATE = "Read this text and answer the question.\n\nText: {context}\n\nQuestion: {question}"
_REROUTES = ("retrieve", "fallback")


class GuardResult(BaseModel):
    """What the guard decided for one call; JSON under ``response_metadata["semgrad"]`` and in the event."""

    model_config = ConfigDict(frozen=True)

    policy: Policy | AgentPolicy
    route: Route
    flagged: bool
    """The first answer was low-confidence, or could not be scored (not when deliberately ``not_scored``)."""
    guard: str | None = None
    """The guard's name (``name=``, default ``"SemGradGuard"``): tells nested guards' records apart."""
    not_scored: str | None = None
    """Why the first answer was deliberately not scored: an AIMessage that only calls tools (an agent
    step) passes through unflagged, without a warning."""
    low_confidence: bool | None
    """The first answer's verdict (``None`` when the scorer failed)."""
    score: Score | None
    """Score of the first answer."""
    final_score: Score | None
    """Score of the answer returned (the first one unless rerouted; ``None`` for a holding answer)."""
    final_low_confidence: bool | None
    scorer_error: str | None = None
    """The scorer failure, with the fail-open/closed policy in force, when scoring did not succeed."""
    scored_prompt: Prompt | None = None
    """The prompt the first answer was scored against: what its model call received (text or messages)."""
    scored_prompt_source: PromptSource | None = None
    """``"model_call"``: captured from the model call whose output became the answer (the last call when
    none matches). ``"reconstructed"``: no model call was seen, so it was rebuilt from the input (``prompt=``
    template, or the input / ``input_key`` value) and may miss what the chain added."""
    scored_prompt_tokens: int | None = None
    """Prompt tokens the scorer read (``Score.n_prompt_tokens``, after the chat template)."""
    final_scored_prompt: Prompt | None = None
    """The prompt the rerouted (``retrieve``/``fallback``) answer was scored against; ``None`` otherwise."""
    final_scored_prompt_source: PromptSource | None = None
    risk: float | None = None
    """The first answer's calibrated probability of being wrong (``None`` without calibration)."""
    confidence: float | None = None
    """``1 - risk``."""

    @field_validator("scored_prompt", "final_scored_prompt", mode="before")
    @classmethod
    def _valid_unicode(cls, prompt: Any) -> Any:
        """Lone surrogates (undecodable input) become U+FFFD, so a hostile prompt never breaks the record."""
        return valid_unicode(prompt)

    review_id: str | None = None
    review_error: str | None = None
    """The review queue failure on the ``human`` route (it could not be opened or written), with the
    ``on_scorer_error`` policy applied: ``fail_open`` passes the answer through flagged (route
    ``"annotate"``), ``fail_closed`` raises :class:`LowConfidenceError` (route ``"raise"``)."""
    documents: list[Document] | None = None
    """The documents the ``retrieve`` route retrieved and put into the prompt."""


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
    skipped: str | None = None
    """Why the answer was not scored on purpose (then nothing else is set)."""


class _FirstPass(NamedTuple):
    """The first answer and what to do with it; travels between the steps of one call."""

    input: Any
    prompt: Prompt
    source: PromptSource
    answer: Any
    verdict: _Verdict
    route: Route


class GuardCore:
    """The decision half of a guard, shared by :class:`SemGradGuard` and ``SemGradMiddleware``.

    The decision rule (``max_risk`` or a named raw ``threshold``), the scorer-failure policy, scoring as an
    effect, the :class:`GuardResult` and its publication. A subclass holds the settings named below and adds
    the step it guards (a runnable, or an agent's model turn).
    """

    if TYPE_CHECKING:
        policy: Policy | AgentPolicy
        max_risk: float | None
        threshold: float | None
        threshold_field: RawField | None
        on_scorer_error: ScorerErrorPolicy
        scorer_timeout: float | None
        scorer: Scorer | None
        event_name: str

        def get_name(self) -> str:
            """The name each GuardResult carries (``guard``)."""
            ...

    def _verdict(self, attempt: Score | Exception) -> _Verdict:
        """Judge one scoring attempt; a failure follows ``on_scorer_error`` (a missing threshold raises)."""
        if isinstance(attempt, Score):
            try:
                low = self._untrusted(attempt)
            except NoThresholdError:
                raise
            except SemGradError as exc:
                attempt = exc
            else:
                return _Verdict(attempt, low, None, low)
        closed, reason = self._failed("scoring", "routing as low-confidence", attempt)
        return _Verdict(None, None, reason, closed)

    def _failed(self, what: str, closed_action: str, exc: Exception) -> tuple[bool, str]:
        """Log a failure ``on_scorer_error`` decides; whether it fails closed, and the reason to record."""
        closed = self.on_scorer_error == "fail_closed"
        reason = f"{type(exc).__name__}: {exc} ({self.on_scorer_error})"
        outcome = f"failing closed ({closed_action})" if closed else "failing open (passing, flagged)"
        logger.warning("SemGrad %s failed, %s: %s", what, outcome, reason)
        return closed, reason

    def _untrusted(self, score: Score) -> bool:
        """The decision: ``max_risk`` on the calibrated risk, else the raw threshold or the calibration."""
        if self.max_risk is None:
            return score.untrusted(self.threshold, self.threshold_field or "semgrad")
        if not score.valid:
            raise InvalidInputError(f"this pair was not scored: {score.invalid_reason}")
        if score.risk is None:
            raise NoThresholdError(
                "max_risk= decides on the calibrated risk, and this scorer has no calibration: load one "
                "(SemGradScorer(..., calibration=...)) or pass threshold= with threshold_field="
            )
        return score.risk > self.max_risk

    def _result(self, first: _FirstPass, final: _Verdict | None, **extra: Any) -> GuardResult:
        return GuardResult(
            policy=self.policy,
            route=first.route,
            flagged=first.verdict.low_confidence is not False and first.verdict.skipped is None,
            guard=self.get_name(),
            not_scored=first.verdict.skipped,
            low_confidence=first.verdict.low_confidence,
            score=first.verdict.score,
            final_score=final.score if final is not None else None,
            final_low_confidence=final.low_confidence if final is not None else None,
            scorer_error=first.verdict.error or (final.error if final is not None else None),
            scored_prompt=first.prompt,
            scored_prompt_source=first.source,
            scored_prompt_tokens=first.verdict.score.n_prompt_tokens if first.verdict.score else None,
            risk=first.verdict.score.risk if first.verdict.score else None,
            confidence=first.verdict.score.confidence if first.verdict.score else None,
            **extra,
        )

    def _rejected(self, first: _FirstPass) -> LowConfidenceError:
        result = self._result(first, first.verdict)
        field = "risk" if self.max_risk is not None or self.threshold is None else self.threshold_field
        detail = first.verdict.error or f"{field}={getattr(first.verdict.score, field or 'risk')}"
        return LowConfidenceError(f"low-confidence answer ({detail})", result=result, answer=first.answer)

    def _publish(self, result: GuardResult) -> Steps[dict[str, Any]]:
        """Publish the decision where people look: the custom event, and a traced child run.

        The child run ``semgrad_decision`` of the guard's run is tagged ``semgrad:<route>`` (plus
        ``semgrad:flagged``) and its metadata has route, risk, confidence and flagged, so tracers
        (LangSmith, Langfuse, ``astream_events``) show the decision; its output is the whole GuardResult.
        """
        data = result.model_dump(mode="json")
        yield Dispatch(self.event_name, data)
        tags = [f"semgrad:{result.route}"] + (["semgrad:flagged"] if result.flagged else [])
        metadata = {
            "semgrad_route": result.route,
            "semgrad_risk": result.risk,
            "semgrad_confidence": result.confidence,
            "semgrad_flagged": result.flagged,
        }
        yield Trace("semgrad_decision", data, tags, metadata)
        return data

    def _first_pass(
        self, input_: Any, prompt: Prompt, source: PromptSource, answer: Any
    ) -> Steps[_FirstPass]:
        """Judge the first answer and pick its route; the ``raise`` route publishes and raises here."""
        verdict = yield from self._judge(prompt, answer)
        route: Route = self.policy if verdict.untrusted else "pass"
        first = _FirstPass(input_, prompt, source, answer, verdict, route)
        if route == "raise":
            error = self._rejected(first)
            yield from self._publish(error.result)
            raise error
        return first

    def _judge(self, prompt: Prompt, answer: Any) -> Steps[_Verdict]:
        """Score one answer; a scorer failure or timeout (any error) follows ``on_scorer_error``."""
        if calls_tools_only(answer):
            return _Verdict(None, None, None, untrusted=False, skipped=TOOL_CALLS_ONLY)
        scorer = self.scorer if self.scorer is not None else default_scorer()
        try:
            text = answer_text(answer) if answer is not None else ""
            score = yield ScoreAnswer(scorer, prompt, text, self.scorer_timeout)
        except Exception as exc:  # the scorer's failures go to on_scorer_error, whatever they are
            return self._verdict(exc)
        return self._verdict(score)


_queue_lock = threading.Lock()


@lru_cache(maxsize=1)
def _default_queue() -> ReviewQueue:
    """The process-wide default review queue, opened on first use."""
    with _queue_lock:
        return ReviewQueue()


class SemGradGuard(RunnableSerializable[Any, Any], GuardCore):
    """Wraps an answering step, scores each (prompt, answer) with SemGrad, and routes untrusted answers.

    Attributes:
        runnable: the answering step: a chat model, or a chain whose input becomes the prompt (the one
            positional argument: ``SemGradGuard(llm, policy=...)``; the others are keywords).
        policy: what to do with a low-confidence answer: ``"retrieve"`` (rerun with retrieved context),
            ``"fallback"`` (route to ``fallback``), ``"human"`` (queue for review and return a holding
            answer), ``"raise"`` (:class:`LowConfidenceError`) or ``"annotate"`` (pass through, flagged).
        max_risk: untrusted when the calibrated ``Score.risk`` (probability of being wrong) exceeds it;
            needs a calibrated scorer (the default scorer of the embedded model is).
        threshold: a raw threshold: untrusted when ``threshold_field`` exceeds it. It must name its field;
            a value that cannot be right (a risk-like 0.01-1 on a gradient norm) is refused.
        threshold_field: the raw Score field ``threshold`` applies to (required with ``threshold``).
        Neither ``max_risk`` nor ``threshold``: the calibration's own acceptance threshold decides.
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
    max_risk: float | None = None
    threshold: float | None = None
    threshold_field: RawField | None = None
    retriever: Runnable[Any, Any] | None = None
    fallback: Runnable[Any, Any] | None = None
    review_queue: ReviewQueue | None = None
    review_handler: ReviewHandler | None = None
    holding_answer: str = "A reviewer will check this answer and get back to you."
    on_scorer_error: ScorerErrorPolicy = "fail_open"
    scorer_timeout: float | None = None
    scorer: Scorer | None = None
    prompt: Runnable[Any, Any] | None = None
    input_key: str = "question"
    context_key: str = "context"
    context_template: str = CONTEXT_TEMPLATE
    event_name: str = "semgrad_guard"

    def __init__(self, runnable: Runnable[Any, Any], **kwargs: Any) -> None:
        """Take the answering step positionally: ``SemGradGuard(llm, policy="retrieve", ...)``."""
        super().__init__(runnable=runnable, **kwargs)

    @model_validator(mode="after")
    def _check_policy(self) -> Self:
        check_decision(self.threshold, self.threshold_field, self.max_risk, "SemGradGuard")
        if self.prompt is not None and not isinstance(self.prompt, BasePromptTemplate):
            raise TypeError(
                f"prompt= takes a prompt template (ChatPromptTemplate, PromptTemplate), "
                f"not a {type(self.prompt).__name__}"
            )
        if self.policy == "retrieve" and self.retriever is None:
            raise ValueError("policy='retrieve' needs retriever= (a retriever or runnable giving documents)")
        if self.policy == "fallback" and self.fallback is None:
            raise ValueError("policy='fallback' needs fallback= (the runnable that answers instead)")
        runnable = self.runnable
        if self.prompt is None and isinstance(runnable, RunnableSequence):
            self.prompt = runnable.first if isinstance(runnable.first, BasePromptTemplate) else None
        return self

    @classmethod
    def is_lc_serializable(cls) -> bool:
        """Serializable with ``dumpd``/``loads`` when every part given is.

        A ``scorer``, ``review_queue`` or ``review_handler`` (live objects) is written as not serializable,
        and ``loads`` then refuses it (``NotImplementedError``).
        """
        return True

    # ------------------------------------------------------- the wrapped step's conventions pass through
    @property
    def InputType(self) -> Any:
        """The answering step's input type."""
        return self.runnable.InputType

    @property
    def OutputType(self) -> Any:
        """The answering step's output type: the guard does not change it."""
        return self.runnable.OutputType

    def get_input_schema(self, config: RunnableConfig | None = None) -> TypeBaseModel:
        """The answering step's input schema."""
        return self.runnable.get_input_schema(config)

    def get_output_schema(self, config: RunnableConfig | None = None) -> TypeBaseModel:
        """The answering step's output schema."""
        return self.runnable.get_output_schema(config)

    @property
    def config_specs(self) -> list[ConfigurableFieldSpec]:
        """The answering step's configurable fields."""
        return self.runnable.config_specs

    def get_graph(self, config: RunnableConfig | None = None) -> Graph:
        """The answering step's graph: the guard adds no node of its own (as ``RunnableBinding``)."""
        return self.runnable.get_graph(config)

    # ------------------------------------------------------------------ the policy core: decisions, no I/O
    def _prompt_of(self, value: Any) -> Prompt:
        if self.prompt is not None and isinstance(value, dict):
            return input_to_prompt(self.prompt.invoke(value), input_key=self.input_key)
        return input_to_prompt(value, input_key=self.input_key)

    def _first_input(self, input_: Any) -> Any:
        if self.policy == "retrieve" and isinstance(input_, dict) and self.context_key not in input_:
            return {**input_, self.context_key: ""}
        return input_

    def _review_failed(self, first: _FirstPass, exc: ReviewQueueError) -> tuple[_FirstPass, str]:
        """A failed review queue follows ``on_scorer_error``: pass flagged (open) or raise (closed)."""
        closed, reason = self._failed("review queue", "raising LowConfidenceError", exc)
        return first._replace(route="raise" if closed else "annotate"), reason

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

    # ----------------------------------------------------- the policy core: one call, I/O as effects
    def _steps(self, input_: Any, streaming: bool) -> Steps[None]:
        """One guarded call for every path: answer, score, route, publish; yields the I/O it needs."""
        first_input = self._first_input(input_)
        calls = ModelCalls()
        answer = yield Invoke(self.runnable, first_input, capture=calls)
        prompt, source = self._scored_prompt(calls, first_input, answer)
        first = yield from self._first_pass(input_, prompt, source, answer)
        route, verdict = first.route, first.verdict
        if route in _REROUTES:
            final, result = yield from self._second_answer(first, streaming)
        elif route == "human":  # the review queue and custom handlers block: off the event loop
            try:
                final, result = yield Offload(self._hold, first)
            except ReviewQueueError as exc:  # the queue failed: the scorer-error policy decides
                first, reason = self._review_failed(first, exc)
                final, result = first.answer, self._result(first, verdict, review_error=reason)
                if first.route == "raise":
                    rejected = LowConfidenceError(
                        f"low-confidence answer, and the review queue failed: {reason}",
                        result=result,
                        answer=first.answer,
                    )
                    yield from self._publish(result)
                    raise rejected from exc
        else:
            final, result = answer, self._result(first, verdict)
        data = yield from self._publish(result)
        if not (streaming and route in _REROUTES):  # the whole output at once, with its metadata
            output = attach(final, METADATA_KEY, GUARDS_KEY, data)
            yield Emit(as_chunk(output) if streaming else output)
        elif isinstance(final, BaseMessageChunk):  # streamed already: a last chunk carries the metadata
            yield Emit(AIMessageChunk(content="", response_metadata={METADATA_KEY: data, GUARDS_KEY: [data]}))

    def _scored_prompt(self, calls: ModelCalls, step_input: Any, answer: Any) -> tuple[Prompt, PromptSource]:
        """The prompt the model that produced ``answer`` received; rebuilt from the input if none was seen."""
        try:
            text = answer_text(answer) if answer is not None else ""
        except TypeError:
            text = ""
        call = calls.answering_call(text)
        if call is not None:
            return call.prompt, "model_call"
        logger.debug("SemGradGuard saw no model call: scoring a prompt rebuilt from the input")
        return self._prompt_of(step_input), "reconstructed"

    def _second_answer(self, first: _FirstPass, streaming: bool) -> Steps[tuple[Any, GuardResult]]:
        """The ``retrieve`` and ``fallback`` routes: ask again (streaming it out as it comes), then score."""
        step, step_input, documents = self.fallback, first.input, None  # the fallback: the original input
        if first.route == "retrieve":
            assert self.retriever is not None
            query = query_of(input_to_prompt(first.input, input_key=self.input_key))
            retrieved = as_documents((yield Invoke(self.retriever, query)))
            context = "\n\n".join(document.page_content for document in retrieved)
            step, documents = self.runnable, retrieved
            step_input = with_context(
                first.input,
                context,
                template=self.context_template,
                input_key=self.input_key,
                context_key=self.context_key,
            )
        assert step is not None
        final: Any = None
        calls = ModelCalls()
        if streaming:
            chunks = yield Invoke(step, step_input, stream=True, capture=calls)
            while (chunk := (yield Next(chunks))) is not END:
                # a whole AIMessage (a lambda's output) streams as its chunk; an inner guard's decision
                # stays in its "semgrad_guards" record, "semgrad" is ours (merging two would garble it)
                chunk = detach(as_chunk(chunk), METADATA_KEY)
                final = chunk if final is None else final + chunk
                yield Emit(chunk)
        else:
            final = yield Invoke(step, step_input, capture=calls)
        prompt, source = self._scored_prompt(calls, step_input, final)
        verdict = yield from self._judge(prompt, final)
        extra = {"final_scored_prompt": prompt, "final_scored_prompt_source": source}
        return final, self._result(first, verdict, documents=documents, **extra)

    # ------------------------------------- the two paths: the same core, run by the sync or the async driver
    def _guard(self, input_: Any, run_manager: CallbackManagerForChainRun, config: RunnableConfig) -> Any:
        (output,) = drive(self._steps(input_, streaming=False), config)
        return output

    def _guard_stream(
        self, inputs: Iterator[Any], run_manager: CallbackManagerForChainRun, config: RunnableConfig
    ) -> Iterator[Any]:
        yield from drive(self._steps(next(iter(inputs)), streaming=True), config)

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Answer, score, and route by policy; the output keeps the answering step's type."""
        return self._call_with_config(self._guard, input, config, **kwargs)

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        """Buffer and score the first answer, then stream the chosen route's output (metadata chunk last)."""
        yield from self._transform_stream_with_config(iter([input]), self._guard_stream, config, **kwargs)

    async def _aguard(
        self, input_: Any, run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig
    ) -> Any:
        (output,) = [value async for value in adrive(self._steps(input_, streaming=False), config)]
        return output

    async def _aguard_stream(
        self, inputs: AsyncIterator[Any], run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig
    ) -> AsyncIterator[Any]:
        async for chunk in adrive(self._steps(await _asingle(inputs), streaming=True), config):
            yield chunk

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


async def _asingle(inputs: AsyncIterator[Any]) -> Any:
    async for value in inputs:
        return value
    raise ValueError("SemGradGuard.astream got no input")
