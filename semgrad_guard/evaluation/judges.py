"""Automatic correctness judges: does an answer match any reference? Each returns 1 for incorrect.

The benchmark prefers audited labels (:mod:`semgrad_guard.evaluation.audit`); these judges label the rows
that have none, and every judge's label is written for every row. docs/judges.md measures each against the
audited labels: ``key-match`` (the fallback) agrees best; the embedding judges are weak on sentence answers.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import numpy as np

from semgrad_guard.evaluation.embeddings import SentenceEmbedder

__all__ = [
    "FALLBACK_JUDGE",
    "GAIN_THRESHOLD",
    "JUDGES",
    "KEY_RECALL_THRESHOLD",
    "SIMILARITY_THRESHOLD",
    "JudgeFeatures",
    "JudgeName",
    "content_words",
    "judge_all",
    "judge_features",
    "key_match",
    "key_recall",
    "normalise",
    "question_words",
    "rouge_l",
]

JudgeName = Literal["containment", "rougeL", "similarity", "qa-similarity", "key-match"]
JUDGES: tuple[JudgeName, ...] = ("containment", "rougeL", "similarity", "qa-similarity", "key-match")
FALLBACK_JUDGE: JudgeName = "key-match"
"""The automatic judge that agrees best with the audited labels (docs/judges.md): used where none exists."""
SIMILARITY_THRESHOLD = 0.7
"""Cosine similarity (all-MiniLM-L6-v2) at or above which an answer matches a reference."""
ROUGE_THRESHOLD = 0.5
"""ROUGE-L F1 at or above which an answer matches a reference."""
KEY_RECALL_THRESHOLD = 0.67
"""Share of a reference's key words (content words not in the question) the answer must contain."""
GAIN_THRESHOLD = 0.3
"""How much closer (cosine) an answer must be to a reference than to its question to match it."""

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER_WORDS = "zero one two three four five six seven eight nine ten eleven twelve"


def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Function words, question words and answer framing ("is called", "the answer is"): never key words.
_STOP = _wordset(
    """a an the of in on at to for from by with as into onto about than through over under between within
    without and or but if so then that this these those it its they them their there here he she his her we
    our you your i me my is are was were be been being am do does did done can could will would shall should
    may might must has have had having what which who whom whose why how when where whether also such some
    any all each every most more many much other another ones thing things something very often usually
    typically generally primarily mainly just only even still really called known term name named answer
    refers refer type kind form process part"""
)
_NEGATIONS = _wordset("no not never nothing none cannot nobody nowhere neither nor")
_CONTRACTED = _wordset("do does did is are was were ca wo could would should have has had ai must need")
_NUMBERS = {word: str(n) for n, word in enumerate(_NUMBER_WORDS.split())}


def normalise(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD-style answer normalisation)."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


def _stem(word: str) -> str:
    """A crude stem, enough to match plurals and verb forms: nodes, node -> nod; caused, causes -> caus."""
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    else:
        if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
            word = word[:-1]
    return word[:-1] if word.endswith("e") and len(word) > 3 else word


def content_words(text: str) -> set[str]:
    """Crudely stemmed content words of ``text``; every negation ("no", "isn't", "cannot") becomes "not"."""
    words = set()
    for word in normalise(text).split():
        if word in _NEGATIONS or (word.endswith("nt") and word[:-2] in _CONTRACTED):
            words.add("not")
        elif (word := _NUMBERS.get(word, word)) not in _STOP:
            words.add(_stem(word))
    return words


def question_words(question: str) -> set[str]:
    """Content words of the question, less the two options of a choice ("a tortoise or a hare?")."""
    words = content_words(question)
    tokens = normalise(question).split()
    for i, token in enumerate(tokens):
        if token == "or":
            words -= {_stem(_NUMBERS.get(t, t)) for t in tokens[max(i - 1, 0) : i + 2 : 2]}
    return words


def key_recall(question: str, answer: str, references: Sequence[str]) -> float:
    """Largest share of a reference's key words (its content words not in the question) in the answer.

    0 for an answer that adds no content word to the question (an echo), whatever its references.
    """
    asked, said = question_words(question), content_words(answer)
    if not said - asked:
        return 0.0
    keys = [key for key in (content_words(r) - asked for r in references) if key]
    return max((len(key & said) / len(key) for key in keys), default=0.0)


def key_match(question: str, answer: str, references: Sequence[str], gain: float = 0.0) -> bool:
    """The ``key-match`` judge: True (correct) when the answer is no echo and matches some reference.

    It matches when it holds at least ``KEY_RECALL_THRESHOLD`` of a reference's key words, or when ``gain``
    (cosine with the nearest reference minus cosine with the question) is at least ``GAIN_THRESHOLD``.
    """
    if not content_words(answer) - question_words(question):
        return False  # an echo: it repeats the question's words without adding the asked-for information
    return key_recall(question, answer, references) >= KEY_RECALL_THRESHOLD or gain >= GAIN_THRESHOLD


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


class JudgeFeatures(NamedTuple):
    """Per-row embedding similarities the judges threshold (cosines of all-MiniLM-L6-v2 embeddings)."""

    similarity: np.ndarray
    """Largest cosine of the answer and a reference."""
    framed: np.ndarray
    """Largest cosine of "question answer" and "question reference"."""
    echo: np.ndarray
    """Cosine of the answer and the question."""

    @property
    def gain(self) -> np.ndarray:
        """How much closer the answer is to its nearest reference than to the question."""
        gain: np.ndarray = self.similarity - self.echo
        return gain


def judge_features(
    questions: list[str], answers: list[str], references: list[list[str]], embedder: SentenceEmbedder
) -> JudgeFeatures:
    """The embedding similarities of every row (one embedding pass over answers, references, questions)."""
    return JudgeFeatures(
        similarity=_max_similarity(embedder, answers, references),
        framed=_max_similarity(
            embedder,
            [f"{q} {a}" for q, a in zip(questions, answers, strict=True)],
            [[f"{q} {r}" for r in refs] for q, refs in zip(questions, references, strict=True)],
        ),
        echo=_max_similarity(embedder, answers, [[q] for q in questions]),
    )


def judge_all(
    questions: list[str], answers: list[str], references: list[list[str]], embedder: SentenceEmbedder
) -> dict[JudgeName, list[int]]:
    """Every judge's label (1 = incorrect) for every row.

    - ``containment``: a normalised reference appears in the answer or the answer in a reference.
    - ``rougeL``: ROUGE-L F1 with some reference >= 0.5.
    - ``similarity``: cosine of answer and some reference >= 0.7.
    - ``qa-similarity``: cosine of "question answer" and "question reference" >= 0.7, and the answer is not
      just an echo of the question (cosine of answer and question < 0.9).
    - ``key-match``: the answer adds a content word to the question (no echo) and either holds >= 67% of
      some reference's key words (those not in the question) or is >= 0.3 closer (cosine) to a reference
      than to the question. Thresholds chosen on half of the audited rows (docs/judges.md).
    """
    f = judge_features(questions, answers, references, embedder)
    gain = f.gain
    correct: dict[JudgeName, Callable[[int], bool]] = {
        "containment": lambda i: containment(answers[i], references[i]),
        "rougeL": lambda i: max(rouge_l(answers[i], r) for r in references[i]) >= ROUGE_THRESHOLD,
        "similarity": lambda i: f.similarity[i] >= SIMILARITY_THRESHOLD,
        "qa-similarity": lambda i: f.framed[i] >= SIMILARITY_THRESHOLD and f.echo[i] < 0.9,
        "key-match": lambda i: key_match(questions[i], answers[i], references[i], float(gain[i])),
    }
    return {name: [int(not correct[name](i)) for i in range(len(answers))] for name in JUDGES}
