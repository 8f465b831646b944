"""QA sets for benchmarks, calibration and profiles: questions, reference answers and paraphrases."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["CONTEXT_PROMPT", "QA_PROMPT", "QAItem", "context_rows", "data_dirs", "load_qa", "qa_prompt"]

QA_PROMPT = "Please directly answer the following question with one or few words:\n{question}"
"""The paper's QA prompt: one user turn, no system message."""
CONTEXT_PROMPT = (
    "Please directly answer the following question with one or few words, using the context:\n"
    "Context: {context}\nQuestion: {question}"
)
"""The paper's prompt with a retrieved passage before the question (the RAG-shaped sets)."""

_NAMED = {"sciq": "sciq_dev.jsonl", "truthfulqa": "truthfulqa_dev.jsonl"}


class QAItem(BaseModel):
    """One question with every accepted reference answer and its meaning-preserving rewrites."""

    model_config = ConfigDict(frozen=True)

    question: str
    answers: list[str] = Field(min_length=1)
    paraphrases: list[str] = Field(default_factory=list)
    context: str | None = Field(default=None, description="A passage put in the prompt (RAG-shaped sets).")
    supported: bool | None = Field(
        default=None, description="Whether the context states a reference answer (known by construction)."
    )
    source_question: str | None = Field(
        default=None,
        description="The question this row rewrites (paraphrase sets): calibration keeps them in one split.",
    )

    @model_validator(mode="after")
    def _support_needs_a_context(self) -> QAItem:
        if self.supported is not None and self.context is None:
            raise ValueError("the row says whether its context supports it but has no context")
        return self

    @property
    def prompt(self) -> str:
        """The user turn this item is asked with."""
        return qa_prompt(self.question, self.context)


def qa_prompt(question: str, context: str | None = None) -> str:
    """The paper's prompt for one question, with the context before it where one is given."""
    if context is None:
        return QA_PROMPT.format(question=question)
    return CONTEXT_PROMPT.format(context=context, question=question)


def data_dirs() -> list[Path]:
    """Where named sets are looked up: ``$SEMGRAD_GUARD_DATA``, then ``shared/data`` beside the checkout."""
    checkout = Path(__file__).resolve().parents[2]
    dirs = [checkout.parent / "shared" / "data", checkout / "shared" / "data"]
    explicit = os.environ.get("SEMGRAD_GUARD_DATA")
    return ([Path(explicit)] if explicit else []) + dirs


def load_qa(source: str | Path) -> list[QAItem]:
    """Load ``sciq`` or ``truthfulqa`` (the dev splits) by name, or any JSONL file in the same format."""
    path = Path(source)
    if str(source) in _NAMED:
        found = [d / _NAMED[str(source)] for d in data_dirs() if (d / _NAMED[str(source)]).is_file()]
        if not found:
            searched = ", ".join(str(d) for d in data_dirs())
            raise FileNotFoundError(f"{_NAMED[str(source)]} not found in {searched}; set SEMGRAD_GUARD_DATA")
        path = found[0]
    lines = path.read_text(encoding="utf-8").splitlines()
    return [QAItem.model_validate_json(line) for line in lines if line.strip()]


def _note(item: QAItem) -> str:
    """A one-sentence passage stating the item's first reference answer, worded as one paraphrase."""
    asked = item.paraphrases[0] if item.paraphrases else item.question
    return f'Notes: "{asked}" - {item.answers[0].rstrip(".")}.'


def _holds(context: str, item: QAItem) -> bool:
    """Whether any of the item's references appears in the context (case-insensitive)."""
    return any(answer.lower().rstrip(".") in context.lower() for answer in item.answers)


def context_rows(items: list[QAItem], seed: int = 0) -> list[QAItem]:
    """Two rows per item: its own note as context (supported) and another item's (unsupported)."""
    rng = np.random.default_rng(seed)
    notes = [_note(item) for item in items]
    rows = []
    for index, item in enumerate(items):
        others = [j for j in rng.permutation(len(items)) if j != index and not _holds(notes[j], item)]
        if not others:
            raise ValueError(f"every other note answers {item.question!r}: no unsupported context")
        rows.append(item.model_copy(update={"context": notes[index], "supported": True}))
        rows.append(item.model_copy(update={"context": notes[others[0]], "supported": False}))
    return rows
