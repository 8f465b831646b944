"""The exact prompt the evaluator scores for a query over several contexts (no model: a recording scorer)."""

from typing import Any

import pytest
from llama_index.core.bridge.pydantic import Field
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.llm import LLMChatStartEvent, LLMCompletionStartEvent
from llama_index.core.llms import LLMMetadata
from llama_index.core.llms.mock import MockLLM
from llama_index.core.response_synthesizers import get_response_synthesizer
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.evaluation.semgrad import SemGradEvaluator
from llama_index.evaluation.semgrad._prompts import to_scorer_prompt

from semgrad_guard import Score, SemGradScorer
from semgrad_guard.prompts import Prompt

QUERY = "Who founded Harbor Lane Library?"
ANSWER = "Edith Marlow."
CONTEXTS = [
    "Harbor Lane Library was founded in 1921.",
    "Its founder was the sea captain Edith Marlow.\n",  # documents often end with a newline
    "  The reading room faces the harbour.",
]
EXPECTED_USER_TURN = (
    "Context information is below.\n"
    "---------------------\n"
    "Harbor Lane Library was founded in 1921.\n"
    "\n"
    "Its founder was the sea captain Edith Marlow.\n"
    "\n"
    "The reading room faces the harbour.\n"
    "---------------------\n"
    "Given the context information and not prior knowledge, answer the query.\n"
    "Query: Who founded Harbor Lane Library?\n"
    "Answer: "
)


class RecordingScorer(SemGradScorer):
    """Keeps every (prompt, answer) it is asked to score; the score is the prompt's length in characters."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Prompt, str]] = []

    def score(self, prompt: Prompt, answer: str, *, errors: Any = "raise") -> Score:
        self.calls.append((prompt, answer))
        text = prompt if isinstance(prompt, str) else "".join(m["content"] for m in prompt)
        return Score(model="recording", semgrad=float(len(text)))

    async def ascore(self, prompt: Prompt, answer: str, *, errors: Any = "raise") -> Score:
        return self.score(prompt, answer, errors=errors)


class ChatMock(MockLLM):
    """MockLLM that says it is a chat model, so the synthesizer picks the chat QA template."""

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(is_chat_model=True)


class LLMInputs(BaseEventHandler):
    """The prompts (completion) or messages (chat) sent to LLMs, in order (MockLLM chats by completing)."""

    seen: list[Prompt] = Field(default_factory=list)

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        if isinstance(event, LLMChatStartEvent):
            self.seen.append(to_scorer_prompt(event.messages))
        elif isinstance(event, LLMCompletionStartEvent):
            self.seen.append(event.prompt)


def test_several_contexts_give_the_pinned_prompt() -> None:
    scorer = RecordingScorer()
    evaluator = SemGradEvaluator(scorer=scorer)
    result = evaluator.evaluate(query=QUERY, response=ANSWER, contexts=CONTEXTS)
    assert scorer.calls == [([{"role": "user", "content": EXPECTED_USER_TURN}], ANSWER)]
    raw = scorer.score(EXPECTED_USER_TURN, ANSWER).semgrad  # scoring the pinned prompt
    assert raw is not None and result.score == pytest.approx(1 / (1 + raw))  # uncalibrated confidence
    assert "prompt=query + 3 contexts (QA template)" in result.feedback


@pytest.mark.parametrize("llm_class", [MockLLM, ChatMock])
def test_the_scored_prompt_is_what_compact_mode_sends_the_llm(li_register: Any, llm_class: type) -> None:
    llm = llm_class()
    inputs = li_register(LLMInputs())
    synthesizer = get_response_synthesizer(llm=llm, response_mode="compact")
    synthesizer.synthesize(QUERY, [NodeWithScore(node=TextNode(text=text)) for text in CONTEXTS])
    sent = inputs.seen[0]  # the chat call, or the only completion call
    sent_messages = [{"role": "user", "content": sent}] if isinstance(sent, str) else sent
    assert sent_messages[-1] == {"role": "user", "content": EXPECTED_USER_TURN}
    assert [m["role"] for m in sent_messages] == (["system", "user"] if llm_class is ChatMock else ["user"])

    scorer = RecordingScorer()
    SemGradEvaluator(scorer=scorer, llm=llm).evaluate(query=QUERY, response=ANSWER, contexts=CONTEXTS)
    assert scorer.calls == [(sent_messages, ANSWER)]
