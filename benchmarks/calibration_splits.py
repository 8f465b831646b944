"""How well the calibration rule's choice ranks unseen answers, over many random fit/calibration/test splits.

A shipped bundle is fitted on one split (seed 0), and its test split is small (450 answers for the embedded
model, 225 for Qwen), so whether its risk beats every single field on that split is partly luck. This runs
the same rule as ``semgrad-guard calibrate`` on the same labelled answers with seeds 0..N-1 and reports the
mean test AUROC of the chosen risk, of each single field, and of the best single field on each test split:
an oracle that picks after seeing the test labels, which no rule shipping a single field can match on
average. No model is loaded::

    python benchmarks/calibration_splits.py --seeds 100 --out benchmarks/results/calibration_splits.md
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from semgrad_guard.calibration import CalibrationBundle, features
from semgrad_guard.evaluation.fitting import SINGLE_FIELDS, fit_calibration, split_indices
from semgrad_guard.evaluation.labels import LabelledScores, read_labelled
from semgrad_guard.evaluation.metrics import bootstrap_auroc_difference

RESULTS = Path("benchmarks/results")
BUNDLES = Path("semgrad_guard/calibrations")
MODELS = {  # name -> (the shipped bundle, the labelled runs it was fitted on; benchmarks/README.md)
    "SmolLM2-135M": (
        BUNDLES / "smollm2-135m-instruct.json",
        [
            RESULTS / "embedded" / part / name
            for part in ("", "paraphrases")
            for name in ("sciq", "truthfulqa")
        ],
    ),
    "Qwen2.5-Coder-1.5B": (
        BUNDLES / "qwen2.5-coder-1.5b.json",
        [RESULTS / "qwen2.5-coder-1.5b" / "full" / name for name in ("sciq", "truthfulqa")],
    ),
}


def shipped_gap(bundle: CalibrationBundle, labelled: LabelledScores) -> str:
    """The shipped bundle's risk minus the best single field on its own test split, with a paired 95% CI."""
    rows = labelled.rows
    _, _, test = split_indices(len(rows), 0, labelled.groups)
    y = np.asarray(labelled.wrong)[test]
    field = max(SINGLE_FIELDS, key=lambda f: bundle.quality[f"auroc_{f}"])
    risk = np.array([bundle.map.risk(features(rows[i], bundle.map.fields)) for i in test])
    best = np.array([features(rows[i], [field])[0] for i in test])
    low, high = bootstrap_auroc_difference(y, risk, best)
    after = bundle.quality["auroc_after"]
    gap = after - bundle.quality[f"auroc_{field}"]
    return (
        f"Shipped bundle (`{bundle.method}`, seed 0): test AUROC {after:.3f}; minus the best single field "
        f"on that split ({field}) {gap:+.3f} [{low:+.3f}, {high:+.3f}] (paired 95% bootstrap)"
    )


def study(runs: list[Path], seeds: int, shipped: Path) -> list[str]:
    """Markdown lines for one model: mean test AUROC per choice, gap to the oracle, and the maps chosen."""
    labelled = read_labelled(runs, None)
    chosen, oracle, picks = [], [], Counter()
    single: dict[str, list[float]] = {field: [] for field in SINGLE_FIELDS}
    for seed in range(seeds):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one-class folds in small splits: their AUROC is NaN, skipped
            bundle = fit_calibration(
                labelled.rows, labelled.wrong, model="", labels="", data=[], target_error=None,
                target_coverage=0.5, seed=seed, groups=labelled.groups,
            )  # fmt: skip
        chosen.append(bundle.quality["auroc_after"])
        for field in SINGLE_FIELDS:
            single[field].append(bundle.quality[f"auroc_{field}"])
        oracle.append(max(bundle.quality[f"auroc_{field}"] for field in SINGLE_FIELDS))
        picks[bundle.method] += 1
    gap = np.array(chosen) - np.array(oracle)
    lines = [
        f"{len(labelled.wrong)} answers, {np.mean(labelled.wrong):.1%} wrong; test splits of "
        f"{int(bundle.quality['test_n'])} answers; {seeds} seeds",
        "",
        "| risk | mean test AUROC | mean gap to the oracle | splits at or above the oracle |",
        "| --- | --- | --- | --- |",
        f"| chosen by the rule | {np.mean(chosen):.3f} | {gap.mean():+.3f} | {np.mean(gap >= -1e-12):.0%} |",
    ]
    for field, values in single.items():
        field_gap = np.array(values) - np.array(oracle)
        share = np.mean(field_gap >= -1e-12)
        lines.append(f"| {field} alone | {np.mean(values):.3f} | {field_gap.mean():+.3f} | {share:.0%} |")
    lines.append(f"| oracle (best single field on each test split) | {np.mean(oracle):.3f} | 0 | 100% |")
    lines += ["", "Maps chosen: " + ", ".join(f"`{name}` {count}" for name, count in picks.most_common())]
    lines += ["", shipped_gap(CalibrationBundle.load(shipped), labelled)]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=100, help="random splits per model (seed 0 is shipped)")
    parser.add_argument("--out", type=Path, help="also write the tables here")
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    lines = [f"# The calibration rule over {args.seeds} random splits", ""]
    lines.append("Made by `python benchmarks/calibration_splits.py` (see its docstring).")
    for name, (shipped, runs) in MODELS.items():
        lines += ["", f"## {name}", "", *study(runs, args.seeds, shipped)]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
