"""Turning a prompt and an answer into the token ids the method scores.

The prompt goes through the model's chat template with the generation prompt added; the answer is its text
tokenized without special tokens, followed by the token that ends an assistant turn in that template.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

from semgrad_guard.errors import ChatTemplateError, EmptyAnswerError, InvalidInputError

__all__ = ["ChatFormat", "Prompt", "generation_prompt_ids"]

Prompt: TypeAlias = str | Sequence[Mapping[str, str]]
"""One user turn as a string, or a list of ``{"role", "content"}`` messages."""

_PROBE = [{"role": "user", "content": "Hello"}]
_SENTINEL = "SEMGRAD_SENTINEL_ANSWER"


def _has_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _render(tokenizer: Any, messages: Sequence[Mapping[str, str]], *, generation_prompt: bool) -> str:
    try:
        text = tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=generation_prompt, tokenize=False
        )
    except Exception as exc:  # jinja raises its own errors for messages a template rejects
        raise ChatTemplateError(f"the chat template rejected these messages: {exc}") from exc
    return str(text)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def generation_prompt_ids(tokenizer: Any) -> list[int]:
    """The token ids the chat template appends for ``add_generation_prompt`` (the assistant header)."""
    if not _has_template(tokenizer):
        return []
    plain = _ids(tokenizer, _render(tokenizer, _PROBE, generation_prompt=False))
    with_header = _ids(tokenizer, _render(tokenizer, _PROBE, generation_prompt=True))
    if with_header[: len(plain)] != plain:
        return []
    return with_header[len(plain) :]


def _end_of_turn_id(tokenizer: Any) -> int:
    if _has_template(tokenizer):
        turn = [*_PROBE, {"role": "assistant", "content": _SENTINEL}]
        text = _render(tokenizer, turn, generation_prompt=False)
        tail = text.split(_SENTINEL, 1)[1] if _SENTINEL in text else ""
        tail_ids = _ids(tokenizer, tail.lstrip(" "))
        if tail_ids and tail_ids[0] in tokenizer.all_special_ids:
            return int(tail_ids[0])
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ChatTemplateError("cannot tell which token ends an answer: no chat template and no eos token")
    return int(eos)


def _check_messages(prompt: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    if not prompt:
        raise ChatTemplateError("the prompt has no messages")
    messages = []
    for i, message in enumerate(prompt):
        if not isinstance(message, Mapping) or not {"role", "content"} <= set(message):
            raise ChatTemplateError(f"message {i} is not a {{'role', 'content'}} mapping: {message!r}")
        if not isinstance(message["role"], str) or not isinstance(message["content"], str):
            raise ChatTemplateError(f"message {i} needs string role and content")
        messages.append({"role": message["role"], "content": message["content"]})
    if messages[-1]["role"] == "assistant":
        raise ChatTemplateError("the prompt ends with an assistant message; the answer is scored separately")
    return messages


class ChatFormat:
    """Encodes prompts and answers for one tokenizer; the template probes run once, here."""

    def __init__(self, tokenizer: Any) -> None:
        """Probe the tokenizer's template for its end-of-turn token."""
        self.tokenizer = tokenizer
        self.end_of_turn_id = _end_of_turn_id(tokenizer)

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Prompt ids: the chat template applied with the generation prompt (raw text without a template)."""
        if isinstance(prompt, str):
            if not _has_template(self.tokenizer):
                return list(self.tokenizer(prompt)["input_ids"])
            messages = [{"role": "user", "content": prompt}]
        else:
            if not _has_template(self.tokenizer):
                raise ChatTemplateError("chat messages were given, but this tokenizer has no chat template")
            messages = _check_messages(prompt)
        return _ids(self.tokenizer, _render(self.tokenizer, messages, generation_prompt=True))

    def encode_answer(self, answer: str) -> list[int]:
        """Answer ids: the text without special tokens, then the end-of-turn token."""
        if not isinstance(answer, str):
            raise InvalidInputError(f"the answer must be a string, got {type(answer).__name__}")
        if not answer.strip():
            raise EmptyAnswerError("the answer is empty or whitespace only")
        return [*_ids(self.tokenizer, answer), self.end_of_turn_id]
