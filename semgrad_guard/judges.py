"""Automatic correctness judges: does an answer match any reference? Each returns 1 for incorrect.

They are weak on sentence answers (see docs/benchmarks.md), so the benchmark writes every judge's label
for every row and reports results under each, beside sanity baselines that expose a judge rewarding length.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from semgrad_guard.embeddings import SentenceEmbedder

__all__ = [
    "JUDGES",
    "SIMILARITY_THRESHOLD",
    "JudgeName",
    "judge_all",
    "normalise",
    "rouge_l",
]

JudgeName = Literal["containment", "rougeL", "similarity", "qa-similarity"]
JUDGES: tuple[JudgeName, ...] = ("containment", "rougeL", "similarity", "qa-similarity")
SIMILARITY_THRESHOLD = 0.7
"""Cosine similarity (all-MiniLM-L6-v2) at or above which an answer matches a reference."""
ROUGE_THRESHOLD = 0.5
"""ROUGE-L F1 at or above which an answer matches a reference."""

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalise(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD-style answer normalisation)."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


def _contains(haystack: str, needle: str) -> bool:
    return bool(needle) and f" {needle} " in f" {haystack} "


def containment(answer: str, references: Sequence[str]) -> bool:
    """Correct when a normalised reference appears as whole words in the answer, or the answer in it."""
    said = normalise(answer)
    return any(
        _contains(said, ref) or _contains(ref, said) for ref in (normalise(r) for r in references) if said
    )


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 over normalised word sequences (longest common subsequence)."""
    a, b = normalise(candidate).split(), normalise(reference).split()
    if not a or not b:
        return 0.0
    previous = [0] * (len(b) + 1)
    for word in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if word == other else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


def _max_similarity(
    embedder: SentenceEmbedder, answers: list[str], references: list[list[str]]
) -> np.ndarray:
    flat = [ref for refs in references for ref in refs]
    answer_vectors, reference_vectors = embedder.encode(answers), embedder.encode(flat)
    best, start = [], 0
    for row, refs in enumerate(references):
        block = reference_vectors[start : start + len(refs)]
        best.append(float((block @ answer_vectors[row]).max()))
        start += len(refs)
    return np.array(best)


def judge_all(
    questions: list[str], answers: list[str], references: list[list[str]], embedder: SentenceEmbedder
) -> dict[JudgeName, list[int]]:
    """Every judge's label (1 = incorrect) for every row.

    - ``containment``: a normalised reference appears in the answer or the answer in a reference.
    - ``rougeL``: ROUGE-L F1 with some reference >= 0.5.
    - ``similarity``: cosine of answer and some reference >= 0.7.
    - ``qa-similarity``: cosine of "question answer" and "question reference" >= 0.7, and the answer is not
      just an echo of the question (cosine of answer and question < 0.9).
    """
    similar = _max_similarity(embedder, answers, references)
    framed = _max_similarity(
        embedder,
        [f"{q} {a}" for q, a in zip(questions, answers, strict=True)],
        [[f"{q} {r}" for r in refs] for q, refs in zip(questions, references, strict=True)],
    )
    echo = _max_similarity(embedder, answers, [[q] for q in questions])
    correct: dict[JudgeName, Callable[[int], bool]] = {
        "containment": lambda i: containment(answers[i], references[i]),
        "rougeL": lambda i: max(rouge_l(answers[i], r) for r in references[i]) >= ROUGE_THRESHOLD,
        "similarity": lambda i: similar[i] >= SIMILARITY_THRESHOLD,
        "qa-similarity": lambda i: framed[i] >= SIMILARITY_THRESHOLD and echo[i] < 0.9,
    }
    return {name: [int(not correct[name](i)) for i in range(len(answers))] for name in JUDGES}
