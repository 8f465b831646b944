"""Adaptive RAG with SemGradGuard: the model answers alone when confident and retrieves only when it is not.

The answering model is the embedded SmolLM2-135M-Instruct (ChatHuggingFace over a local pipeline sharing
the scorer's weights); the retriever is an in-memory vector store over examples/data/facts.txt embedded with
all-MiniLM-L6-v2. Run from the repository root: ``python examples/langchain_rag_guard.py`` (``--max-risk R``
tries another working point).
"""

import argparse
import asyncio
import time

from langchain_local_model import fact_store, local_chat_model
from langchain_semgrad import GuardResult, SemGradGuard

# The default scorer carries the embedded model's shipped calibration, whose bundle has no threshold of its
# own: on this 135M model no risk level meets an error target. 0.849 is the median calibrated risk of its
# benchmark answers (docs/calibration.md): it accepts about half of them, a working point, not a guarantee.
MAX_RISK = 0.849
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-risk", type=float, default=MAX_RISK, help="retrieve when the risk is above it")
    max_risk = parser.parse_args().max_risk
    start = time.perf_counter()
    llm, store = local_chat_model(max_new_tokens=16), fact_store()
    retriever = store.as_retriever(search_kwargs={"k": 1})
    guarded = SemGradGuard(llm, policy="retrieve", retriever=retriever, max_risk=max_risk)
    print(f"Set-up {time.perf_counter() - start:.1f} s; calibrated risk > {max_risk} = low confidence\n")

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
