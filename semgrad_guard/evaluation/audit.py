"""Audited correctness labels: every answer read against its references by the rules of docs/labeling.md.

A label is keyed by the question and the exact answer text, so it applies only while a cached answer is
unchanged; any other row falls back to an automatic judge, and the benchmark records which one each row
used. This module also measures agreement between two readings (raw agreement and Cohen's kappa).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AuditedLabel",
    "Disagreement",
    "DoubleRead",
    "agreement",
    "cohen_kappa",
    "compare_readings",
    "find_labels",
    "label_dirs",
    "load_labels",
    "resolve_labels",
]

_NAMED = ("sciq", "truthfulqa")


class AuditedLabel(BaseModel):
    """One answer's label: 1 = incorrect; ``unsure`` where the rules did not settle it (best guess kept)."""

    model_config = ConfigDict(frozen=True)

    question: str
    answer: str
    incorrect: int = Field(ge=0, le=1)
    unsure: bool = False
    reason: str = ""


def label_dirs() -> list[Path]:
    """Where labels of named sets are looked up: ``$SEMGRAD_GUARD_LABELS``, then ``benchmarks/labels``."""
    checkout = Path(__file__).resolve().parents[2]
    explicit = os.environ.get("SEMGRAD_GUARD_LABELS")
    return ([Path(explicit)] if explicit else []) + [checkout / "benchmarks" / "labels"]


def find_labels(data: str | Path) -> list[Path]:
    """The audited label files of a named set (``sciq``, ``truthfulqa``): empty where there are none.

    ``<dir>/<set>.jsonl`` holds the embedded model's answers and ``<dir>/<model>/<set>.jsonl`` another
    model's; a bench run reads all of them, so scoring one model's answers with another finds their labels.
    """
    if str(data) not in _NAMED:
        return []
    for folder in label_dirs():
        found = sorted([folder / f"{data}.jsonl", *folder.glob(f"*/{data}.jsonl")])
        found = [path for path in found if path.is_file()]
        if found:
            return found
    return []


def load_labels(*paths: Path) -> dict[tuple[str, str], AuditedLabel]:
    """Labels of JSONL files, keyed by (question, exact answer text).

    Raises ``ValueError`` when two files label one answer differently: the readings must be reconciled first.
    """
    merged: dict[tuple[str, str], AuditedLabel] = {}
    for path in paths:
        lines = path.read_text(encoding="utf-8").splitlines()
        for label in (AuditedLabel.model_validate_json(line) for line in lines if line.strip()):
            key = (label.question, label.answer)
            if key in merged and merged[key].incorrect != label.incorrect:
                raise ValueError(
                    f"{path} labels the answer {label.answer!r} to {label.question!r} "
                    f"{label.incorrect}, another file {merged[key].incorrect}: reconcile them"
                )
            merged.setdefault(key, label)
    return merged


def resolve_labels(
    audited: dict[tuple[str, str], AuditedLabel],
    questions: Sequence[str],
    answers: Sequence[str],
    fallback: Sequence[int],
    fallback_name: str,
) -> tuple[list[int], list[str], list[AuditedLabel | None]]:
    """Per row: the audited label where question and exact answer match one, else the fallback's.

    Returns the labels, each row's source (``"audited"`` or ``fallback_name``) and the matched labels.
    """
    found = [audited.get((q, a)) for q, a in zip(questions, answers, strict=True)]
    labels = [f if label is None else label.incorrect for label, f in zip(found, fallback, strict=True)]
    sources = ["audited" if label is not None else fallback_name for label in found]
    return labels, sources, found


def agreement(first: Sequence[int], second: Sequence[int]) -> float:
    """Share of rows with the same label."""
    a, b = np.asarray(first), np.asarray(second)
    return float((a == b).mean())


def cohen_kappa(first: Sequence[int], second: Sequence[int]) -> float:
    """Cohen's kappa of two binary labellings: agreement beyond what their base rates give by chance."""
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    observed = float((a == b).mean())
    chance = float(a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean()))
    return float("nan") if chance == 1 else (observed - chance) / (1 - chance)


class Disagreement(BaseModel):
    """A row the two readings labelled differently."""

    question: str
    answer: str
    first: AuditedLabel
    second: AuditedLabel


class DoubleRead(BaseModel):
    """Agreement of a second, independent reading with the first on the rows both read."""

    n: int
    agreement: float
    kappa: float
    disagreements: list[Disagreement]


def compare_readings(first: dict[tuple[str, str], AuditedLabel], second: list[AuditedLabel]) -> DoubleRead:
    """Raw agreement and Cohen's kappa of ``second`` against ``first``, with the rows they disagree on."""
    pairs = [(first[(s.question, s.answer)], s) for s in second]
    a, b = [p.incorrect for p, _ in pairs], [s.incorrect for _, s in pairs]
    return DoubleRead(
        n=len(pairs),
        agreement=agreement(a, b),
        kappa=cohen_kappa(a, b),
        disagreements=[
            Disagreement(question=p.question, answer=p.answer, first=p, second=s)
            for p, s in pairs
            if p.incorrect != s.incorrect
        ],
    )
