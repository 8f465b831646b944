"""Conversions between LangChain inputs and outputs and the (prompt, answer) text the scorer reads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    convert_to_messages,
)
from langchain_core.prompt_values import PromptValue

from semgrad_guard.prompts import Prompt

__all__ = [
    "answer_text",
    "as_chunk",
    "as_documents",
    "attach",
    "calls_tools_only",
    "detach",
    "input_to_prompt",
    "messages_to_prompt",
    "query_of",
    "replace_text",
    "with_context",
]

_ROLES = {"system": "system", "human": "user", "ai": "assistant"}


def messages_to_prompt(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """Chat messages as the scorer's ``{"role", "content"}`` dicts (tool and other turns count as user)."""
    return [{"role": _ROLES.get(m.type, "user"), "content": m.text} for m in messages]


def input_to_prompt(value: Any, *, input_key: str) -> Prompt:
    """The prompt a runnable input stands for: a string, messages, a PromptValue, or ``value[input_key]``."""
    if isinstance(value, str):
        return value
    if isinstance(value, PromptValue):
        return messages_to_prompt(value.to_messages())
    if isinstance(value, BaseMessage):
        return messages_to_prompt([value])
    if isinstance(value, Mapping):
        if input_key not in value:
            raise KeyError(f"the input has no {input_key!r} key to score as the prompt: {sorted(value)}")
        return input_to_prompt(value[input_key], input_key=input_key)
    if isinstance(value, Sequence):
        return messages_to_prompt(convert_to_messages(value))
    raise TypeError(f"cannot turn a {type(value).__name__} input into a prompt")


def query_of(prompt: Prompt) -> str:
    """The text to retrieve with: the prompt itself, or its last user message."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return users[-1] if users else prompt[-1]["content"]


def answer_text(output: Any) -> str:
    """The answer text of a runnable output: a string, or a message's text."""
    if isinstance(output, str):
        return output
    if isinstance(output, BaseMessage):
        return str(output.text)
    raise TypeError(
        f"SemGradGuard scores string or message outputs; the answering step returned {type(output).__name__}"
    )


def with_context(value: Any, context: str, *, template: str, input_key: str, context_key: str) -> Any:
    """A copy of ``value`` that carries retrieved ``context`` (the caller's object is left untouched).

    A dict gets ``context_key`` set; a string, or the last human turn of a message list, is rewritten with
    ``template`` (``{context}`` and ``{question}``).
    """
    if isinstance(value, Mapping):
        return {**value, context_key: context}
    if isinstance(value, str):
        return template.format(context=context, question=value)
    messages = value.to_messages() if isinstance(value, PromptValue) else convert_to_messages(value)
    last = max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=None)
    if last is None:
        return [*messages, HumanMessage(template.format(context=context, question=""))]
    question = template.format(context=context, question=messages[last].text)
    return [*messages[:last], HumanMessage(question), *messages[last + 1 :]]


def as_documents(retrieved: Any) -> list[Document]:
    """A retriever's output as documents (a runnable may return one string or a list of strings)."""
    items: Sequence[Any] = [retrieved] if isinstance(retrieved, (str, Document)) else retrieved
    return [item if isinstance(item, Document) else Document(page_content=str(item)) for item in items]


def as_chunk(output: Any) -> Any:
    """An AIMessage as the equivalent AIMessageChunk (what streams yield); anything else unchanged."""
    if isinstance(output, AIMessage) and not isinstance(output, AIMessageChunk):
        return AIMessageChunk(
            content=output.content,
            additional_kwargs=output.additional_kwargs,
            response_metadata=output.response_metadata,
            usage_metadata=output.usage_metadata,
            tool_calls=output.tool_calls,
            invalid_tool_calls=output.invalid_tool_calls,
            name=output.name,
            id=output.id,
        )
    return output


def replace_text(output: Any, text: str) -> Any:
    """An output of the same type as ``output`` whose answer is ``text`` (for holding answers)."""
    if isinstance(output, BaseMessage):
        return output.model_copy(update={"content": text, "response_metadata": {}})
    return text


def attach(output: Any, key: str, history_key: str, data: dict[str, Any]) -> Any:
    """A copy of a message with ``data`` under ``response_metadata[key]`` and appended to ``[history_key]``.

    The list keeps every nested guard's record, innermost first; a string comes back unchanged.
    """
    if isinstance(output, BaseMessage):
        history = [*output.response_metadata.get(history_key, []), data]
        metadata = {**output.response_metadata, key: data, history_key: history}
        return output.model_copy(update={"response_metadata": metadata})
    return output


def detach(output: Any, key: str) -> Any:
    """A message without ``response_metadata[key]`` (a copy when it had one); anything else unchanged.

    A streamed chunk that carries an inner guard's decision under ``key`` would otherwise be merged (``+``)
    with the outer guard's own, field by field, into nonsense.
    """
    if isinstance(output, BaseMessage) and key in output.response_metadata:
        metadata = {k: v for k, v in output.response_metadata.items() if k != key}
        return output.model_copy(update={"response_metadata": metadata})
    return output


def calls_tools_only(output: Any) -> bool:
    """An AI message that only asks for tool calls (no text): an agent step, not an answer to score."""
    return isinstance(output, AIMessage) and bool(output.tool_calls) and not output.text.strip()
