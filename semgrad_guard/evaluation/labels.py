"""Labelled scores for calibration: read from benchmark output folders or a JSONL file."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from semgrad_guard.evaluation.judges import FALLBACK_JUDGE
from semgrad_guard.evaluation.methods import SINGLE_PASS

__all__ = ["LabelledScores", "read_labelled"]


class LabelledScores(BaseModel):
    """Score fields per answer, whether each answer was wrong, and where the labels came from."""

    model_config = ConfigDict(frozen=True)

    rows: list[dict[str, float]]
    wrong: list[int]
    model: str
    profile_name: str | None
    labels: str
    data: list[str]
    groups: list[str]
    """The question each row answers (its source question for a paraphrase): calibration splits by it."""


def _label(record: dict[str, str], judge: str, main: str, fallback: str) -> tuple[int, str]:
    """A rows.csv row's label under ``judge`` and where it came from (audited, or a judge's name)."""
    if judge == main and "incorrect" in record:
        return int(record["incorrect"]), record.get("label_source") or judge
    if judge == "audited":
        if record.get("incorrect_audited", ""):
            return int(record["incorrect_audited"]), "audited"
        return int(record[f"incorrect_{fallback}"]), fallback
    return int(record[f"incorrect_{judge}"]), judge


def _describe(sources: list[str]) -> str:
    """'audited', 'judge:NAME', or 'audited (N rows) + judge:NAME (M rows)' where they mix."""
    counts = Counter(sources)
    names = {s: "audited" if s == "audited" else f"judge:{s}" for s in counts}
    if len(counts) == 1:
        return names[sources[0]]
    return " + ".join(f"{names[s]} ({n} rows)" for s, n in sorted(counts.items()))


def _from_bench(folder: Path, judge: str | None) -> LabelledScores:
    results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    main = results["primary_judge"]
    fallback = results.get("labels", {}).get("fallback_judge", FALLBACK_JUDGE)
    judge = judge or main
    rows, wrong, sources, groups = [], [], [], []
    with (folder / "rows.csv").open(encoding="utf-8", newline="") as source:
        for record in csv.DictReader(source):
            values = {field: float(record[method]) for method, field in SINGLE_PASS.items()}
            if all(math.isfinite(v) for v in values.values()):
                label, origin = _label(record, judge, main, fallback)
                rows.append(values)
                wrong.append(label)
                sources.append(origin)
                groups.append(record.get("source_question") or record["question"])
    return LabelledScores(
        rows=rows,
        wrong=wrong,
        model=results["model"],
        profile_name=results["profile"]["name"],
        labels=_describe(sources),
        data=[f"{results['data']['source']} ({results['data']['questions']} questions)"],
        groups=groups,
    )


def _from_jsonl(path: Path) -> LabelledScores:
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    fields = list(SINGLE_PASS.values())
    return LabelledScores(
        rows=[{f: float(r[f]) for f in fields} for r in records],
        wrong=[int(r["incorrect"]) for r in records],
        model=records[0]["model"],
        profile_name=(records[0].get("profile") or {}).get("name"),
        labels=f"file:{path.name}",
        data=[str(path)],
        groups=[
            r.get("source_question") or r.get("question") or f"{path}:{n}" for n, r in enumerate(records)
        ],
    )


def read_labelled(sources: list[Path], judge: str | None = None) -> LabelledScores:
    """Merge bench output folders (rows.csv, results.json) and JSONL files of Score + ``incorrect``."""
    parts = [_from_bench(p, judge) if p.is_dir() else _from_jsonl(p) for p in sources]
    models = {part.model for part in parts}
    if len(models) > 1:
        raise ValueError(f"labelled scores come from different models: {sorted(models)}")
    return LabelledScores(
        rows=[row for part in parts for row in part.rows],
        wrong=[w for part in parts for w in part.wrong],
        model=parts[0].model,
        profile_name=parts[0].profile_name,
        labels=", ".join(sorted({part.labels for part in parts})),
        data=[d for part in parts for d in part.data],
        groups=[group for part in parts for group in part.groups],
    )
