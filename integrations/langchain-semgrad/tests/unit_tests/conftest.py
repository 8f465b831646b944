"""Fakes for fast unit tests: a chat model that echoes its input and a scorer that needs no model."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from semgrad_guard import Score, SemGradScorer
from semgrad_guard.prompts import Prompt


class EchoChat(BaseChatModel):
    """Answers 'unsure about X' for questions with 'hard' (unless given non-empty context), else 'sure: X'."""

    prefix: str = ""
    fail: bool = False

    @property
    def _llm_type(self) -> str:
        return "echo"

    def _answer(self, messages: list[BaseMessage]) -> str:
        if self.fail:
            raise RuntimeError("the model failed")
        question = messages[-1].text
        if "hard" in question and not any(re.search(r"(Context|Text):\s*\S", m.text) for m in messages):
            return f"{self.prefix}unsure about {question}"
        return f"{self.prefix}sure: {question}"

    def _generate(
        self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage(self._answer(messages)))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kw: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for word in self._answer(messages).split(" "):
            yield ChatGenerationChunk(message=AIMessageChunk(content=word + " "))


class FakeScorer(SemGradScorer):
    """semgrad = 2e-3 when the answer says 'unsure', else 0.0; can raise or stall to test failure policies."""

    def __init__(
        self, *, error: Exception | None = None, delay: float = 0.0, calibrated: bool = False
    ) -> None:
        super().__init__()
        self.error, self.delay, self.calibrated = error, delay, calibrated
        self.calls: list[tuple[Prompt, str]] = []

    def score(self, prompt: Prompt, answer: str, *, errors: Any = "raise") -> Score:
        self.calls.append((prompt, answer))
        time.sleep(self.delay)
        if self.error is not None:
            raise self.error
        unsure = "unsure" in answer
        if self.calibrated:  # what a calibration fills in: the decision without a raw threshold
            risk = 0.9 if unsure else 0.1
            return Score(model="fake", semgrad=0.0, risk=risk, confidence=1 - risk, low_confidence=unsure)
        return Score(model="fake", semgrad=2e-3 if unsure else 0.0)

    async def ascore(self, prompt: Prompt, answer: str, *, errors: Any = "raise") -> Score:
        return await asyncio.to_thread(self.score, prompt, answer, errors=errors)


@pytest.fixture
def chat() -> EchoChat:
    return EchoChat()


@pytest.fixture
def scorer() -> FakeScorer:
    return FakeScorer()


@pytest.fixture
def make_scorer() -> type[FakeScorer]:
    return FakeScorer
