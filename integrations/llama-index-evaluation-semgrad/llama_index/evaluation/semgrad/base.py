"""`SemGradEvaluator`: a LlamaIndex evaluator that scores an answer with SemGrad, without an LLM judge."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.base.response.schema import Response
from llama_index.core.evaluation.base import BaseEvaluator, EvaluationResult
from llama_index.core.prompts import BasePromptTemplate
from llama_index.core.prompts.mixin import PromptDictType
from llama_index.evaluation.semgrad._prompts import (
    PromptInput,
    SemGradInputError,
    checked_contexts,
    qa_prompt,
    response_contexts,
    to_scorer_prompt,
)
from llama_index.evaluation.semgrad._verdict import describe, headline, trusted

from semgrad_guard import RawField, Scorer, default_scorer
from semgrad_guard.results import check_decision

__all__ = ["SemGradEvaluator", "SemGradInputError"]


class SemGradEvaluator(BaseEvaluator):
    """Scores how far an answer can be trusted with SemGrad: one forward and one backward pass, no judge.

    The scored prompt is the one the answering LLM saw when that is known: an explicit ``prompt=`` passed
    to ``evaluate``; else the query and the retrieved ``contexts`` laid out by the synthesizer's QA template;
    else the query alone. SemGrad measures the model's uncertainty about the answer *given what it read*,
    so scoring a RAG answer without its context asks whether the model knew it closed-book instead.

    Args:
        scorer: the scorer to use; ``None`` = the process-wide :func:`semgrad_guard.default_scorer`, shared
            with the LangChain adapters (one model in memory). Resolved at each call.
        max_risk: ``passing`` is ``risk <= max_risk`` on the calibrated risk (``None`` without calibration).
        threshold: raw threshold on ``threshold_field``: ``passing`` is ``field <= threshold``. It must name
            its field; a risk-like value (0.01 to 1) on a gradient norm is refused. With neither,
            ``passing`` follows the scorer's calibration, and is ``None`` when there is none.
        threshold_field: the raw Score field ``threshold`` applies to (required with ``threshold``).
        qa_template: the QA template the answering engine used; default LlamaIndex's text-QA selector.
        llm: the answering LLM, only to pick the template variant (chat or completion) as the synthesizer
            does; it is never called.
        use_contexts: put the contexts into the scored prompt (``False`` scores the query alone).

    ``EvaluationResult.score`` is always a confidence in [0, 1], higher = more trustworthy, and ``passing``
    decides on that same quantity: the calibrated ``confidence`` (``1 - risk``; ``passing`` is
    ``score >= 1 - max_risk`` or the calibration's verdict) or, with a raw ``threshold``,
    ``threshold / (threshold + value)`` of the raw field (0.5 at the threshold: ``passing`` is
    ``score >= 0.5``). Without calibration or threshold it is ``1 / (1 + semgrad)``: an ordering only, not a
    probability, and ``passing`` is ``None``. A pair that cannot be
    scored (empty answer, too long for the model, a template that rejects the messages) comes back with
    ``invalid_result=True`` and the scorer's ``invalid_reason``; missing query or response raise ValueError.
    Malformed arguments raise :class:`SemGradInputError` (a ValueError) naming the argument: ``contexts``
    given as one string instead of a list (it would be read one character per context) or holding a
    non-string, and a ``prompt`` whose messages lack a string role or content.
    """

    def __init__(
        self,
        scorer: Scorer | None = None,
        threshold: float | None = None,
        threshold_field: RawField | None = None,
        qa_template: BasePromptTemplate | None = None,
        llm: Any = None,
        use_contexts: bool = True,
        *,
        max_risk: float | None = None,
    ) -> None:
        """Record the settings; nothing is loaded until the first evaluation."""
        check_decision(threshold, threshold_field, max_risk, "SemGradEvaluator")
        self._scorer = scorer
        self._threshold = threshold
        self._threshold_field: RawField | None = threshold_field
        self._max_risk = max_risk
        self._qa_template = qa_template
        self._llm = llm
        self._use_contexts = use_contexts

    @property
    def scorer(self) -> Scorer:
        """The scorer in use (the shared default when none was given)."""
        return self._scorer if self._scorer is not None else default_scorer()

    def _get_prompts(self) -> PromptDictType:
        """No prompts: SemGrad does not ask an LLM anything."""
        return {}

    def _update_prompts(self, prompts: PromptDictType) -> None:
        """No prompts to update."""

    def scored_prompt(
        self,
        query: str | None,
        contexts: Sequence[str] | None = None,
        prompt: PromptInput | None = None,
    ) -> tuple[str | list[dict[str, str]], str]:
        """The prompt that would be scored for these inputs, and a short note on where it came from.

        Raises:
            SemGradInputError: ``query``, ``response``, ``contexts`` or ``prompt`` is malformed (see the
                class).
        """
        contexts = checked_contexts(contexts)
        if prompt is not None:
            return to_scorer_prompt(prompt), "given prompt"
        if query is None:
            raise ValueError("Must specify query (or the exact prompt) and response")
        if contexts and self._use_contexts:
            messages = qa_prompt(query, contexts, self._qa_template, self._llm)
            return messages, f"query + {len(contexts)} contexts (QA template)"
        return query, "query only"

    async def aevaluate(
        self,
        query: str | None = None,
        response: str | None = None,
        contexts: Sequence[str] | None = None,
        prompt: PromptInput | None = None,
        **kwargs: Any,
    ) -> EvaluationResult:
        """Score ``response`` to the prompt the answering LLM saw; the pass runs in a worker thread.

        Args:
            query: the user's question.
            response: the answer to evaluate.
            contexts: retrieved texts the answer was generated from.
            prompt: the exact prompt (string or chat messages) the answering LLM saw; overrides the others.
            **kwargs: ignored.
        """
        del kwargs  # Unused
        if response is None:
            raise ValueError("Must specify query (or the exact prompt) and response")
        for name, value in (("query", query), ("response", response)):
            if value is not None and not isinstance(value, str):
                raise SemGradInputError(f"{name} must be a string, got {type(value).__name__}")
        contexts = checked_contexts(contexts)
        scored, source = self.scored_prompt(query, contexts, prompt)
        score = await self.scorer.ascore(scored, response, errors="mark")
        return EvaluationResult(
            query=query,
            contexts=contexts,
            response=response,
            score=headline(score, self._threshold_field, self._threshold),
            passing=trusted(score, self._threshold, self._threshold_field, self._max_risk),
            feedback=describe(score, self._threshold_field, self._threshold, source, self._max_risk),
            invalid_result=not score.valid,
            invalid_reason=score.invalid_reason,
        )

    def evaluate_response(
        self,
        query: str | None = None,
        response: Response | None = None,
        **kwargs: Any,
    ) -> EvaluationResult:
        """Evaluate a query engine's Response; contexts include node metadata as the LLM saw it."""
        response_str, contexts = _unpack(response)
        return self.evaluate(query=query, response=response_str, contexts=contexts, **kwargs)

    async def aevaluate_response(
        self,
        query: str | None = None,
        response: Response | None = None,
        **kwargs: Any,
    ) -> EvaluationResult:
        """Async :meth:`evaluate_response`."""
        response_str, contexts = _unpack(response)
        return await self.aevaluate(query=query, response=response_str, contexts=contexts, **kwargs)


def _unpack(response: Response | None) -> tuple[str | None, list[str] | None]:
    if response is None:
        return None, None
    return response.response, response_contexts(response)
