"""QA sets for benchmarks, calibration and profiles: questions, reference answers and paraphrases."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["QA_PROMPT", "QAItem", "data_dirs", "load_qa", "qa_prompt"]

QA_PROMPT = "Please directly answer the following question with one or few words:\n{question}"
"""The paper's QA prompt: one user turn, no system message."""

_NAMED = {"sciq": "sciq_dev.jsonl", "truthfulqa": "truthfulqa_dev.jsonl"}


class QAItem(BaseModel):
    """One question with every accepted reference answer and its meaning-preserving rewrites."""

    model_config = ConfigDict(frozen=True)

    question: str
    answers: list[str] = Field(min_length=1)
    paraphrases: list[str] = Field(default_factory=list)


def qa_prompt(question: str) -> str:
    """The paper's prompt for one question."""
    return QA_PROMPT.format(question=question)


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
