"""Turning a prompt and an answer into the token ids the method scores.

The prompt goes through the model's chat template with the generation prompt added; the answer is its text
tokenized without special tokens, followed by the token that ends an assistant turn in that template.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeAlias

from semgrad_guard.errors import ChatTemplateError, EmptyAnswerError, InputTooLongError, InvalidInputError

__all__ = ["MAX_CHARS_PER_TOKEN", "ROLES", "ChatFormat", "Prompt", "generation_prompt_ids"]

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
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ChatTemplateError(f"the chat template rejected these messages: {reason}") from exc
    return str(text)


def _ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` as the tokenizer reads it (a control-token spelling becomes that token)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


class _Quoting:
    """Tokenizes text so that it never yields special tokens, without touching the shared tokenizer.

    A fast tokenizer's ``split_special_tokens`` flips a flag on its Rust backend for every caller, so
    another thread (a generator sharing the tokenizer) could read its own prompt with the flag set. A
    private copy of the backend keeps the flag set for ourselves; slow tokenizers take the flag per call.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "_tokenizer", None)
        self.backend: Any = None
        if backend is not None and hasattr(backend, "to_str"):
            from tokenizers import Tokenizer

            self.backend = Tokenizer.from_str(backend.to_str())
            self.backend.encode_special_tokens = True

    def ids(self, text: str) -> list[int]:
        if not text:
            return []
        if self.backend is not None:
            return list(self.backend.encode(text, add_special_tokens=False).ids)
        return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


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


ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "ipython", "function"})
"""Message roles chat templates know; any other role is refused rather than rendered as a new header."""
_INSTRUCTION_ROLES = frozenset({"system", "developer"})
MAX_CHARS_PER_TOKEN = 32
"""Text longer than ``MAX_CHARS_PER_TOKEN`` characters per token of context is refused before tokenizing."""


def _is_blank(text: str) -> bool:
    """Whitespace, control and format characters only (NUL, zero-width space, BOM...): nothing to score."""
    return all(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf") for ch in text)


def _check_text(text: str, what: str, max_chars: int | None) -> None:
    """Refuse text no tokenizer should see: lone surrogates, or more characters than any context holds."""
    if max_chars is not None and len(text) > max_chars:
        raise InputTooLongError(f"{what} has {len(text)} characters, more than {max_chars} fit any context")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"{what} is not valid Unicode text (it holds a lone surrogate)") from None


def _check_messages(prompt: object, max_chars: int | None) -> list[dict[str, str]]:
    """Validated ``{"role", "content"}`` messages; errors name the problem, never the message text."""
    if isinstance(prompt, (bytes, Mapping)) or not isinstance(prompt, Iterable):
        raise InvalidInputError(
            f"the prompt must be a string or a list of messages, got {type(prompt).__name__}"
        )
    messages = []
    for i, message in enumerate(prompt):
        if not isinstance(message, Mapping):
            raise ChatTemplateError(f"message {i} is a {type(message).__name__}, not a role/content mapping")
        missing = {"role", "content"} - set(message)
        if missing:
            raise ChatTemplateError(f"message {i} has no {' or '.join(sorted(missing))}")
        role, content = message["role"], message["content"]
        if not isinstance(role, str) or not isinstance(content, str):
            raise ChatTemplateError(f"message {i} needs string role and content")
        if role not in ROLES:
            raise ChatTemplateError(f"message {i} has an unknown role; expected one of {sorted(ROLES)}")
        _check_text(content, f"message {i}", max_chars)
        messages.append({"role": role, "content": content})
    if not messages:
        raise ChatTemplateError("the prompt has no messages")
    if all(m["role"] in _INSTRUCTION_ROLES for m in messages):
        raise ChatTemplateError("the prompt has only system messages: there is no question to answer")
    if messages[-1]["role"] == "assistant":
        raise ChatTemplateError("the prompt ends with an assistant message; the answer is scored separately")
    return messages


class ChatFormat:
    """Encodes prompts and answers for one tokenizer; the template probes run once, here.

    Text from users, documents and providers never becomes a control token: an answer, or a message's
    content, that spells ``<|im_end|>`` is tokenized as those characters, not as the end of a turn.
    ``max_chars`` bounds the work spent on text before it is refused as too long.
    """

    def __init__(self, tokenizer: Any, max_chars: int | None = None) -> None:
        """Probe the tokenizer's template for its end-of-turn token."""
        self.tokenizer = tokenizer
        self.max_chars = max_chars
        self.end_of_turn_id = _end_of_turn_id(tokenizer)
        self._quoting = _Quoting(tokenizer)
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        self._control = sorted(
            {str(t) for t in getattr(tokenizer, "all_special_tokens", [])}
            | {str(t) for t in added.values() if getattr(t, "special", True)},
            key=len,
            reverse=True,
        )

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Prompt ids: the chat template applied with the generation prompt (raw text without a template)."""
        if isinstance(prompt, str):
            _check_text(prompt, "the prompt", self.max_chars)
            if not _has_template(self.tokenizer):
                if not self._spells_control(prompt):
                    return list(self.tokenizer(prompt)["input_ids"])
                # The special tokens the tokenizer adds to any text (a BOS), then the text as plain text.
                return list(self.tokenizer("")["input_ids"]) + self._quoting.ids(prompt)
            messages = [{"role": "user", "content": prompt}]
        else:
            messages = _check_messages(prompt, self.max_chars)
            if not _has_template(self.tokenizer):
                raise ChatTemplateError("chat messages were given, but this tokenizer has no chat template")
        rendered = _render(self.tokenizer, messages, generation_prompt=True)
        if not any(self._spells_control(m["content"]) for m in messages):
            return _ids(self.tokenizer, rendered)
        return self._encode_quoted(messages, rendered)

    def encode_answer(self, answer: str) -> list[int]:
        """Answer ids: the text without special tokens, then the end-of-turn token."""
        if not isinstance(answer, str):
            raise InvalidInputError(f"the answer must be a string, got {type(answer).__name__}")
        _check_text(answer, "the answer", self.max_chars)
        if _is_blank(answer):
            raise EmptyAnswerError("the answer is empty, or only whitespace and invisible characters")
        return [*self._quoting.ids(answer), self.end_of_turn_id]

    def _spells_control(self, text: str) -> bool:
        return any(token in text for token in self._control)

    def _encode_quoted(self, messages: list[dict[str, str]], rendered: str) -> list[int]:
        """The template's own text with its control tokens, each message's content with none.

        The template is rendered again with a private-use placeholder for each content, which splits it
        into template text and content slots exactly (no search in the text, which could match a control
        token of the template itself).
        """
        marks = [f"\ue000{i}\ue001" for i in range(len(messages))]
        skeleton = _render(
            self.tokenizer,
            [{**m, "content": mark} for m, mark in zip(messages, marks, strict=True)],
            generation_prompt=True,
        )
        refused = ChatTemplateError(
            "a message spells a control token and this template rewrites message text, so it cannot be "
            "kept from becoming one"
        )
        pieces, rest = [], skeleton
        for mark in marks:
            before, found, rest = rest.partition(mark)
            if not found:
                raise refused
            pieces.append(before)
        contents = [m["content"] for m in messages]
        if "".join(p + c for p, c in zip(pieces, contents, strict=True)) + rest != rendered:
            raise refused
        ids: list[int] = []
        for piece, content in zip(pieces, contents, strict=True):
            ids += _ids(self.tokenizer, piece) + self._quoting.ids(content)
        return ids + _ids(self.tokenizer, rest)
