"""Write docs/judges.md: the automatic judges measured against the audited labels.

Run after the two dev-set bench runs (their rows.csv hold every judge's label and every method's score):

    OMP_NUM_THREADS=1 python benchmarks/judges_report.py

It reports the double-read agreement of the audited labels, each judge's agreement, precision and recall
(incorrect = positive) and Cohen's kappa against them, how the key-match judge's rule and thresholds were
chosen on one half of the rows and how it does on the other half, and the AUROC of every method under each
set of labels. The numbers also go to benchmarks/results/embedded/judges.json.
"""

from __future__ import annotations

import csv
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from semgrad_guard.evaluation import metrics
from semgrad_guard.evaluation.audit import AuditedLabel, agreement, cohen_kappa, compare_readings, load_labels
from semgrad_guard.evaluation.datasets import load_qa
from semgrad_guard.evaluation.embeddings import SentenceEmbedder
from semgrad_guard.evaluation.judges import (
    GAIN_THRESHOLD,
    JUDGES,
    KEY_RECALL_THRESHOLD,
    content_words,
    judge_features,
    key_recall,
    question_words,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "embedded"
LABELS = ROOT / "benchmarks" / "labels"
SETS = ("sciq", "truthfulqa")
METHODS = ("semgrad", "hybridgrad", "exgrad", "pe", "ln_pe", "mean_entropy", "max_token_nll", "combined")
SANITY = ("length", "neg_length", "random")
OFF = float("inf")
# The key-match search: each test is off or one threshold; an answer that echoes the question is incorrect.
GRID = {
    "key": [OFF, 0.34, 0.5, 0.67, 0.75, 1.0],  # share of some reference's key words found in the answer
    "reverse": [OFF, 0.5, 0.67, 1.0],  # share of the answer's new words found in some reference
    "gain": [OFF, 0.1, 0.2, 0.3, 0.4],  # cos(answer, reference) - cos(answer, question)
    "framed": [OFF, 0.95, 0.97, 0.99],  # cos("question answer", "question reference")
}


def scores(truth: list[int], predicted: list[int]) -> dict[str, float]:
    """Agreement, precision and recall of 'incorrect', Cohen's kappa, and the predicted error rate."""
    y, p = np.asarray(truth), np.asarray(predicted)
    hits = int(((y == 1) & (p == 1)).sum())
    return {
        "n": len(y),
        "error_rate": float(p.mean()),
        "agreement": agreement(truth, predicted),
        "precision": hits / max(int(p.sum()), 1),
        "recall": hits / max(int(y.sum()), 1),
        "kappa": cohen_kappa(truth, predicted),
    }


def reverse_share(question: str, answer: str, references: list[str]) -> float:
    """Largest share of the answer's words beyond the question that lie in one reference."""
    new = content_words(answer) - question_words(question)
    return max((len(new & content_words(r)) / len(new) for r in references), default=0.0) if new else 0.0


def load_set(name: str, embedder: SentenceEmbedder) -> dict[str, Any]:
    """Rows of one set: audited labels, each judge's label, scores, and the key-match search features."""
    with (RESULTS / name / "rows.csv").open(encoding="utf-8", newline="") as source:
        rows = list(csv.DictReader(source))
    audited = load_labels(LABELS / f"{name}.jsonl")
    references = {item.question: item.answers for item in load_qa(name)}
    questions, answers = [r["question"] for r in rows], [r["answer"] for r in rows]
    refs = [references[q] for q in questions]
    found = [audited[(q, a)] for q, a in zip(questions, answers, strict=True)]
    f = judge_features(questions, answers, refs, embedder)
    return {
        "audited": audited,
        "y": np.array([label.incorrect for label in found]),
        "unsure": np.array([label.unsure for label in found]),
        "judges": {j: np.array([int(r[f"incorrect_{j}"]) for r in rows]) for j in JUDGES},
        "scores": {m: np.array([float(r[m]) for r in rows]) for m in (*METHODS, *SANITY)},
        "features": {
            "echo": np.array(
                [not content_words(a) - question_words(q) for q, a in zip(questions, answers, strict=True)]
            ),
            "key": np.array([key_recall(q, a, r) for q, a, r in zip(questions, answers, refs, strict=True)]),
            "reverse": np.array(
                [reverse_share(q, a, r) for q, a, r in zip(questions, answers, refs, strict=True)]
            ),
            "gain": f.gain,
            "framed": f.framed,
        },
    }


def halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random half of the rows to choose the rule on (tune) and the other half to report it on (test)."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2 :])


def rule(features: dict[str, np.ndarray], choice: dict[str, float]) -> np.ndarray:
    """1 (incorrect) for echoes and for answers that pass none of the enabled tests."""
    passed = np.zeros(len(features["echo"]), dtype=bool)
    for test, threshold in choice.items():
        if threshold != OFF:
            passed |= features[test] >= threshold
    return (features["echo"] | ~passed).astype(int)


def search(data: dict[str, dict[str, Any]], tune: dict[str, np.ndarray]) -> tuple[dict[str, float], float]:
    """The grid point with the highest mean kappa over the sets' tune halves.

    Ties go to the simplest rule (fewest tests on, then the lowest thresholds), as the grid is ordered.
    """
    best: tuple[float, dict[str, float]] = (-np.inf, {})
    ordered = sorted(
        itertools.product(*GRID.values()), key=lambda v: sum(x != OFF for x in v)
    )  # stable: grid order within
    for values in ordered:
        choice = dict(zip(GRID, values, strict=True))
        if all(v == OFF for v in values):
            continue
        kappas = [cohen_kappa(d["y"][tune[s]], rule(d["features"], choice)[tune[s]]) for s, d in data.items()]
        if np.mean(kappas) > best[0] + 1e-12:
            best = (float(np.mean(kappas)), choice)
    return best[1], best[0]


def auroc_table(d: dict[str, Any]) -> dict[str, dict[str, float]]:
    """AUROC of every method (scores unchanged) under the audited labels, the sure rows, and each judge."""
    sure = ~d["unsure"]
    sets = {"audited": (d["y"], None), "audited, sure rows": (d["y"], sure)}
    sets |= {j: (d["judges"][j], None) for j in JUDGES}
    table: dict[str, dict[str, float]] = {}
    for name, (y, keep) in sets.items():
        mask = np.ones(len(y), dtype=bool) if keep is None else keep
        table[name] = {"error_rate": float(y[mask].mean())}
        for method, s in d["scores"].items():
            finite = mask & np.isfinite(s)
            table[name][method] = metrics.auroc(y[finite], s[finite])
    return table


def _show(value: float) -> str:
    return "off" if value == OFF else f"{value:g}"


def fmt(x: float) -> str:
    return f"{x:.3f}"


def judge_rows(d: dict[str, Any], mask: np.ndarray) -> list[str]:
    y = d["y"][mask]
    lines = []
    for name, predicted in [
        *((j, d["judges"][j][mask]) for j in JUDGES),
        ("always incorrect", np.ones_like(y)),
    ]:
        s = scores(list(y), list(predicted))
        kappa = "n/a" if np.isnan(s["kappa"]) else fmt(s["kappa"])
        lines.append(
            f"| {name} | {s['error_rate']:.1%} | {fmt(s['agreement'])} | {fmt(s['precision'])} "
            f"| {fmt(s['recall'])} | {kappa} |"
        )
    return lines


def main() -> None:
    embedder = SentenceEmbedder()
    data = {name: load_set(name, embedder) for name in SETS}
    second = [
        AuditedLabel.model_validate_json(line)
        for line in (LABELS / "second_pass.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    out: dict[str, Any] = {"double_read": {}, "judges": {}, "auroc": {}}
    lines = [
        "# Judges: automatic correctness labels measured against audited ones",
        "",
        "Made by `python benchmarks/judges_report.py` from the bench runs' `rows.csv` (every judge's label",
        "and every method's score per answer) and the audited labels in `benchmarks/labels/`. The audited",
        "labels were read by AI agents following [labeling.md](labeling.md), not by people; every row",
        "carries a one-line reason. Incorrect = positive throughout. Each table names the labels it uses.",
        "",
        "## The audited labels",
        "",
        "| set | answers | incorrect | marked unsure |",
        "| --- | --- | --- | --- |",
    ]
    for name, d in data.items():
        lines.append(f"| {name} | {len(d['y'])} | {d['y'].mean():.1%} | {int(d['unsure'].sum())} |")

    lines += [
        "",
        "## Double-read agreement",
        "",
        "A random 10% of the rows (seed 0: 50 SciQ, 40 TruthfulQA) was read a second time by a separate",
        "agent that saw neither the first reading nor any judge (`benchmarks/labels/second_pass.jsonl`).",
        "",
        "| set | rows read twice | raw agreement | Cohen's kappa | disagreements | same `unsure` flag |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    everything = {key: label for d in data.values() for key, label in d["audited"].items()}
    groups = {name: [s for s in second if (s.question, s.answer) in d["audited"]] for name, d in data.items()}
    disagreements = []
    for name, rows in [*groups.items(), ("both", second)]:
        first = everything if name == "both" else data[name]["audited"]
        read = compare_readings(first, rows)
        same_unsure = np.mean([first[(s.question, s.answer)].unsure == s.unsure for s in rows])
        out["double_read"][name] = read.model_dump(mode="json") | {"same_unsure": float(same_unsure)}
        lines.append(
            f"| {name} | {read.n} | {fmt(read.agreement)} | {fmt(read.kappa)} | {len(read.disagreements)} "
            f"| {same_unsure:.1%} |"
        )
        if name == "both":
            disagreements = read.disagreements
    lines.append("")
    if disagreements:
        lines += ["Rows the two readings label differently:", ""]
        lines += ["| question | answer | first (reason) | second (reason) |", "| --- | --- | --- | --- |"]
        for x in disagreements:
            lines.append(
                f"| {x.question} | {x.answer} | {x.first.incorrect} ({x.first.reason}) "
                f"| {x.second.incorrect} ({x.second.reason}) |"
            )
    else:
        lines.append("The two readings gave every one of these rows the same label: there is no row to list.")
    lines += [
        "",
        "Read this agreement for what it is: both readers were instances of the same AI model, given the "
        "same written rules, so it shows that the rules are applied consistently, not that independent "
        "people would agree this often. Rows marked `unsure` are where a careful human reader should look "
        "first.",
    ]

    lines += [
        "",
        "## Each judge against the audited labels",
        "",
        "Agreement is the share of answers labelled alike; precision and recall are for 'incorrect';",
        "Cohen's kappa discounts the agreement that the base rates alone would give. With 80-88% of",
        "answers incorrect, a judge that calls everything incorrect already agrees on 80-88% (the last",
        "row), so read kappa.",
    ]
    for name, d in data.items():
        for title, mask in [
            ("all rows", np.ones(len(d["y"]), dtype=bool)),
            ("rows not unsure", ~d["unsure"]),
        ]:
            lines += [
                "",
                f"**{name}, {title}** ({int(mask.sum())} answers, audited error rate "
                f"{d['y'][mask].mean():.1%}):",
                "",
                "| judge | error rate | agreement | precision | recall | kappa |",
                "| --- | --- | --- | --- | --- | --- |",
            ]
            lines += judge_rows(d, mask)
            out["judges"][f"{name}, {title}"] = {
                j: scores(list(d["y"][mask]), list(d["judges"][j][mask])) for j in JUDGES
            }

    tune, test = {}, {}
    for name, d in data.items():
        tune[name], test[name] = halves(len(d["y"]))
    choice, tune_kappa = search(data, tune)
    shipped = {"key": KEY_RECALL_THRESHOLD, "reverse": OFF, "gain": GAIN_THRESHOLD, "framed": OFF}
    shown = {k: ("off" if v == OFF else v) for k, v in choice.items()}
    grid_text = ";\n".join(f"`{k}` in " + ", ".join(_show(v) for v in vs) for k, vs in GRID.items())
    chosen_text = ", ".join(f"`{k}` {_show(v)}" for k, v in choice.items())
    out["key_match"] = {"chosen": shown, "tune_mean_kappa": tune_kappa, "shipped_matches": choice == shipped}
    lines += [
        "",
        "## The key-match judge: designed on the evidence, thresholds chosen on half the rows",
        "",
        "What the tables above show: the embedding judges reward answers that repeat the question's words",
        "(the 135M model often restates the question), `qa-similarity` calls most answers correct, and",
        "`containment` is good on SciQ's one-word references but cannot tell an echo from an answer.",
        "`key-match` therefore first rejects an **echo** (an answer with no content word beyond the",
        "question's; the options of an 'X or Y?' question do not count as the question's) and then accepts",
        "an answer that passes one of these tests, each of which may be off:",
        "",
        "- `key`: the answer holds at least a share of some reference's **key words** (content words,",
        "  crudely stemmed, that are not in the question; negations all count as 'not');",
        "- `reverse`: at least a share of the answer's new words lie in one reference (containment the",
        "  other way);",
        "- `gain`: cos(answer, nearest reference) - cos(answer, question) is at least a threshold",
        "  (question-aware similarity, all-MiniLM-L6-v2);",
        "- `framed`: cos('question answer', 'question reference') is at least a threshold.",
        "",
        "Each set was split at random (seed 0) into a tune half and a test half. The rule and its",
        "thresholds were chosen on the tune halves (highest mean kappa over the two sets; ties to the",
        "simplest rule: fewest tests, then lowest thresholds) and are reported on the test halves, which the",
        f"choice did not see. Grid: {grid_text}.",
        "",
        "Honesty note: the tests themselves (echo rejection, key words, the 'X or Y' exception) were",
        "designed after reading rows of both halves; only the thresholds are held out.",
        "",
        f"Chosen: {chosen_text} (mean tune kappa {tune_kappa:.3f});\n"
        + ("the shipped constants in `semgrad_guard/judges.py` are these." if choice == shipped
           else f"**the shipped constants differ** ({shipped})."),
        "",
        "Every judge on the **test halves** only (audited labels):",
        "",
        "| judge | SciQ agreement | SciQ precision | SciQ recall | SciQ kappa | TruthfulQA agreement "
        "| TruthfulQA precision | TruthfulQA recall | TruthfulQA kappa |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    out["test_half"] = {}
    candidates = {j: {s: d["judges"][j] for s, d in data.items()} for j in JUDGES}
    candidates["key-match as chosen here"] = {s: rule(d["features"], choice) for s, d in data.items()}
    for j, predicted in candidates.items():
        cells = []
        for s, d in data.items():
            r = scores(list(d["y"][test[s]]), list(predicted[s][test[s]]))
            out["test_half"].setdefault(j, {})[s] = r
            cells += [fmt(r["agreement"]), fmt(r["precision"]), fmt(r["recall"]), fmt(r["kappa"])]
        lines.append(f"| {j} | " + " | ".join(cells) + " |")

    lines += [
        "",
        "## AUROC of the methods under each set of labels",
        "",
        "The scores are the same in every column; only the labels change. `audited` is the main label set",
        "of [benchmarks.md](benchmarks.md) (every dev row has an audited label, so no row falls back to a",
        "judge); `audited, sure rows` drops the rows marked unsure. `combined` is the bench's column, fitted",
        "out of fold on the audited labels, in every column. Error rate of each label set in the header.",
    ]
    for name, d in data.items():
        table = auroc_table(d)
        out["auroc"][name] = table
        header = " | ".join(f"{k} ({v['error_rate']:.0%})" for k, v in table.items())
        lines += ["", f"**{name}** (AUROC):", "", f"| method | {header} |", "| --- |" + " --- |" * len(table)]
        for method in (*METHODS, *SANITY):
            lines.append(f"| {method} | " + " | ".join(fmt(table[k][method]) for k in table) + " |")
    lines += [
        "",
        "Reading: under the audited labels the ranking of the methods and the sanity baselines is what",
        "[benchmarks.md](benchmarks.md) discusses. Judges with very high error rates (`rougeL`, `similarity`",
        "on SciQ) or that call most answers correct (`qa-similarity`) move AUROC far from the audited value,",
        "often to where answer length wins: a number is only meaningful beside the labels that made it.",
        "",
    ]
    (ROOT / "docs" / "judges.md").write_text("\n".join(lines), encoding="utf-8")
    (RESULTS / "judges.json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    sys.stdout.write("\n".join(lines))


if __name__ == "__main__":
    main()
