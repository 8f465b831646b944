"""Side-by-side tables of finished bench runs: both models, proxy scoring, RAG, paraphrases, sampling.

Run from the repository root after the runs in benchmarks/README.md (no model is loaded)::

    python benchmarks/compare_models.py --out benchmarks/results/models.md

Every cell is AUROC with its 95% bootstrap interval under the run's main labels (incorrect, or for the
RAG-shaped set "the context does not state the answer", is the positive class), as stored in each run's
results.json; the label rows say which labels those are and how many rows each run has.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from semgrad_guard.evaluation.audit import compare_readings, load_labels
from semgrad_guard.evaluation.metrics import auroc, bootstrap_auroc_difference

RESULTS = Path("benchmarks/results")
LABELS = Path("benchmarks/labels")
EMBEDDED, QWEN = RESULTS / "embedded", RESULTS / "qwen2.5-coder-1.5b"
SETS = ("sciq", "truthfulqa")
METHODS = (
    "semgrad",
    "hybridgrad",
    "exgrad",
    "pe",
    "ln_pe",
    "mean_entropy",
    "max_token_nll",
    "combined",
    "length",
    "neg_length",
)
SELF = {  # column -> run folder: every dev question (500 SciQ, 400 TruthfulQA)
    "SmolLM2 SciQ": EMBEDDED / "sciq",
    "SmolLM2 TruthfulQA": EMBEDDED / "truthfulqa",
    "Qwen-1.5B SciQ": QWEN / "full" / "sciq",
    "Qwen-1.5B TruthfulQA": QWEN / "full" / "truthfulqa",
}
PROXY = {  # (answers by, scored by) -> run folder per set, every dev question
    ("SmolLM2", "SmolLM2 (self)"): EMBEDDED,
    ("SmolLM2", "Qwen-1.5B (proxy)"): QWEN / "scores-smollm2",
    ("Qwen-1.5B", "Qwen-1.5B (self)"): QWEN / "full",
    ("Qwen-1.5B", "SmolLM2 (proxy)"): EMBEDDED / "scores-qwen",
}
RAG = {"SmolLM2": EMBEDDED / "rag", "Qwen-1.5B": QWEN / "rag"}
PARAPHRASED = {  # the embedded model's answers to benchmarks/data/<set>_para_dev.jsonl
    "SmolLM2 SciQ paraphrased": EMBEDDED / "paraphrases" / "sciq",
    "SmolLM2 TruthfulQA paraphrased": EMBEDDED / "paraphrases" / "truthfulqa",
}
SAMPLED = {  # the first 50 questions of each set; SmolLM2's samples are those of its full runs
    f"{model} {title}": root / "first-50-k10" / name
    for model, root in (("SmolLM2", EMBEDDED), ("Qwen-1.5B", QWEN))
    for name, title in (("sciq", "SciQ"), ("truthfulqa", "TruthfulQA"))
}
SAMPLING = ("lexical_similarity", "semantic_entropy", "degree", "eigenvalue")


def _load(folder: Path) -> dict[str, Any] | None:
    path = folder / "results.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _cell(results: dict[str, Any] | None, method: str) -> str:
    if results is None:
        return "not run"
    found = results["metrics"][results["primary_judge"]].get(method)
    if found is None:
        return ""
    low, high = found["auroc_ci"]
    return f"{found['auroc']:.3f} [{low:.3f}, {high:.3f}]"


def _rows(folder: Path) -> list[dict[str, str]] | None:
    """A run's rows.csv, or None where the run has not been made."""
    path = folder / "rows.csv"
    if not path.is_file():
        return None
    with path.open(encoding="utf-8", newline="") as source:
        return list(csv.DictReader(source))


def _difference(folder: Path, first: str, second: str) -> str:
    """AUROC(first) - AUROC(second) on the run's rows, with its paired 95% bootstrap interval."""
    found = _rows(folder)
    if found is None:
        return "not run"
    rows = [r for r in found if r[first] != "nan" and r[second] != "nan"]
    y = np.array([int(r["incorrect"]) for r in rows])
    a, b = (np.array([float(r[m]) for r in rows]) for m in (first, second))
    low, high = bootstrap_auroc_difference(y, a, b)
    return f"{auroc(y, a) - auroc(y, b):+.3f} [{low:+.3f}, {high:+.3f}]"


def _key_match_shares(folder: Path) -> str:
    """Share of answers the key-match judge finds wrong: among supported rows, then unsupported (RAG set)."""
    rows = _rows(folder)
    if rows is None:
        return "not run"
    shares = [
        np.mean([int(r["incorrect_key-match"]) for r in rows if r["incorrect"] == unsupported])
        for unsupported in ("0", "1")
    ]
    return " / ".join(f"{share:.1%}" for share in shares)


def _second_reading(first_files: list[Path], second_file: Path) -> str:
    """How a second reading of audited labels agrees with the first (rows, agreement, kappa)."""
    first = load_labels(*first_files)
    second = list(load_labels(second_file).values())
    read = compare_readings(first, second)
    return f"{read.n} rows read twice: agree on {read.n - len(read.disagreements)} (kappa {read.kappa:.2f})"


def _labels(results: dict[str, Any] | None) -> str:
    if results is None:
        return "not run"
    summary, main = results["labels"], results["primary_judge"]
    if main == "audited":
        what = f"audited ({summary['audited_rows']}, {summary['unsure_rows']} unsure"
        what += f"; {summary['fallback_rows']} key-match)" if summary["fallback_rows"] else ")"
    else:
        what = main
    return f"{what}; {results['error_rate'][main]:.1%} positive of {results['data']['questions']}"


def _table(folders: dict[str, Path], methods: tuple[str, ...]) -> list[str]:
    """Labels, each method's AUROC [CI] and SemGrad minus mean entropy, one column per run folder."""
    runs = {name: _load(folder) for name, folder in folders.items()}
    lines = ["| | " + " | ".join(runs) + " |", "| --- |" + " --- |" * len(runs)]
    lines.append("| labels | " + " | ".join(_labels(r) for r in runs.values()) + " |")
    lines += [f"| {m} | " + " | ".join(_cell(r, m) for r in runs.values()) + " |" for m in methods]
    gaps = (_difference(folder, "semgrad", "mean_entropy") for folder in folders.values())
    lines.append("| semgrad - mean_entropy | " + " | ".join(gaps) + " |")
    return lines


def report() -> str:
    """The tables as markdown."""
    out = ["## Self-scoring: each model scores its own greedy answers (every dev question)", ""]
    qwen = LABELS / "qwen2.5-coder-1.5b"
    second = _second_reading([qwen / f"{name}.jsonl" for name in SETS], qwen / "second_pass.jsonl")
    out += [f"Qwen's audited labels, second reading: {second}.", ""]
    out += _table(SELF, METHODS)
    out += ["", "## Proxy scoring: one model's answers scored by another (every dev question)", ""]
    for name in SETS:
        columns = {f"{by} answers, {scorer}": folder / name for (by, scorer), folder in PROXY.items()}
        out += [f"### {name}", "", *_table(columns, METHODS[:-1]), ""]
    out += ["## RAG-shaped set: does the risk separate answers the context does not support?", ""]
    out += _table(RAG, METHODS)
    out.append(
        "| key-match wrong: supported / unsupported | "
        + " | ".join(map(_key_match_shares, RAG.values()))
        + " |"
    )
    out += ["", "## The embedded model on the paraphrase sets (each dev question reworded once)", ""]
    second = _second_reading(
        [LABELS / f"{name}_para_dev.jsonl" for name in SETS], LABELS / "para_second_pass.jsonl"
    )
    out += [f"Audited labels, second reading: {second}.", "", *_table(PARAPHRASED, METHODS)]
    out += ["", "## Sampling baselines (K=10) beside the single pass (first 50 dev questions)", ""]
    out += _table(SAMPLED, (*METHODS[:8], *SAMPLING, "length"))
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "models.md")
    args = parser.parse_args()
    text = report()
    args.out.write_text(text, encoding="utf-8")
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
