"""Audited labels: exact-answer lookup, per-row fallback, agreement and kappa, and the key-match judge."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from sklearn.metrics import cohen_kappa_score

from semgrad_guard.evaluation.audit import (
    AuditedLabel,
    agreement,
    cohen_kappa,
    compare_readings,
    find_labels,
    load_labels,
    resolve_labels,
)
from semgrad_guard.evaluation.bench import CONTEXT_LABEL, BenchConfig, _labels, _write_rows
from semgrad_guard.evaluation.datasets import QAItem
from semgrad_guard.evaluation.judges import FALLBACK_JUDGE, JUDGES, containment, key_match, key_recall
from semgrad_guard.evaluation.labels import read_labelled

PARIS = AuditedLabel(question="Capital of France?", answer="Paris", incorrect=0, reason="rule 1")
ROME = AuditedLabel(question="Capital of Italy?", answer="Milan", incorrect=1, unsure=True, reason="wrong")


def write_labels(path: Path, labels: list[AuditedLabel]) -> Path:
    path.write_text("".join(label.model_dump_json() + "\n" for label in labels), encoding="utf-8")
    return path


def test_a_label_applies_only_to_the_exact_answer(tmp_path: Path) -> None:
    audited = load_labels(write_labels(tmp_path / "labels.jsonl", [PARIS, ROME]))
    questions = ["Capital of France?", "Capital of France?", "Capital of Italy?", "Capital of Spain?"]
    answers = ["Paris", "Paris.", "Milan", "Madrid"]
    labels, sources, found = resolve_labels(audited, questions, answers, [1, 1, 0, 0], "key-match")
    assert labels == [0, 1, 1, 0]  # "Paris." is another text: the judge's label, not the audited one
    assert sources == ["audited", "key-match", "audited", "key-match"]
    assert found[0] == PARIS and found[1] is None and found[2] == ROME and found[3] is None


def test_named_sets_find_the_shipped_labels_and_paths_do_not() -> None:
    shipped = Path(__file__).resolve().parents[1] / "benchmarks" / "labels"
    assert find_labels("sciq") == [shipped / "qwen2.5-coder-1.5b" / "sciq.jsonl", shipped / "sciq.jsonl"]
    assert find_labels("some/other.jsonl") == []


def test_each_models_labels_are_found_and_merged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One model's answers at the top, another's in its own folder: a bench run reads both, so scoring the
    # second model's answers with the first (proxy scoring) still finds their labels.
    write_labels(tmp_path / "sciq.jsonl", [PARIS])
    (tmp_path / "other-model").mkdir()
    write_labels(tmp_path / "other-model" / "sciq.jsonl", [ROME, PARIS])
    monkeypatch.setenv("SEMGRAD_GUARD_LABELS", str(tmp_path))
    found = find_labels("sciq")
    assert found == [tmp_path / "other-model" / "sciq.jsonl", tmp_path / "sciq.jsonl"]
    assert load_labels(*found) == {(PARIS.question, PARIS.answer): PARIS, (ROME.question, ROME.answer): ROME}
    assert Path(__file__).resolve().parents[1] / "benchmarks" / "labels" / "truthfulqa.jsonl" in find_labels(
        "truthfulqa"
    )  # none there: the shipped ones

    write_labels(tmp_path / "sciq.jsonl", [PARIS.model_copy(update={"incorrect": 1})])
    with pytest.raises(ValueError, match="reconcile"):
        load_labels(*find_labels("sciq"))


def test_the_bench_records_the_fallback_per_row(tmp_path: Path) -> None:
    data = tmp_path / "qa.jsonl"
    data.write_text(
        "\n".join(
            QAItem(question=q, answers=[a]).model_dump_json()
            for q, a in [
                ("Capital of France?", "Paris"),
                ("Capital of Italy?", "Rome"),
                ("Capital of Peru?", "Lima"),
            ]
        ),
        encoding="utf-8",
    )
    labels_file = write_labels(tmp_path / "labels.jsonl", [PARIS, ROME])
    items = [QAItem.model_validate_json(line) for line in data.read_text().splitlines()]
    answers = ["Paris", "Milan", "Lima"]
    judged = {j: [0, 0, 0] for j in JUDGES}
    config = BenchConfig(data=str(data), out=tmp_path, labels=labels_file)
    primary, sets, sources, found, summary = _labels(config, items, answers, judged)
    assert primary == "audited" and sets["audited"] == [0, 1, 0]
    assert sources == ["audited", "audited", FALLBACK_JUDGE]
    assert summary["audited_rows"] == 2 and summary["fallback_rows"] == 1 and summary["unsure_rows"] == 1

    chosen = BenchConfig(data=str(data), out=tmp_path, labels=labels_file, judge="containment")
    primary, sets, sources, _, _ = _labels(chosen, items, answers, judged)
    assert primary == "containment" and sources == ["containment"] * 3 and "audited" in sets

    unlabelled = BenchConfig(data=str(data), out=tmp_path)
    primary, sets, sources, _, summary = _labels(unlabelled, items, answers, judged)
    assert primary == FALLBACK_JUDGE and "audited" not in sets and summary["audited_rows"] == 0

    with pytest.raises(ValueError, match="has no context"):  # support is a property of a context
        QAItem(question="Capital of France?", answers=["Paris"], supported=True)

    # Rows asked with a context: the main label is whether the context supports the answer, known by
    # construction; the audited and judged correctness labels stay beside it.
    with_context = [i.model_copy(update={"context": "c", "supported": k != 1}) for k, i in enumerate(items)]
    primary, sets, sources, _, _ = _labels(config, with_context, answers, judged)
    assert primary == CONTEXT_LABEL and sets[CONTEXT_LABEL] == [0, 1, 0] and sources == [CONTEXT_LABEL] * 3
    assert sets["audited"] == [0, 1, 0] and sets[FALLBACK_JUDGE] == [0, 0, 0]

    primary, sets, sources, found, _ = _labels(config, items, answers, judged)
    columns = {"semgrad": [1.0, 2.0, 3.0]}
    _write_rows(tmp_path / "rows.csv", items, answers, (primary, sets, sources, found), columns, ["semgrad"])
    with (tmp_path / "rows.csv").open(encoding="utf-8", newline="") as source:
        rows = list(csv.DictReader(source))
    assert [r["label_source"] for r in rows] == ["audited", "audited", FALLBACK_JUDGE]
    assert [r["incorrect_audited"] for r in rows] == ["0", "1", ""]
    assert [r["unsure_audited"] for r in rows] == ["0", "1", ""]
    assert [r["incorrect"] for r in rows] == ["0", "1", "0"]

    # Calibration reads the same labels and says where they came from.
    results = {"primary_judge": primary, "model": "m", "profile": {"name": "p"}, "data": {"source": "qa"}}
    results["data"]["questions"] = 3
    (tmp_path / "results.json").write_text(json.dumps(results), encoding="utf-8")
    for field in ("hybridgrad", "exgrad", "pe", "ln_pe", "mean_entropy", "max_token_nll"):
        columns[field] = [1.0, 2.0, 3.0]
    _write_rows(
        tmp_path / "rows.csv", items, answers, (primary, sets, sources, found), columns, list(columns)
    )
    labelled = read_labelled([tmp_path])
    assert labelled.wrong == [0, 1, 0]
    assert labelled.groups == [item.question for item in items]  # each answer's own question
    # A paraphrase row is grouped with the question it rewrites, so calibration keeps the two together.
    rewritten = [items[0].model_copy(update={"source_question": "the original"}), *items[1:]]
    _write_rows(
        tmp_path / "rows.csv", rewritten, answers, (primary, sets, sources, found), columns, list(columns)
    )
    assert read_labelled([tmp_path]).groups == ["the original", items[1].question, items[2].question]
    assert labelled.labels == f"audited (2 rows) + judge:{FALLBACK_JUDGE} (1 rows)"
    assert read_labelled([tmp_path], "containment").labels == "judge:containment"


def test_kappa_and_agreement_on_a_hand_example() -> None:
    first = [1, 1, 0, 0, 1, 0, 1, 1, 1, 0]
    second = [1, 0, 0, 0, 1, 0, 1, 1, 0, 0]
    # observed 8/10; chance 0.6 * 0.4 + 0.4 * 0.6 = 0.48; kappa = (0.8 - 0.48) / 0.52
    assert agreement(first, second) == pytest.approx(0.8)
    assert cohen_kappa(first, second) == pytest.approx(0.32 / 0.52)
    assert cohen_kappa(first, second) == pytest.approx(cohen_kappa_score(first, second))
    assert cohen_kappa(first, first) == pytest.approx(1.0)
    assert cohen_kappa([1, 0], [0, 1]) == pytest.approx(-1.0)


def test_compare_readings_lists_the_disagreements() -> None:
    first = {(x.question, x.answer): x for x in [PARIS, ROME]}
    second = [PARIS.model_copy(update={"incorrect": 1, "reason": "other"}), ROME]
    read = compare_readings(first, second)
    assert read.n == 2 and read.agreement == pytest.approx(0.5)
    assert [(d.answer, d.first.incorrect, d.second.incorrect) for d in read.disagreements] == [
        ("Paris", 0, 1)
    ]


def test_key_match_rejects_echoes_of_the_question() -> None:
    question = "Rems, rads, and curies are all used to measure what?"
    assert not key_match(question, question, ["radioactivity"])
    question = "This type of inhibition is called allosteric what?"
    answer = "This type of inhibition is called allosteric inhibition."
    assert containment(answer, ["inhibition"])  # containment is fooled: the reference is in the question
    assert not key_match(question, answer, ["inhibition"])
    assert key_match("Who proposed natural selection?", "Charles Darwin", ["darwin"])


def test_key_match_rules_on_small_examples() -> None:
    choice = "Who is faster in real life, a tortoise or a hare?"
    refs = ["A hare is faster in real life"]
    assert key_match(choice, "A hare.", refs) and not key_match(choice, "A tortoise.", refs)
    assert key_match("Can pigs fly?", "Pigs cannot fly.", ["No, pigs cannot fly"])  # negations count
    assert not key_match("Can pigs fly?", "Pigs can fly with wings.", ["No, pigs cannot fly"])
    lymph = "Which organs filter the lymph?"
    assert key_match(lymph, "The lymph node.", ["lymph nodes"])  # plural and singular
    assert key_match("How many bases does DNA have?", "4 bases", ["four"])  # numbers in words or digits
    assert key_recall(lymph, "The spleen.", ["lymph nodes"]) == 0.0
    # question-aware similarity: an answer much closer to a reference than to the question matches
    assert not key_match("Why is the sky blue?", "Rayleigh scattering.", ["Because of light scattering"])
    assert key_match(
        "Why is the sky blue?", "Rayleigh scattering.", ["Because of light scattering"], gain=0.3
    )
    assert not key_match("Why is the sky blue?", "The sky is blue.", ["Because of light"], gain=0.9)  # echo
