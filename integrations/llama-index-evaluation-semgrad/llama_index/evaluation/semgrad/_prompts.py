"""Which prompt gets scored: LlamaIndex messages and QA templates turned into the scorer's prompt format."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.base.response.schema import Response
from llama_index.core.prompts import BasePromptTemplate
from llama_index.core.prompts.default_prompt_selectors import DEFAULT_TEXT_QA_PROMPT_SEL
from llama_index.core.schema import MetadataMode

Messages = list[dict[str, str]]
"""The scorer's chat prompt: ``{"role", "content"}`` dicts."""

PromptInput = str | Sequence[ChatMessage] | Sequence[dict[str, str]]
"""A prompt given by the caller: one user turn, LlamaIndex messages, or role/content dicts."""


def to_scorer_prompt(prompt: PromptInput) -> str | Messages:
    """A caller's prompt in the scorer's format (a new list; the caller's messages are not touched)."""
    if isinstance(prompt, str):
        return prompt
    return [_as_dict(message) for message in prompt]


def _as_dict(message: ChatMessage | dict[str, str]) -> dict[str, str]:
    if isinstance(message, ChatMessage):
        return {"role": str(message.role.value), "content": message.content or ""}
    return {"role": message["role"], "content": message["content"]}


def qa_prompt(
    query: str,
    contexts: Sequence[str],
    template: BasePromptTemplate | None = None,
    llm: Any = None,
) -> Messages:
    """The messages a response synthesizer sends for ``query`` over ``contexts`` (one compact chunk).

    ``template`` defaults to LlamaIndex's default text-QA selector, which picks the chat variant (system
    prompt plus user turn) when ``llm`` is a chat model and the single-turn completion variant otherwise,
    exactly as ``get_response_synthesizer`` does. Contexts are stripped, empty ones dropped, and the rest
    joined with blank lines, as compact mode's ``PromptHelper.repack`` does.
    """
    chosen = template if template is not None else DEFAULT_TEXT_QA_PROMPT_SEL
    context_str = "\n\n".join(text.strip() for text in contexts if text.strip())
    messages = chosen.format_messages(llm=llm, context_str=context_str, query_str=query)
    return [_as_dict(message) for message in messages]


def response_contexts(response: Response) -> list[str]:
    """The source nodes' text as the synthesizer gave it to the LLM (metadata included as the LLM saw it)."""
    return [node.node.get_content(metadata_mode=MetadataMode.LLM) for node in response.source_nodes]
