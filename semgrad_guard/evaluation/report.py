"""The benchmark's Markdown table and PNG plots (ROC, risk-coverage, cost vs AUROC).

``python -m semgrad_guard.evaluation.report DIR [DIR ...]`` recomputes the metrics of finished bench runs
from their ``rows.csv`` with the current metric code, without loading any model (see :func:`refresh_metrics`).
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.metrics import roc_curve

from semgrad_guard.evaluation import metrics
from semgrad_guard.evaluation.methods import CONTEXT_LABEL

if TYPE_CHECKING:
    from semgrad_guard.calibration import CalibrationBundle
    from semgrad_guard.evaluation.labels import LabelledScores

__all__ = [
    "label_description",
    "markdown_table",
    "refresh_metrics",
    "write_calibration_report",
    "write_report",
]


def label_description(results: dict[str, Any]) -> str:
    """Which labels the main table uses, and how many rows fell back to an automatic judge."""
    primary = results["primary_judge"]
    summary = results.get("labels")
    if primary == CONTEXT_LABEL:
        return f"labels by construction (`{CONTEXT_LABEL}`: the context does not state a reference answer)"
    if primary != "audited" or summary is None:
        return f"labels from the `{primary}` judge"
    fallback = summary["fallback_rows"]
    text = f"audited labels ({summary['audited_rows']} rows, {summary['unsure_rows']} of them marked unsure)"
    if fallback:
        return f"{text}; {fallback} rows without one use the `{summary['fallback_judge']}` judge"
    return f"{text}; no row fell back to an automatic judge"


def markdown_table(results: dict[str, Any]) -> str:
    """Every method under the main labels, then AUROC under each label set, then any flags."""
    primary = results["primary_judge"]
    costs = results["cost_seconds_per_question"]
    answers = results.get("answers_model", results["model"])
    positive, rate = ("Unsupported", "unsupported") if primary == CONTEXT_LABEL else ("Incorrect", "error")
    lines = [
        f"Model `{results['model']}`"
        + ("" if answers == results["model"] else f" scoring the answers of `{answers}`")
        + f", data `{results['data']['source']}` ({results['data']['questions']} "
        f"questions), {label_description(results)} ({rate} rate {results['error_rate'][primary]:.1%}).",
        f"{positive} = positive; higher score = more uncertain. AUROC with a 95% bootstrap interval. "
        "`combined` is fitted out of fold on these labels.",
        "",
        "| method | AUROC [95% CI] | AUPRC | PRR | AURC | cost s/question |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for method, m in results["metrics"][primary].items():
        low, high = m["auroc_ci"]
        lines.append(
            f"| {method} | {m['auroc']:.3f} [{low:.3f}, {high:.3f}] | {m['auprc']:.3f} | {m['prr']:.3f} "
            f"| {m['aurc']:.3f} | {costs[method]:.3f} |"
        )
    judges = list(results["metrics"])
    lines += ["", "AUROC under each label set, scores unchanged (error rate in the header):", ""]
    lines.append("| method | " + " | ".join(f"{j} ({results['error_rate'][j]:.0%})" for j in judges) + " |")
    lines.append("| --- |" + " --- |" * len(judges))
    for method in results["metrics"][primary]:
        values = " | ".join(f"{results['metrics'][j][method]['auroc']:.3f}" for j in judges)
        lines.append(f"| {method} | {values} |")
    if results["flags"]:
        lines += ["", "Flags (a sanity baseline beats the methods: the labels may be measuring length):", ""]
        lines += [f"- {flag}" for flag in results["flags"]]
    return "\n".join(lines) + "\n"


def write_report(
    out: Path, results: dict[str, Any], labels: Mapping[Any, list[int]], columns: dict[str, list[float]]
) -> None:
    """Write results.md, and the plots where matplotlib is installed."""
    (out / "results.md").write_text(markdown_table(results), encoding="utf-8")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    primary = results["primary_judge"]
    y = np.asarray(labels[primary])
    methods = list(results["metrics"][primary])
    figure, (roc, risk) = plt.subplots(1, 2, figsize=(12, 5))
    for method in methods:
        s = np.asarray(columns[method], dtype=float)
        keep = np.isfinite(s)
        if 0 < y[keep].sum() < keep.sum():  # a ROC curve needs both classes
            fpr, tpr, _ = roc_curve(y[keep], s[keep])
            roc.plot(fpr, tpr, label=f"{method} ({results['metrics'][primary][method]['auroc']:.2f})")
        coverage, error = metrics.risk_coverage(y[keep], s[keep])
        risk.plot(coverage, error, label=method)
    roc.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC ({primary} labels)")
    risk.set(xlabel="coverage", ylabel="error among accepted", title="risk-coverage")
    if roc.get_legend_handles_labels()[0]:  # no curve when the labels hold one class
        roc.legend(fontsize=7)
    risk.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / "curves.png", dpi=110)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(6, 4.5))
    points = [
        (method, results["cost_seconds_per_question"][method], results["metrics"][primary][method]["auroc"])
        for method in methods
    ]
    points = [(m, cost, value) for m, cost, value in points if cost > 0 and np.isfinite(value)]
    for method, cost, value in points:  # AUROC is undefined when the labels hold one class only
        axis.scatter(cost, value)
        axis.annotate(method, (cost, value), fontsize=7)
    axis.set(xlabel="seconds per question (log)", ylabel="AUROC", title=f"cost vs AUROC ({primary} labels)")
    if points:
        axis.set_xscale("log")
    figure.tight_layout()
    figure.savefig(out / "cost_auroc.png", dpi=110)
    plt.close(figure)


def write_calibration_report(
    out: Path, bundle: CalibrationBundle, labelled: LabelledScores, seed: int
) -> None:
    """Reliability diagram and risk-coverage curve with the threshold marked, on the bundle's test split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from semgrad_guard.calibration import features
    from semgrad_guard.evaluation.fitting import split_indices

    out.mkdir(parents=True, exist_ok=True)
    _, _, test = split_indices(len(labelled.rows), seed, labelled.groups)
    y = np.asarray(labelled.wrong, dtype=float)[test]
    risk = np.array([bundle.map.risk(features(labelled.rows[i], bundle.map.fields)) for i in test])
    figure, (reliability, coverage_axis) = plt.subplots(1, 2, figsize=(11, 4.5))
    edges = np.linspace(0, 1, 11)
    index = np.minimum((risk * 10).astype(int), 9)
    centers = [(risk[index == b].mean(), y[index == b].mean()) for b in range(10) if (index == b).any()]
    reliability.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    reliability.plot(*zip(*centers, strict=True), "o-", label=f"after ({bundle.method})")
    reliability.hist(risk, bins=edges, weights=np.full(len(risk), 1 / len(risk)), alpha=0.2, label="share")
    reliability.set(xlabel="predicted risk", ylabel="observed error rate", title="reliability (test split)")
    reliability.legend(fontsize=8)
    fraction, error = metrics.risk_coverage(y, risk)
    coverage_axis.plot(fraction, error, label="accept lowest risk first")
    if bundle.threshold is not None:
        accepted = risk <= bundle.threshold.max_risk
        coverage_axis.axvline(
            accepted.mean(), color="r", linestyle="--", label=f"threshold ({bundle.threshold.rule})"
        )
    coverage_axis.set(xlabel="coverage", ylabel="error among accepted", title="risk-coverage (test split)")
    coverage_axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "calibration.png", dpi=110)
    plt.close(figure)


def _stored_labels(results: dict[str, Any], rows: list[dict[str, str]]) -> dict[str, list[int]]:
    """Every label set of results.json's metrics, read back from rows.csv's columns."""
    primary = results["primary_judge"]
    fallback = (results.get("labels") or {}).get("fallback_judge")
    labels: dict[str, list[int]] = {}
    for name in results["metrics"]:
        if name == primary:
            labels[name] = [int(r["incorrect"]) for r in rows]
        elif name == "audited":  # the audited label where a row has one, else the fallback judge's
            labels[name] = [int(r["incorrect_audited"] or r[f"incorrect_{fallback}"]) for r in rows]
        else:
            labels[name] = [int(r[f"incorrect_{name}"]) for r in rows]
        rate = float(np.mean(labels[name]))
        if not np.isclose(rate, results["error_rate"][name], rtol=0, atol=1e-12):
            raise ValueError(f"{name}: rows.csv's error rate {rate} is not results.json's")
    return labels


def refresh_metrics(folder: Path) -> dict[str, Any]:
    """Recompute a finished bench run's metrics and flags from its rows.csv, and rewrite its result files.

    The labels and every method's scores are read back from ``rows.csv`` (no model is loaded, nothing is
    generated, judged, scored or timed); ``results.json``'s ``metrics`` and ``flags`` are replaced, every
    other field (costs, timings, versions) is kept, and ``results.md`` and the plots are written again.
    """
    from semgrad_guard.evaluation.bench import _flags

    results: dict[str, Any] = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    with (folder / "rows.csv").open(encoding="utf-8", newline="") as source:
        rows = list(csv.DictReader(source))
    if len(rows) != (questions := results["data"]["questions"]):
        raise ValueError(f"{folder}: rows.csv has {len(rows)} rows for {questions} questions")
    labels = _stored_labels(results, rows)
    methods = list(results["metrics"][results["primary_judge"]])
    columns = {method: [float(r[method]) for r in rows] for method in methods}
    results["metrics"] = {
        name: {method: metrics.summary(values, columns[method]) for method in methods}
        for name, values in labels.items()
    }
    results["flags"] = _flags(results)
    (folder / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    write_report(folder, results, labels, columns)
    return results


def main(argv: Sequence[str] | None = None) -> None:
    """Refresh the metrics of the bench runs in the given folders."""
    parser = argparse.ArgumentParser(description=refresh_metrics.__doc__)
    parser.add_argument("folders", nargs="+", type=Path, help="bench output folders (results.json, rows.csv)")
    for folder in parser.parse_args(argv).folders:
        refresh_metrics(folder)


if __name__ == "__main__":
    main()
