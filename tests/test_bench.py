"""A small real benchmark run: files, metrics equal to scikit-learn's, cached generations, calibration."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

import semgrad_guard
from semgrad_guard import SemGradScorer
from semgrad_guard.cli import main
from semgrad_guard.evaluation import metrics
from semgrad_guard.evaluation.bench import BenchConfig, run_bench
from semgrad_guard.evaluation.judges import JUDGES, containment, normalise, rouge_l


def test_metrics_agree_with_sklearn() -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        y = rng.integers(0, 2, 60)
        s = np.round(rng.normal(size=60) + y, 1)  # rounded: ties happen
        assert metrics.auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert metrics.auprc(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_prr_and_aurc_on_known_rankings() -> None:
    y = [1, 0, 1, 0, 0]
    assert metrics.prr(y, [0.9, 0.1, 0.8, 0.2, 0.3]) == pytest.approx(1.0)  # oracle
    assert metrics.prr(y, [0.1, 0.9, 0.2, 0.8, 0.7]) < 0  # worse than random
    assert metrics.aurc(y, [0.9, 0.1, 0.8, 0.2, 0.3]) < metrics.aurc(y, [0.1, 0.9, 0.2, 0.8, 0.7])
    low, high = metrics.bootstrap_auroc(y * 10, list(np.linspace(0, 1, 50)))
    assert 0 <= low <= high <= 1


def test_judge_rules() -> None:
    assert normalise("The  Darwin!") == "darwin"
    assert containment("It was Charles Darwin.", ["darwin"])
    assert not containment("Darwinism", ["darwin"])  # whole words only
    assert containment("oxygen", ["oxygen gas"])  # the answer inside a reference
    assert rouge_l("the cat sat", "the cat sat") == pytest.approx(1.0)
    assert rouge_l("cat", "dog") == 0.0


@pytest.mark.slow
def test_small_run_writes_everything(embedded: SemGradScorer, tmp_path: Path) -> None:
    # The QA set shipped in the package, so the test does not depend on the shared dev files.
    shipped = Path(semgrad_guard.__file__).parent / "data" / "sps_default.jsonl"
    config = BenchConfig(data=str(shipped), out=tmp_path, limit=12, samples=3, max_new_tokens=12)
    results = run_bench(config, scorer=embedded)
    for name in ["results.json", "rows.csv", "results.md", "curves.png", "cost_auroc.png"]:
        assert (tmp_path / name).is_file(), name
    with (tmp_path / "rows.csv").open(encoding="utf-8") as source:
        rows = list(csv.DictReader(source))
    assert len(rows) == 12
    checked = 0
    for judge in JUDGES:
        y = np.array([int(r[f"incorrect_{judge}"]) for r in rows])
        if 0 < y.sum() < len(y):
            for method in ["semgrad", "pe", "combined", "semantic_entropy", "length"]:
                s = np.array([float(r[method]) for r in rows])
                assert results["metrics"][judge][method]["auroc"] == pytest.approx(
                    roc_auc_score(y, s), abs=1e-9
                )
                assert results["metrics"][judge][method]["auprc"] == pytest.approx(
                    average_precision_score(y, s), abs=1e-9
                )
                checked += 1
    assert checked > 0
    assert json.loads((tmp_path / "results.json").read_text())["data"]["questions"] == 12

    cached = {
        name: (tmp_path / name).read_text() for name in ["generations.jsonl", "samples.jsonl", "scores.jsonl"]
    }
    run_bench(config, scorer=embedded)  # cached: nothing generated or scored again
    assert {name: (tmp_path / name).read_text() for name in cached} == cached

    # Audited labels apply to the exact answer only; the other rows fall back to the key-match judge.
    labels = tmp_path / "labels.jsonl"
    first, second = rows[0], rows[1]
    labels.write_text(
        json.dumps({"question": first["question"], "answer": first["answer"], "incorrect": 1, "unsure": True})
        + "\n"
        + json.dumps(
            {"question": second["question"], "answer": second["answer"] + " (edited)", "incorrect": 1}
        )
        + "\n",
        encoding="utf-8",
    )
    audited = run_bench(config.model_copy(update={"labels": labels, "samples": 0}), scorer=embedded)
    assert audited["primary_judge"] == "audited"
    assert audited["labels"]["audited_rows"] == 1 and audited["labels"]["fallback_rows"] == 11
    with (tmp_path / "rows.csv").open(encoding="utf-8") as source:
        relabelled = list(csv.DictReader(source))
    assert relabelled[0]["label_source"] == "audited" and relabelled[0]["incorrect"] == "1"
    assert relabelled[0]["unsure_audited"] == "1"
    assert {r["label_source"] for r in relabelled[1:]} == {"key-match"}
    assert all(
        r["incorrect"] == r["incorrect_key-match"] and r["incorrect_audited"] == "" for r in relabelled[1:]
    )
    assert "1 rows, 1 of them marked unsure" in (tmp_path / "results.md").read_text()

    bundle_path = tmp_path / "bundle.json"
    assert (
        main(["calibrate", "--labels", str(tmp_path), "--target-coverage", "0.5", "--out", str(bundle_path)])
        == 0
    )
    assert json.loads(bundle_path.read_text())["model"] == embedded.model_name
