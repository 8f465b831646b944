"""What the model actually saw: a child-run handler that records every model call inside one wrapped run.

`SemGradGuard` adds a :class:`ModelCalls` to the callbacks of the step it wraps; whatever the chain's shape
(dict inputs, ``RunnableParallel``, prompt templates, retrievers), each chat-model or LLM call below it
reports its input on start and its output on end, so the guard scores the prompt the model received.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import LLMResult

from langchain_semgrad._messages import messages_to_prompt
from semgrad_guard.prompts import Prompt

__all__ = ["ModelCall", "ModelCalls"]


class ModelCall(NamedTuple):
    """One model call: the prompt it received and its output text (``None`` until it ended)."""

    run_id: UUID
    parent_run_id: UUID | None
    prompt: Prompt
    output: str | None


class ModelCalls(BaseCallbackHandler):
    """Records the chat-model and LLM calls of one run, in start order (thread-safe, called inline).

    ``to_prompt`` turns a chat call's messages into the prompt kept (the agent middleware keeps tool calls).
    """

    run_inline = True  # in the async manager too: no executor hop, events arrive in order

    def __init__(self, to_prompt: Callable[[Sequence[BaseMessage]], Prompt] = messages_to_prompt) -> None:
        super().__init__()
        self._to_prompt = to_prompt
        self._lock = threading.Lock()
        self._calls: dict[UUID, ModelCall] = {}

    def _start(self, run_id: UUID, parent_run_id: UUID | None, prompt: Prompt) -> None:
        with self._lock:
            if parent_run_id not in self._calls:  # a model called inside a model: keep the outer call
                self._calls[run_id] = ModelCall(run_id, parent_run_id, prompt, None)

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """Record the messages the chat model received."""
        if messages:
            self._start(run_id, parent_run_id, self._to_prompt(messages[0]))

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """Record the prompt the LLM received."""
        if prompts:
            self._start(run_id, parent_run_id, prompts[0])

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        """Record the call's output: its first generation's text."""
        generations = response.generations
        text = generations[0][0].text if generations and generations[0] else ""
        with self._lock:
            call = self._calls.get(run_id)
            if call is not None:
                self._calls[run_id] = call._replace(output=text)

    @property
    def calls(self) -> list[ModelCall]:
        """The recorded calls, in start order (a copy)."""
        with self._lock:
            return list(self._calls.values())

    def answering_call(self, answer: str) -> ModelCall | None:
        """The call whose output became ``answer`` (the last such), else the last call; ``None`` if none."""
        calls = self.calls
        wanted = answer.strip()
        matches = [call for call in calls if call.output is not None and call.output.strip() == wanted]
        if matches:
            return matches[-1]
        ended = [call for call in calls if call.output is not None]
        return ended[-1] if ended else (calls[-1] if calls else None)
