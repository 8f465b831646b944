"""A small real benchmark run: files, metrics equal to scikit-learn's, cached generations, calibration; and
refreshing a finished run's metrics from its rows."""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

import semgrad_guard
from semgrad_guard import SemGradScorer
from semgrad_guard.cli import main
from semgrad_guard.evaluation import metrics, report
from semgrad_guard.evaluation.bench import CONTEXT_LABEL, BenchConfig, run_bench
from semgrad_guard.evaluation.datasets import context_rows, load_qa
from semgrad_guard.evaluation.judges import JUDGES, containment, normalise, rouge_l


def test_refresh_metrics_from_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A finished run's files, with made-up metrics: refreshing recomputes them from rows.csv alone.
    monkeypatch.setattr(metrics, "bootstrap_auroc", functools.partial(metrics.bootstrap_auroc, rounds=50))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    fallback = np.arange(40) % 5 == 0  # no audited label: the audited set uses key-match's
    audited = np.where(fallback, y, 1 - y)
    columns = {"semgrad": rng.normal(size=40) + y, "length": rng.integers(1, 9, 40).astype(float)}
    columns["semgrad"][3] = float("nan")  # an invalid row: left out of the metrics
    header = ["question", "answer", "incorrect", "incorrect_audited", *(f"incorrect_{j}" for j in JUDGES)]
    with (tmp_path / "rows.csv").open("w", encoding="utf-8", newline="") as sink:
        writer = csv.writer(sink)
        writer.writerow([*header, *columns])
        for i in range(40):
            stored = "" if fallback[i] else audited[i]
            judged = [y[i] for _ in JUDGES]  # key-match is the main label set here
            writer.writerow([f"q{i}", f"a{i}", y[i], stored, *judged, *(c[i] for c in columns.values())])
    stale = {"auroc": 0.0, "auroc_ci": [0.0, 0.0], "auprc": 0.0, "prr": 0.0, "aurc": 0.0, "n": 0}
    results = {
        "model": "m",
        "data": {"source": "made-up", "questions": 40},
        "primary_judge": "key-match",
        "labels": {"fallback_judge": "key-match"},
        "error_rate": {"key-match": float(y.mean()), "audited": float(audited.mean())},
        "cost_seconds_per_question": {"semgrad": 1.5, "length": 0.0},
        "metrics": {name: dict.fromkeys(columns, stale) for name in ["key-match", "audited"]},
        "flags": [],
        "seconds_total": 12.0,
    }
    (tmp_path / "results.json").write_text(json.dumps(results), encoding="utf-8")

    refreshed = report.refresh_metrics(tmp_path)
    assert refreshed == json.loads((tmp_path / "results.json").read_text())
    assert refreshed["seconds_total"] == 12.0 and refreshed["cost_seconds_per_question"]["semgrad"] == 1.5
    finite = np.isfinite(columns["semgrad"])
    got = refreshed["metrics"]["key-match"]["semgrad"]
    assert got["n"] == 39
    assert got["auroc"] == pytest.approx(roc_auc_score(y[finite], columns["semgrad"][finite]), abs=1e-12)
    assert got["auprc"] == pytest.approx(average_precision_score(y[finite], columns["semgrad"][finite]))
    assert got["auroc_ci"] == list(metrics.bootstrap_auroc(y[finite], columns["semgrad"][finite]))
    got = refreshed["metrics"]["audited"]["length"]["auroc"]
    assert got == pytest.approx(roc_auc_score(audited, columns["length"]), abs=1e-12)
    assert "| semgrad | " in (tmp_path / "results.md").read_text()
    assert (tmp_path / "curves.png").is_file()

    results["error_rate"]["audited"] = 0.0  # labels that do not match the rows are refused
    (tmp_path / "results.json").write_text(json.dumps(results), encoding="utf-8")
    with pytest.raises(ValueError, match="error rate"):
        report.refresh_metrics(tmp_path)


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

    # Proxy scoring: another run scores these answers instead of generating; same model, same scores.
    proxy = run_bench(
        config.model_copy(update={"out": tmp_path / "proxy", "answers_from": tmp_path, "samples": 0}),
        scorer=embedded,
    )
    assert proxy["answers_model"] == embedded.model_name
    assert not (tmp_path / "proxy" / "generations.jsonl").exists()
    with (tmp_path / "proxy" / "rows.csv").open(encoding="utf-8") as source:
        proxied = list(csv.DictReader(source))
    assert [(r["answer"], r["semgrad"]) for r in proxied] == [(r["answer"], r["semgrad"]) for r in rows]
    proxy_config = config.model_copy(update={"answers_from": tmp_path / "proxy", "samples": 0})
    with pytest.raises(ValueError, match="no greedy answer"):  # the proxy run made no answers of its own
        run_bench(proxy_config, scorer=embedded)
    with pytest.raises(ValueError, match="samples=0"):
        BenchConfig.model_validate(proxy_config.model_dump() | {"samples": 3})

    # A RAG-shaped set: each question with a note stating its answer and with another question's note.
    rag = tmp_path / "rag.jsonl"
    items = context_rows(load_qa(shipped)[:3])
    rag.write_text("".join(item.model_dump_json() + "\n" for item in items), encoding="utf-8")
    with_context = run_bench(BenchConfig(data=str(rag), out=tmp_path / "rag", samples=0), scorer=embedded)
    assert with_context["primary_judge"] == CONTEXT_LABEL and with_context["error_rate"][CONTEXT_LABEL] == 0.5
    asked = [json.loads(line) for line in (tmp_path / "rag" / "generations.jsonl").read_text().splitlines()]
    assert [r["context"] for r in asked] == [item.context for item in items]  # two rows per question

    bundle_path, report_dir = tmp_path / "bundle.json", tmp_path / "report"
    calibrate = ["calibrate", "--labels", str(tmp_path), "--target-coverage", "0.5"]
    assert main([*calibrate, "--out", str(bundle_path), "--report", str(report_dir)]) == 0
    assert json.loads(bundle_path.read_text())["model"] == embedded.model_name
    assert (report_dir / "calibration.png").stat().st_size > 0  # the plots of the bundle's test split
