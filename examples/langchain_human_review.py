"""Send low-confidence answers to people: ``policy="human"`` with the durable SQLite review queue.

The guard returns a holding answer and queues the item; a reviewer works the queue with the
``langchain-semgrad-review`` command (called in-process here), and the queue survives a restart.
Run from the repository root: ``python examples/langchain_human_review.py``.
"""

import tempfile
import time
from pathlib import Path

from langchain_core.output_parsers import StrOutputParser
from langchain_local_model import local_chat_model
from langchain_semgrad import ReviewQueue, SemGradGuard
from langchain_semgrad.review import main as review_cli

THRESHOLD = 4.4e-5  # median SemGrad of the benchmark answers (docs/calibration.md); calibrate for real use

QUESTIONS = [
    "What is the capital of France?",
    "Who discovered penicillin?",
    "What year did the Berlin Wall fall?",
]


def main() -> None:
    start = time.perf_counter()
    path = Path(tempfile.mkdtemp()) / "review.sqlite3"
    chain = local_chat_model(max_new_tokens=24) | StrOutputParser()  # a chain that returns plain strings
    guarded = SemGradGuard(
        chain,
        policy="human",
        review_queue=ReviewQueue(path),
        holding_answer="Thanks! A specialist will confirm this answer shortly.",
        threshold=THRESHOLD,
        threshold_field="semgrad",
    )
    print(f"Review queue: {path}\n")
    for question in QUESTIONS:
        print(f"Q: {question}\n   -> {guarded.invoke(question).strip()!r}")

    print("\nAfter a restart (a new queue object on the same file), the reviewer lists the queue:")
    pending = ReviewQueue(path).items()
    review_cli(["--db", str(path), "list"])
    if pending:
        prompt = pending[0].prompt
        question = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        print(f"\n...and resolves the first item ({question!r}):")
        review_cli(["--db", str(path), "resolve", pending[0].id, "Checked by a reviewer."])
    left = len(ReviewQueue(path).items())
    print(f"\n{left} item(s) still pending; {time.perf_counter() - start:.1f} s in all.")


if __name__ == "__main__":
    main()
