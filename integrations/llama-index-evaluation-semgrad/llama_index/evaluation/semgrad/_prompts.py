"""Which prompt gets scored: LlamaIndex messages and QA templates turned into the scorer's prompt format."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
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


class SemGradInputError(ValueError):
    """A malformed argument (``contexts``, ``prompt``, chat messages); the message names the argument."""


def to_scorer_prompt(prompt: PromptInput, argument: str = "prompt") -> str | Messages:
    """A caller's prompt in the scorer's format (a new list; the caller's messages are not touched).

    Raises:
        SemGradInputError: ``prompt`` is neither a string nor a list of messages with a string role and
            content (each ``ChatMessage``'s missing content counts as empty).
    """
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (bytes, Mapping)) or not isinstance(prompt, Iterable):
        raise SemGradInputError(
            f"{argument} must be a string or a list of chat messages, got {type(prompt).__name__}"
        )
    return [_as_dict(message, f"{argument}[{i}]") for i, message in enumerate(prompt)]


def _as_dict(message: object, where: str = "message") -> dict[str, str]:
    if isinstance(message, ChatMessage):
        return {"role": str(message.role.value), "content": message.content or ""}
    if not isinstance(message, Mapping):
        raise SemGradInputError(
            f"{where} must be a ChatMessage or a role/content mapping, got {type(message).__name__}"
        )
    missing = [key for key in ("role", "content") if key not in message]
    if missing:
        raise SemGradInputError(f"{where} has no {' or '.join(missing)}")
    role, content = message["role"], message["content"]
    if not isinstance(role, str) or not isinstance(content, str):
        raise SemGradInputError(
            f"{where} needs a string role and content, got {type(role).__name__} and {type(content).__name__}"
        )
    return {"role": role, "content": content}


def checked_contexts(contexts: object, argument: str = "contexts") -> list[str] | None:
    """``contexts`` as a new list of strings (``None`` stays ``None``).

    Raises:
        SemGradInputError: a single string (which would be read one character per context), something
            that is not a list, or an item that is not a string.
    """
    if contexts is None:
        return None
    if isinstance(contexts, str):
        raise SemGradInputError(f"{argument} must be a list of strings, got one str: wrap it as [{argument}]")
    if isinstance(contexts, (bytes, Mapping)) or not isinstance(contexts, Iterable):
        raise SemGradInputError(f"{argument} must be a list of strings, got {type(contexts).__name__}")
    texts = list(contexts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise SemGradInputError(f"{argument}[{i}] must be a string, got {type(text).__name__}")
    return texts


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
