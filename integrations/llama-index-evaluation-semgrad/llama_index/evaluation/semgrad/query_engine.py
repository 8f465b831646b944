"""`SemGradQueryEngine`: scores each answer of a query engine and routes untrusted ones to a fallback."""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import threading
from collections.abc import AsyncGenerator, Generator, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.response.schema import (
    RESPONSE_TYPE,
    AsyncStreamingResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.callbacks import CallbackManager
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.llm import LLMChatEndEvent, LLMCompletionEndEvent
from llama_index.core.prompts import BasePromptTemplate
from llama_index.core.prompts.mixin import PromptMixinType
from llama_index.core.schema import QueryBundle
from llama_index.evaluation.semgrad._prompts import qa_prompt, response_contexts, to_scorer_prompt
from llama_index.evaluation.semgrad._verdict import trusted
from llama_index_instrumentation import get_dispatcher

from semgrad_guard import NoThresholdError, RawField, Score, Scorer, default_scorer
from semgrad_guard.results import check_decision

__all__ = ["SemGradQueryEngine"]

logger = logging.getLogger(__name__)

_Prompt = str | list[dict[str, str]]
_Response = TypeVar("_Response", bound=RESPONSE_TYPE)
_calls: contextvars.ContextVar[list[tuple[_Prompt, str]] | None] = contextvars.ContextVar(
    "semgrad_llm_calls", default=None
)


class _LLMCallRecorder(BaseEventHandler):
    """Records (prompt, answer) of LLM calls made inside a ``SemGradQueryEngine`` query (its context only)."""

    @classmethod
    def class_name(cls) -> str:
        """Class name."""
        return "SemGradLLMCallRecorder"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        """Append the call to the running query's list, if a query is recording in this context."""
        calls = _calls.get()
        if calls is None:
            return
        if isinstance(event, LLMChatEndEvent) and event.response is not None:
            calls.append((to_scorer_prompt(event.messages), event.response.message.content or ""))
        elif isinstance(event, LLMCompletionEndEvent):
            calls.append((event.prompt, event.response.text))


_recorder_lock = threading.Lock()
_recorder: _LLMCallRecorder | None = None


def _install_recorder() -> None:
    global _recorder
    with _recorder_lock:
        if _recorder is None:
            _recorder = _LLMCallRecorder()
            get_dispatcher().add_event_handler(_recorder)


@contextmanager
def _recording(calls: list[tuple[_Prompt, str]]) -> Iterator[None]:
    """Record the LLM calls made in this context, until the block ends, into ``calls``."""
    token = _calls.set(calls)
    try:
        yield
    finally:
        _calls.reset(token)


def _pulled(tokens: Iterator[str], calls: list[tuple[_Prompt, str]]) -> Generator[str, None, None]:
    """A stream's tokens, each pulled while recording: its LLM call ends (and is recorded) on the last."""
    while True:
        with _recording(calls):
            token = next(tokens, None)
        if token is None:
            return
        yield token


async def _apulled(
    tokens: AsyncGenerator[str, None], calls: list[tuple[_Prompt, str]]
) -> AsyncGenerator[str, None]:
    """Async :func:`_pulled`."""
    while True:
        with _recording(calls):
            token = await anext(tokens, None)
        if token is None:
            return
        yield token


async def _once(text: str) -> AsyncGenerator[str, None]:
    yield text


def _refill(metadata: dict[str, Any], values: dict[str, Any]) -> None:
    """Replace ``metadata``'s content in place: a stream's caller already holds that dict."""
    metadata.clear()
    metadata.update(values)


def _replayed(kept: Response, streamed: StreamingResponse | AsyncStreamingResponse) -> RESPONSE_TYPE:
    """A buffered, scored answer handed back in the streaming type its engine returned (one chunk)."""
    text = kept.response or ""
    if isinstance(streamed, AsyncStreamingResponse):
        return AsyncStreamingResponse(_once(text), kept.source_nodes, kept.metadata)
    return StreamingResponse((piece for piece in [text]), kept.source_nodes, kept.metadata, response_txt=text)


class SemGradQueryEngine(BaseQueryEngine):
    """Wraps a query engine: each Response gets its Score; untrusted answers can go to a fallback engine.

    The scored prompt is the one the answering LLM actually saw: the wrapper records the LLM calls made
    during the query (through instrumentation, per query context, so concurrent queries do not mix) and
    scores the last call whose output is the answer. When none matches (no LLM call seen, post-processed
    text) it rebuilds query + source nodes under the QA template. ``metadata`` (JSON only) gains
    ``"semgrad"`` (the primary answer's :class:`semgrad_guard.Score` as ``model_dump(mode="json")``;
    ``Score.model_validate`` reads it back), ``"semgrad_route"`` (``"primary"`` or ``"fallback"``),
    ``"semgrad_prompt"`` (``"recorded"``, ``"rebuilt"`` or ``"query only"``) and, after a fallback,
    ``"semgrad_primary_answer"``. The inner engine's Response is copied, never changed. Those keys are the
    outermost guard's; every guard, nested ones included, also appends its own record (``name``, ``score``,
    ``route``, ``prompt``) to the list ``metadata["semgrad_guards"]``, innermost first, so nested guards
    never overwrite each other.

    A streaming engine's answer (``StreamingResponse``, ``AsyncStreamingResponse``) is scored too. Without
    a fallback it streams live and is scored when the stream ends: ``metadata`` gains the keys then (read
    it after consuming the stream). With a fallback it must be scored before it is shown, so the stream is
    consumed first and the kept answer comes back as a one-chunk stream (the fallback's answer in its own
    type). Structured (pydantic) responses are returned unscored.

    Args:
        query_engine: the engine that answers.
        scorer: ``None`` = the shared :func:`semgrad_guard.default_scorer`.
        max_risk: untrusted when the calibrated risk exceeds it.
        threshold: raw threshold on ``threshold_field`` (above = untrusted); it must name its field, and a
            risk-like value (0.01 to 1) on a gradient norm is refused. Neither: the calibration decides.
        threshold_field: the raw Score field ``threshold`` applies to (required with ``threshold``).
        name: this guard's name in ``metadata["semgrad_guards"]``.
        fallback_query_engine: queried instead when the answer is untrusted. With a fallback, a valid
            score with neither threshold nor calibration raises :class:`semgrad_guard.NoThresholdError`.
        fallback_on_invalid: also use the fallback when the answer cannot be scored (default: keep it).
        qa_template: the engine's QA template, for rebuilt prompts (default LlamaIndex's text-QA selector).
        llm: the answering LLM, only to choose the QA template variant for rebuilt prompts.
        callback_manager: LlamaIndex callback manager.
    """

    def __init__(
        self,
        query_engine: BaseQueryEngine,
        *,
        scorer: Scorer | None = None,
        threshold: float | None = None,
        threshold_field: RawField | None = None,
        max_risk: float | None = None,
        name: str = "semgrad",
        fallback_query_engine: BaseQueryEngine | None = None,
        fallback_on_invalid: bool = False,
        qa_template: BasePromptTemplate | None = None,
        llm: Any = None,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        """Wrap ``query_engine``; nothing is loaded until the first query."""
        super().__init__(callback_manager=callback_manager)
        self._engine = query_engine
        self._scorer = scorer
        check_decision(threshold, threshold_field, max_risk, "SemGradQueryEngine")
        self._threshold = threshold
        self._threshold_field: RawField | None = threshold_field
        self._max_risk = max_risk
        self._name = name
        self._fallback = fallback_query_engine
        self._fallback_on_invalid = fallback_on_invalid
        self._qa_template = qa_template
        self._llm = llm
        _install_recorder()

    @property
    def scorer(self) -> Scorer:
        """The scorer in use (the shared default when none was given)."""
        return self._scorer if self._scorer is not None else default_scorer()

    def _get_prompt_modules(self) -> PromptMixinType:
        modules: PromptMixinType = {"query_engine": self._engine}
        if self._fallback is not None:
            modules["fallback_query_engine"] = self._fallback
        return modules

    def _query(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        calls: list[tuple[_Prompt, str]] = []
        with _recording(calls):
            response = self._engine.query(query_bundle)
            streamed = response if isinstance(response, StreamingResponse) else None
            if streamed is not None and self._fallback is not None:  # scored before it is shown
                response = streamed.get_response()
        if streamed is not None and self._fallback is None:
            return self._stream(query_bundle, streamed, calls)
        if not isinstance(response, Response) or response.response is None:
            return response
        prompt, source = self._prompt(query_bundle, response, calls)
        score = self.scorer.score(prompt, response.response, errors="mark")
        if self._use_fallback(score):
            assert self._fallback is not None
            return self._annotate(self._fallback.query(query_bundle), score, source, primary=response)
        kept = self._annotate(response, score, source)
        return kept if streamed is None else _replayed(kept, streamed)

    async def _aquery(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        calls: list[tuple[_Prompt, str]] = []
        with _recording(calls):
            response = await self._engine.aquery(query_bundle)
            streamed = response if isinstance(response, AsyncStreamingResponse) else None
            if streamed is not None and self._fallback is not None:  # scored before it is shown
                response = await streamed.get_response()
        if streamed is not None and self._fallback is None:
            return self._astream(query_bundle, streamed, calls)
        if not isinstance(response, Response) or response.response is None:
            return response
        prompt, source = self._prompt(query_bundle, response, calls)
        score = await self.scorer.ascore(prompt, response.response, errors="mark")
        if self._use_fallback(score):
            assert self._fallback is not None
            fallback = await self._fallback.aquery(query_bundle)
            return self._annotate(fallback, score, source, primary=response)
        kept = self._annotate(response, score, source)
        return kept if streamed is None else _replayed(kept, streamed)

    def _stream(
        self, query_bundle: QueryBundle, streamed: StreamingResponse, calls: list[tuple[_Prompt, str]]
    ) -> StreamingResponse:
        """The answer streams live; when it ends it is scored and ``metadata`` (returned now) filled in."""
        metadata = dict(streamed.metadata or {})

        def tokens() -> Generator[str, None, None]:
            parts: list[str] = []
            for token in _pulled(streamed.response_gen, calls):
                parts.append(token)
                yield token
            answer = Response("".join(parts), list(streamed.source_nodes))
            prompt, source = self._prompt(query_bundle, answer, calls)
            score = self.scorer.score(prompt, "".join(parts), errors="mark")
            _refill(metadata, self._metadata(metadata, score, source))

        return StreamingResponse(tokens(), list(streamed.source_nodes), metadata)

    def _astream(
        self, query_bundle: QueryBundle, streamed: AsyncStreamingResponse, calls: list[tuple[_Prompt, str]]
    ) -> AsyncStreamingResponse:
        """Async :meth:`_stream`."""
        metadata = dict(streamed.metadata or {})

        async def tokens() -> AsyncGenerator[str, None]:
            parts: list[str] = []
            async for token in _apulled(streamed.response_gen, calls):
                parts.append(token)
                yield token
            answer = Response("".join(parts), list(streamed.source_nodes))
            prompt, source = self._prompt(query_bundle, answer, calls)
            score = await self.scorer.ascore(prompt, "".join(parts), errors="mark")
            _refill(metadata, self._metadata(metadata, score, source))

        return AsyncStreamingResponse(tokens(), list(streamed.source_nodes), metadata)

    def _prompt(
        self, query_bundle: QueryBundle, response: Response, calls: list[tuple[_Prompt, str]]
    ) -> tuple[_Prompt, str]:
        answer = (response.response or "").strip()
        for prompt, output in reversed(calls):
            if output.strip() == answer:
                return prompt, "recorded"
        contexts = response_contexts(response)
        if contexts:
            return qa_prompt(query_bundle.query_str, contexts, self._qa_template, self._llm), "rebuilt"
        return query_bundle.query_str, "query only"

    def _use_fallback(self, score: Score) -> bool:
        if self._fallback is None:
            return False
        if not score.valid:
            return self._fallback_on_invalid
        verdict = trusted(score, self._threshold, self._threshold_field, self._max_risk)
        if verdict is None:
            raise NoThresholdError(
                "SemGradQueryEngine has a fallback but nothing to decide with: pass max_risk= or threshold=, "
                "or load a calibration bundle that has a threshold of its own"
            )
        return not verdict

    def _annotate(
        self, response: _Response, score: Score, source: str, primary: Response | None = None
    ) -> _Response:
        """A copy of ``response`` (a Response or a stream, never changed) with this guard's metadata."""
        if not isinstance(response, (Response, StreamingResponse, AsyncStreamingResponse)):
            logger.warning(
                "the fallback returned a %s; it carries no SemGrad metadata", type(response).__name__
            )
            return response
        metadata = self._metadata(response.metadata or {}, score, source, primary)
        return dataclasses.replace(response, source_nodes=list(response.source_nodes), metadata=metadata)

    def _metadata(
        self, inner: dict[str, Any], score: Score, source: str, primary: Response | None = None
    ) -> dict[str, Any]:
        """``inner`` metadata with this guard's keys set and its record appended to ``semgrad_guards``."""
        route = "primary" if primary is None else "fallback"
        record: dict[str, Any] = {
            "name": self._name,
            "score": score.model_dump(mode="json"),
            "route": route,
            "prompt": source,
        }
        metadata: dict[str, Any] = {
            **inner,
            "semgrad": record["score"],
            "semgrad_route": route,
            "semgrad_prompt": source,
            "semgrad_guards": [*inner.get("semgrad_guards", []), record],
        }
        metadata.pop("semgrad_primary_answer", None)
        if primary is not None:
            metadata["semgrad_primary_answer"] = record["primary_answer"] = primary.response
        return metadata
