"""Adaptive RAG with SemGradGuard: the model answers alone when confident and retrieves only when it is not.

The answering model is the embedded SmolLM2-135M-Instruct (ChatHuggingFace over a local pipeline sharing
the scorer's weights); the retriever is an in-memory vector store over examples/data/facts.txt embedded with
all-MiniLM-L6-v2. Run from the repository root: ``python examples/langchain_rag_guard.py``.
"""

import asyncio
import time

from langchain_local_model import fact_store, local_chat_model
from langchain_semgrad import GuardResult, SemGradGuard

from semgrad_guard import default_scorer

# No raw threshold: the default scorer carries the embedded model's shipped calibration
# (docs/calibration.md), which is weak on a 135M model; fit your own for real use.
SYSTEM = "Answer the question directly with one or a few words."

QUESTIONS = [
    "What is the capital of France?",
    "What is the largest ocean on Earth?",
    "How high is Mount Kilimanjaro in metres?",
    "In which year did Ada Lovelace write the first computer program?",
    "How do honey bees tell each other where flowers are?",
    "In which year was Canberra chosen as Australia's capital?",
    "Who walked on the Moon during Apollo 11?",
]


def report(question: str, answer: str, result: GuardResult) -> None:
    first = result.score.risk if result.score else None
    final = result.final_score.risk if result.final_score else None
    extra = f", {len(result.documents)} documents" if result.documents else ""
    print(f"Q: {question}\n   route={result.route}{extra}  risk first={first:.3f} final={final:.3f}")
    print(f"   A: {answer.strip()!r}")


def guarded_threshold() -> float:
    """The shipped calibration's acceptance threshold on the calibrated risk."""
    calibration = default_scorer().calibration
    assert calibration is not None and calibration.threshold is not None
    return calibration.threshold.max_risk


def main() -> None:
    start = time.perf_counter()
    llm, store = local_chat_model(max_new_tokens=16), fact_store()
    retriever = store.as_retriever(search_kwargs={"k": 1})
    guarded = SemGradGuard(llm, policy="retrieve", retriever=retriever)
    threshold = guarded_threshold()
    print(f"Set-up {time.perf_counter() - start:.1f} s; calibrated risk > {threshold:.3f} = low confidence\n")

    # A system turn plus the question; on the retrieve route the context joins the question's turn.
    chats = [[("system", SYSTEM), ("human", question)] for question in QUESTIONS]
    answers = guarded.batch(chats, {"max_concurrency": 2})
    for question, message in zip(QUESTIONS, answers, strict=True):
        report(question, message.text, GuardResult.model_validate(message.response_metadata["semgrad"]))

    print("\nAsync and streaming take the same route:")
    message = asyncio.run(guarded.ainvoke(chats[2]))
    print(f"   ainvoke route={message.response_metadata['semgrad']['route']}")
    chunks = list(guarded.stream(chats[2]))
    route = chunks[-1].response_metadata["semgrad"]["route"]
    print(f"   stream: {len(chunks)} chunks, route={route}: {''.join(c.text for c in chunks).strip()!r}")
    retrieved = sum(m.response_metadata["semgrad"]["route"] == "retrieve" for m in answers)
    print(
        f"\n{retrieved} of {len(QUESTIONS)} questions retrieved; {time.perf_counter() - start:.1f} s in all."
    )


if __name__ == "__main__":
    main()
