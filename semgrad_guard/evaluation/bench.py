"""The error-detection benchmark: greedy answers, judged labels, every method's scores, metrics and cost.

``semgrad-guard bench --data sciq --out DIR`` generates one greedy answer per question with the paper's
prompt (cached in DIR, so methods can be re-scored without regenerating), labels each answer with its
audited label where one matches the question and exact answer (else with the best automatic judge) and with
every automatic judge, scores it with every method, and writes results.json, rows.csv, results.md and plots.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm.auto import tqdm

from semgrad_guard.evaluation import metrics, sampling
from semgrad_guard.evaluation.audit import AuditedLabel, find_labels, load_labels, resolve_labels
from semgrad_guard.evaluation.datasets import QAItem, load_qa
from semgrad_guard.evaluation.embeddings import SentenceEmbedder
from semgrad_guard.evaluation.judges import FALLBACK_JUDGE, JUDGES, JudgeName, judge_all
from semgrad_guard.evaluation.methods import CONTEXT_LABEL, GRADIENT, METHODS, SAMPLING, SANITY, SINGLE_PASS
from semgrad_guard.results import Score
from semgrad_guard.scorer import SemGradScorer

__all__ = ["CONTEXT_LABEL", "BenchConfig", "run_bench"]


class BenchConfig(BaseModel):
    """One benchmark run."""

    model_config = ConfigDict(frozen=True)

    data: str = Field(description="'sciq', 'truthfulqa' (dev splits) or a JSONL path.")
    out: Path
    model: str | None = Field(default=None, description="Scoring/generating model (default: embedded).")
    limit: int | None = Field(default=None, ge=1)
    methods: tuple[str, ...] = METHODS
    samples: int = Field(default=10, ge=0, description="K sampled answers for the sampling baselines.")
    max_new_tokens: int = Field(default=32, ge=1)
    judge: Literal["audited", "auto", "containment", "rougeL", "similarity", "qa-similarity", "key-match"] = (
        Field(
            default="audited",
            description="Main labels: 'audited' (audited labels; the best automatic judge where a row has "
            "none), 'auto' (the best automatic judge alone) or one judge.",
        )
    )
    labels: Path | None = Field(
        default=None,
        description="Audited label JSONL (default: every benchmarks/labels/[<model>/]<name>.jsonl for sets).",
    )
    answers_from: Path | None = Field(
        default=None,
        description="Score the greedy answers another bench run made (its folder) instead of generating: "
        "proxy scoring, one model judging another's answers.",
    )
    seed: int = 0

    @model_validator(mode="after")
    def _sampling_needs_own_answers(self) -> BenchConfig:
        if self.answers_from is not None and self.samples:
            raise ValueError("sampling baselines sample the answering model: set samples=0 with answers_from")
        return self


def _jsonl_cache(path: Path, key: Callable[[dict[str, Any]], Any]) -> dict[Any, dict[str, Any]]:
    if not path.is_file():
        return {}
    records = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return {key(r): r for r in records}


def _asked(record: dict[str, Any]) -> tuple[str, str | None]:
    """What a cached record answered: its question and context (records without one predate contexts)."""
    return record["question"], record.get("context")


def _asking(question: str, context: str | None) -> dict[str, str]:
    """A cached record's question and context fields, as :func:`_asked` reads them back."""
    return {"question": question} | ({} if context is None else {"context": context})


def _borrowed(items: list[QAItem], folder: Path) -> list[dict[str, Any]]:
    """The greedy answers another bench run cached in ``folder``, one per item, in the items' order."""
    path = folder / "generations.jsonl"
    cache = _jsonl_cache(path, lambda r: _asked(r) if r["settings"]["n"] == 0 else None)
    missing = [item.question for item in items if (item.question, item.context) not in cache]
    if missing:
        raise ValueError(f"{path} has no greedy answer for {len(missing)} questions, e.g. {missing[0]!r}")
    return [cache[(item.question, item.context)] for item in items]


def _generate(
    scorer: SemGradScorer, items: list[QAItem], config: BenchConfig, n: int, file: str, desc: str
) -> list[dict[str, Any]]:
    """Generations per question (greedy when n == 0, else n samples), reusing DIR/file where it matches."""
    path = config.out / file
    settings = {
        "model": scorer.model_name,
        "max_new_tokens": config.max_new_tokens,
        "n": n,
        "seed": config.seed,
    }
    cache = _jsonl_cache(path, lambda r: (*_asked(r), json.dumps(r["settings"], sort_keys=True)))
    records = []
    with path.open("a", encoding="utf-8") as sink:
        for index, item in enumerate(tqdm(items, desc=desc, unit="q")):
            cached = cache.get((item.question, item.context, json.dumps(settings, sort_keys=True)))
            if cached is None:
                start = time.perf_counter()
                if n == 0:
                    texts = scorer.generate(item.prompt, max_new_tokens=config.max_new_tokens)
                else:
                    torch.manual_seed(config.seed + index)
                    texts = scorer.generate(
                        item.prompt,
                        n=n,
                        do_sample=True,
                        temperature=1.0,
                        top_p=0.9,
                        max_new_tokens=config.max_new_tokens,
                    )
                cached = {
                    **_asking(item.question, item.context),
                    "settings": settings,
                    "texts": texts,
                    "seconds": time.perf_counter() - start,
                }
                sink.write(json.dumps(cached) + "\n")
                sink.flush()
            records.append(cached)
    return records


def _score(
    scorer: SemGradScorer, items: list[QAItem], pairs: list[tuple[str, str]], config: BenchConfig
) -> tuple[list[Score], float]:
    """Scores per answer and the pass's seconds per answer, reusing DIR/scores.jsonl where it matches."""
    path = config.out / "scores.jsonl"
    # Paraphrase directions only feed semgrad_para, which no bench method reads: they do not key the cache.
    profile = scorer.profile.model_dump(mode="json", exclude={"directions"})
    setting = json.dumps({"model": scorer.model_name, "profile": profile})
    cache = _jsonl_cache(path, lambda r: (*_asked(r), r["answer"], r["setting"]))
    keys = [
        (item.question, item.context, answer, setting) for item, (_, answer) in zip(items, pairs, strict=True)
    ]
    missing = [i for i, key in enumerate(keys) if key not in cache]
    if missing:
        start = time.perf_counter()
        fresh = scorer.score_batch([pairs[i] for i in missing], errors="mark", progress=True)
        seconds = (time.perf_counter() - start) / len(missing)
        with path.open("a", encoding="utf-8") as sink:
            for i, score in zip(missing, fresh, strict=True):
                record = {
                    **_asking(keys[i][0], keys[i][1]),
                    "answer": keys[i][2],
                    "setting": setting,
                    "seconds": seconds,
                }
                cache[keys[i]] = record | {"score": score.model_dump(mode="json")}
                sink.write(json.dumps(cache[keys[i]]) + "\n")
    records = [cache[key] for key in keys]
    return [Score.model_validate(r["score"]) for r in records], float(
        np.mean([r["seconds"] for r in records])
    )


def _combined(columns: dict[str, list[float]], wrong: list[int], seed: int) -> list[float]:
    """The combined risk (logistic over every single-pass score), predicted out of fold: never in-sample."""
    from semgrad_guard.evaluation.fitting import out_of_fold_risk

    fields = list(SINGLE_PASS.values())
    rows = [
        dict(zip(fields, values, strict=True))
        for values in zip(*(columns[m] for m in SINGLE_PASS), strict=True)
    ]
    usable = [i for i, row in enumerate(rows) if all(np.isfinite(v) for v in row.values())]
    risk = np.full(len(rows), np.nan)
    risk[usable] = out_of_fold_risk([rows[i] for i in usable], [wrong[i] for i in usable], seed=seed)
    return list(risk)


def _forward_seconds(scorer: SemGradScorer, pairs: list[tuple[str, str]]) -> float:
    """Seconds per pair of a plain forward pass without autograd: the cost of logit-only methods."""
    model = scorer.model
    device = model.get_input_embeddings().weight.device
    start = time.perf_counter()
    for prompt, answer in pairs:
        pair = scorer._encode(prompt, answer)
        with torch.inference_mode():
            model(torch.tensor([pair.prompt_ids + pair.answer_ids], device=device))
    return (time.perf_counter() - start) / max(len(pairs), 1)


def _shown(path: Path) -> str:
    """A path relative to the checkout where it lies inside it (results files stay machine-independent)."""
    checkout = Path(__file__).resolve().parents[2]
    resolved = path.resolve()
    return str(resolved.relative_to(checkout)) if resolved.is_relative_to(checkout) else str(path)


def _labels(
    config: BenchConfig, items: list[QAItem], answers: list[str], judged: dict[JudgeName, list[int]]
) -> tuple[str, dict[str, list[int]], list[str], list[AuditedLabel | None], dict[str, Any]]:
    """The main label set's name, every label set, each row's source of main label, the audited matches."""
    paths = [config.labels] if config.labels else find_labels(config.data)
    audited = load_labels(*paths)
    questions = [item.question for item in items]
    merged, sources, found = resolve_labels(
        audited, questions, answers, judged[FALLBACK_JUDGE], FALLBACK_JUDGE
    )
    matched = sum(label is not None for label in found)
    sets: dict[str, list[int]] = ({"audited": merged} if matched else {}) | dict(judged)
    if any(item.supported is not None for item in items):
        # RAG-shaped sets: the main label is known by construction, so no reading is needed.
        sets = {CONTEXT_LABEL: [int(not item.supported) for item in items]} | sets
        primary, sources = CONTEXT_LABEL, [CONTEXT_LABEL] * len(items)
    elif config.judge == "audited" and matched:
        primary = "audited"
    else:
        primary = FALLBACK_JUDGE if config.judge in ("audited", "auto") else config.judge
        sources = [primary] * len(items)
    summary = {
        "main": primary,
        "audited_files": [_shown(path) for path in paths],
        "audited_rows": matched,
        "fallback_judge": FALLBACK_JUDGE,
        "fallback_rows": len(items) - matched,
        "unsure_rows": sum(bool(label and label.unsure) for label in found),
        "main_sources": {source: sources.count(source) for source in sorted(set(sources))},
    }
    return primary, sets, sources, found, summary


def _versions() -> dict[str, str]:
    names = ["semgrad-guard", "torch", "transformers", "numpy"]
    return {name: metadata.version(name) for name in names} | {"python": platform.python_version()}


def _machine(scorer: SemGradScorer) -> dict[str, Any]:
    device = scorer.model.get_input_embeddings().weight.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"device": str(device), "name": name, "cpu_count": os.cpu_count(), "platform": platform.platform()}


def run_bench(
    config: BenchConfig, scorer: SemGradScorer | None = None, embedder: SentenceEmbedder | None = None
) -> dict[str, Any]:
    """Run the benchmark and write its files into ``config.out``; returns what results.json holds."""
    from semgrad_guard.evaluation.report import write_report

    scorer = scorer or SemGradScorer(config.model)
    embedder = embedder or SentenceEmbedder()
    config.out.mkdir(parents=True, exist_ok=True)
    items = load_qa(config.data)[: config.limit]
    started = time.perf_counter()

    if config.answers_from is None:
        greedy = _generate(scorer, items, config, 0, "generations.jsonl", "generating")
    else:
        greedy = _borrowed(items, config.answers_from)
    answers = [record["texts"][0] for record in greedy]
    prompts = [item.prompt for item in items]
    judged = judge_all([i.question for i in items], answers, [i.answers for i in items], embedder)
    primary, labels, sources, audited, label_summary = _labels(config, items, answers, judged)

    pairs = list(zip(prompts, answers, strict=True))
    scores, pass_seconds = _score(scorer, items, pairs, config)
    columns: dict[str, list[float]] = {
        method: [float(getattr(s, field)) if s.valid else float("nan") for s in scores]
        for method, field in SINGLE_PASS.items()
    }
    columns["combined"] = _combined(columns, labels[primary], config.seed)
    lengths = [float(s.n_answer_tokens or 0) for s in scores]
    rng = np.random.default_rng(config.seed)
    columns |= {
        "length": lengths,
        "neg_length": [-n for n in lengths],
        "random": list(rng.random(len(items))),
    }
    forward = _forward_seconds(scorer, pairs[: min(len(pairs), 50)])
    costs = {m: pass_seconds if m in GRADIENT else forward for m in SINGLE_PASS}
    costs |= {"combined": pass_seconds} | dict.fromkeys(SANITY, 0.0)

    wanted = [m for m in config.methods if m in METHODS]
    if config.samples and any(m in SAMPLING for m in wanted):
        sampled = _generate(scorer, items, config, config.samples, "samples.jsonl", "sampling")
        embed_start = time.perf_counter()
        vectors = [embedder.encode(record["texts"]) for record in sampled]
        columns["lexical_similarity"] = [sampling.lexical_similarity(r["texts"]) for r in sampled]
        columns["semantic_entropy"] = [sampling.semantic_entropy(v) for v in vectors]
        columns["degree"] = [sampling.degree(v) for v in vectors]
        columns["eigenvalue"] = [sampling.eigenvalue(v) for v in vectors]
        extra = (time.perf_counter() - embed_start) / len(items)
        sample_seconds = float(np.mean([r["seconds"] for r in sampled])) + extra
        costs |= dict.fromkeys(SAMPLING, sample_seconds)
    wanted = [m for m in wanted if m in columns]

    results: dict[str, Any] = {
        "config": json.loads(config.model_dump_json()),
        "model": scorer.model_name,
        "answers_model": greedy[0]["settings"]["model"] if greedy else scorer.model_name,
        "profile": scorer.profile.model_dump(mode="json"),
        "data": {"source": config.data, "questions": len(items)},
        "primary_judge": primary,
        "labels": label_summary,
        "error_rate": {name: float(np.mean(values)) for name, values in labels.items()},
        "cost_seconds_per_question": {m: costs[m] for m in wanted},
        "greedy_generation_seconds_per_question": float(np.mean([r["seconds"] for r in greedy])),
        "metrics": {
            name: {m: metrics.summary(values, columns[m]) for m in wanted} for name, values in labels.items()
        },
        "invalid_rows": sum(not s.valid for s in scores),
        "versions": _versions(),
        "machine": _machine(scorer),
    }
    results["flags"] = _flags(results)
    results["seconds_total"] = time.perf_counter() - started
    _write_rows(config.out / "rows.csv", items, answers, (primary, labels, sources, audited), columns, wanted)
    (config.out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    write_report(config.out, results, labels, columns)
    return results


def _flags(results: dict[str, Any]) -> list[str]:
    """Judges under which a sanity baseline matches or beats every real method (the judge may be broken)."""
    flags = []
    for judge, by_method in results["metrics"].items():
        real = [v["auroc"] for m, v in by_method.items() if m not in SANITY and np.isfinite(v["auroc"])]
        for baseline in SANITY:
            value = by_method.get(baseline, {}).get("auroc", float("nan"))
            if real and np.isfinite(value) and value >= max(real):
                flags.append(f"{judge}: sanity baseline '{baseline}' (AUROC {value:.3f}) beats every method")
    return flags


def _write_rows(
    path: Path,
    items: list[QAItem],
    answers: list[str],
    labelled: tuple[str, dict[str, list[int]], list[str], list[AuditedLabel | None]],
    columns: dict[str, list[float]],
    methods: list[str],
) -> None:
    """One row per question: the main label and its source, the audited label, every judge's, every score."""
    primary, labels, sources, audited = labelled
    header = ["question", "source_question", "answer", "references", "label_source", "incorrect"]
    header += ["incorrect_audited", "unsure_audited", *(f"incorrect_{j}" for j in JUDGES), *methods]
    with path.open("w", encoding="utf-8", newline="") as sink:
        writer = csv.writer(sink)
        writer.writerow(header)
        for row, item in enumerate(items):
            label = audited[row]
            writer.writerow(
                [
                    item.question,
                    item.source_question or "",
                    answers[row],
                    " | ".join(item.answers),
                    sources[row],
                    labels[primary][row],
                    "" if label is None else label.incorrect,
                    "" if label is None else int(label.unsure),
                    *(labels[j][row] for j in JUDGES),
                    *(columns[m][row] for m in methods),
                ]
            )
