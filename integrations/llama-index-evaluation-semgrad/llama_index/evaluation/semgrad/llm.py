"""`SemGradLocalLLM`: the scorer's own model as a LlamaIndex LLM, so generator and scorer share one copy."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.evaluation.semgrad._prompts import to_scorer_prompt

from semgrad_guard import ScoredGeneration, SemGradScorer, default_scorer

__all__ = ["SELF_SCORE_KEY", "SemGradLocalLLM"]

SELF_SCORE_KEY = "semgrad"
"""Key of the self-score (a :class:`semgrad_guard.Score`) in a response's ``additional_kwargs``."""


class SemGradLocalLLM(CustomLLM):
    """Greedy answers from the scorer's model, each with the Score of its own tokens.

    Generation goes through :meth:`SemGradScorer.generate_and_score`, which holds the scorer's lock: a
    concurrent scoring pass (its hooks on the model) and a generation never overlap on the shared weights.
    Each response carries its self-score under ``additional_kwargs["semgrad"]``. Meant for local demos,
    tests and small models; streaming yields the whole answer at once.

    Args:
        scorer: the scorer whose model answers; ``None`` = the shared :func:`semgrad_guard.default_scorer`.
        **kwargs: the LLM's fields, such as ``max_new_tokens`` (the longest answer, in tokens).
    """

    max_new_tokens: int = Field(default=32, ge=1, description="The longest answer, in tokens.")
    _scorer: SemGradScorer | None = PrivateAttr(default=None)

    def __init__(self, scorer: SemGradScorer | None = None, **kwargs: Any) -> None:
        """Build the LLM; the model loads on first use."""
        super().__init__(**kwargs)
        self._scorer = scorer

    @classmethod
    def class_name(cls) -> str:
        """Class name."""
        return "SemGradLocalLLM"

    @property
    def scorer(self) -> SemGradScorer:
        """The scorer whose model answers: a local one (a remote scorer scores, it cannot generate)."""
        scorer = self._scorer if self._scorer is not None else default_scorer()
        if not isinstance(scorer, SemGradScorer):
            raise TypeError(
                f"SemGradLocalLLM generates with the scorer's own model, which {scorer!r} does not hold here "
                "(SEMGRAD_GUARD_URL makes the default scorer a remote one): pass scorer=SemGradScorer(...)"
            )
        return scorer

    @property
    def metadata(self) -> LLMMetadata:
        """A chat model whose context is the scorer's limit (loads the model)."""
        scorer = self.scorer
        return LLMMetadata(
            context_window=scorer.context_length,
            num_output=self.max_new_tokens,
            is_chat_model=True,
            model_name=scorer.model_name,
        )

    def _generate(self, prompt: str | Sequence[ChatMessage]) -> ScoredGeneration:
        return self.scorer.generate_and_score(
            to_scorer_prompt(prompt), max_new_tokens=self.max_new_tokens, errors="mark"
        )

    @staticmethod
    def _chat(generation: ScoredGeneration) -> ChatResponse:
        return ChatResponse(
            message=ChatMessage(role=MessageRole.ASSISTANT, content=generation.text),
            delta=generation.text,
            additional_kwargs={SELF_SCORE_KEY: generation.score},
        )

    @staticmethod
    def _completion(generation: ScoredGeneration) -> CompletionResponse:
        return CompletionResponse(
            text=generation.text, delta=generation.text, additional_kwargs={SELF_SCORE_KEY: generation.score}
        )

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Answer the messages greedily (one LLMChatEndEvent, no nested completion)."""
        return self._chat(self._generate(messages))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Async :meth:`chat`: generation runs in a worker thread."""
        return self._chat(await asyncio.to_thread(self._generate, messages))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Yield the whole answer once."""
        response = self._chat(self._generate(messages))

        def gen() -> ChatResponseGen:
            yield response

        return gen()

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        """Yield the whole answer once, generated in a worker thread."""
        response = self._chat(await asyncio.to_thread(self._generate, messages))

        async def gen() -> ChatResponseAsyncGen:
            yield response

        return gen()

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Answer ``prompt`` as one user turn under the model's chat template."""
        return self._completion(self._generate(prompt))

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Async :meth:`complete`: generation runs in a worker thread."""
        return self._completion(await asyncio.to_thread(self._generate, prompt))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        """Yield the whole answer once."""
        response = self._completion(self._generate(prompt))

        def gen() -> CompletionResponseGen:
            yield response

        return gen()

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        """Yield the whole answer once, generated in a worker thread."""
        response = self._completion(await asyncio.to_thread(self._generate, prompt))

        async def gen() -> CompletionResponseAsyncGen:
            yield response

        return gen()
