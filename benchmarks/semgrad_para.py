"""semgrad_para next to SemGrad: does the gradient inside paraphrase directions detect wrong answers better?

Run from the repository root after the benchmark has written its labelled rows::

    OMP_NUM_THREADS=1 python benchmarks/semgrad_para.py [--write-builtin] [--limit N]

1. Paraphrase directions at the embedded model's built-in profile (offset -4, layers 15-29) are fitted on the
   shipped SPS set (40 TruthfulQA dev questions, 160 paraphrases; ``fit_directions``), for k up to 64; the
   top-k for smaller k are the first k of them. A label-free check: how much of held-out questions'
   paraphrase movement the directions capture (fit on half the questions, measure on the other half).
2. For every benchmark answer NOT among the fitting questions (all 500 SciQ rows; the 360 TruthfulQA rows
   outside the shipped set), the scorer's own pass (``gradient_statistics``) gives dL/dh_l[p] per layer. It is
   checked against the benchmark's ``semgrad`` column before anything is written (and, once the built-in
   directions file exists, ``SemGradScorer``'s ``semgrad_para`` against the projection here).
3. AUROC (wrong greedy answer = positive) with 95% bootstrap intervals of: SemGrad; semgrad_para for each k;
   the control (projection onto k random orthonormal directions per layer, 20 draws); a second control (the
   top-k principal components of the questions' own hidden states, i.e. where different questions differ);
   the full gradient norm (semgrad_para with every direction). Labels: the audited labels in
   ``benchmarks/labels/<set>.jsonl`` where that file exists (all rows, and without the rows marked unsure),
   then the bench's primary labels in rows.csv when they are not those, and the automatic judge each set had
   as primary before the audit (SciQ containment, TruthfulQA similarity; as in ``sps_vs_auroc.py``).

Writes ``benchmarks/results/embedded/sps/semgrad_para.{json,md}``; ``--write-builtin`` also (re)writes the
shipped ``semgrad_guard/data/smollm2-135m-instruct.directions.safetensors``. The per-answer gradients are
cached in ``out/semgrad_para/`` (git-ignored), so a rerun takes about a minute.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from semgrad_guard import SemGradScorer
from semgrad_guard.directions import (
    BUILTIN_DIR,
    DEFAULT_DIRECTIONS,
    ParaphraseDirections,
    paraphrase_differences,
    principal_directions,
)
from semgrad_guard.evaluation.datasets import qa_prompt
from semgrad_guard.evaluation.metrics import auroc, bootstrap_auroc
from semgrad_guard.model_parts import num_layers
from semgrad_guard.sps import DEFAULT_DATA, encode_items, fit_directions, load_default_items, tail_states
from semgrad_guard.statistics import gradient_statistics

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sps_vs_auroc import JUDGE, paired_difference

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "embedded"
LABELS = ROOT / "benchmarks" / "labels"
CACHE = ROOT / "out" / "semgrad_para"
K_GRID = (1, 2, 4, 8, 16, 32, 64)
RANDOM_DRAWS = 20
BUILTIN_FILE = BUILTIN_DIR / "smollm2-135m-instruct.directions.safetensors"


def read_rows(folder: Path, exclude: set[str], limit: int | None) -> list[dict[str, str]]:
    """Benchmark rows with a non-empty answer whose question is not among the fitting questions."""
    with (folder / "rows.csv").open(encoding="utf-8") as source:
        rows = [r for r in csv.DictReader(source) if r["answer"].strip() and r["question"] not in exclude]
    return rows[:limit]


def gradient_vectors(scorer: SemGradScorer, rows: list[dict[str, str]], name: str) -> np.ndarray:
    """dL/dh_l[p] at the scorer's profile for every row, (rows, layers, hidden) float64, cached on disk."""
    key = hashlib.sha256(
        json.dumps(
            [scorer.model_name, scorer.profile.offset, scorer.profile.layers]
            + [[r["question"], r["answer"]] for r in rows]
        ).encode()
    ).hexdigest()[:16]
    path = CACHE / f"{name}-{key}.npy"
    if path.is_file():
        return np.load(path).astype(np.float64)
    model, profile = scorer.model, scorer.profile
    assert profile.layers is not None
    pairs = [scorer._encode(qa_prompt(r["question"]), r["answer"]) for r in rows]
    out = np.zeros((len(rows), len(profile.layers), model.config.hidden_size))
    for start in tqdm(range(0, len(pairs), 8), desc=f"{name} gradients", unit="batch"):
        stats = gradient_statistics(model, pairs[start : start + 8], profile.layers, num_layers(model))
        for row, stat in enumerate(stats):
            out[start + row] = stat.hidden_grad_vectors.numpy()
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, out.astype(np.float32))
    return out


def projection(grads: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """semgrad_para: mean_l ||U_l g_l|| for grads (n, layers, hidden) and vectors (layers, k, hidden)."""
    return np.linalg.norm(np.einsum("lkh,nlh->nlk", vectors, grads), axis=-1).mean(-1)


def share(grads: np.ndarray, vectors: np.ndarray) -> float:
    """Mean over answers and layers of the fraction of ||g_l||^2 inside the directions' span."""
    inside = (np.einsum("lkh,nlh->nlk", vectors, grads) ** 2).sum(-1)
    return float((inside / (grads**2).sum(-1)).mean())


def random_orthonormal(layers: int, k: int, hidden: int, seed: int) -> np.ndarray:
    """Random orthonormal directions, k per layer (QR of a Gaussian matrix): (layers, k, hidden)."""
    gaussian = np.random.default_rng(seed).standard_normal((layers, hidden, k))
    return np.linalg.qr(gaussian)[0].transpose(0, 2, 1)


def heldout_capture(differences: torch.Tensor, source: list[int]) -> dict[str, list[float]]:
    """Fraction of held-out questions' paraphrase movement inside directions fitted on the other questions.

    Questions are split alternately; both halves take a turn as held out. Mean over layers and both turns.
    """
    src = torch.tensor(source)
    paraphrase = torch.nonzero(src != torch.arange(len(src))).squeeze(1)
    question = {q: i for i, q in enumerate(sorted(set(source)))}
    half = torch.tensor([question[int(src[p])] % 2 for p in paraphrase])
    captured = np.zeros(len(K_GRID))
    for held in (0, 1):
        fit, test = differences[half != held], differences[half == held]
        vectors, _, _ = principal_directions(fit, max(K_GRID))
        energy = (test**2).sum((0, 2))
        for i, k in enumerate(K_GRID):
            inside = (torch.einsum("lkh,nlh->nlk", vectors[:, :k], test) ** 2).sum((0, 2))
            captured[i] += float((inside / energy).mean()) / 2
    return {
        "k": list(K_GRID),
        "heldout_captured": captured.tolist(),
        "random_expected": [k / differences.shape[-1] for k in K_GRID],
    }


def audited(name: str, rows: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray] | None:
    """Audited labels and unsure flags for these rows (NaN where a row has none), if the file exists."""
    path = LABELS / f"{name}.jsonl"
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    by_pair = {(r["question"], r["answer"]): r for r in records}
    found = [by_pair.get((r["question"], r["answer"])) for r in rows]
    labels = np.array([np.nan if f is None else float(f["incorrect"]) for f in found])
    unsure = np.array([bool(f and f.get("unsure")) for f in found])
    return labels, unsure


def evaluate(labels: np.ndarray, scores: dict[str, np.ndarray], draws: dict[int, list[np.ndarray]]) -> dict:
    """AUROC with a bootstrap interval per score; random-direction spread; paired differences."""
    out: dict[str, Any] = {"n": len(labels), "error_rate": float(labels.mean()), "auroc": {}}
    for method, values in scores.items():
        out["auroc"][method] = [auroc(labels, values), *bootstrap_auroc(labels, values)]
    out["random_draws"] = {
        str(k): {
            "mean": float(np.mean(values := [auroc(labels, d) for d in draw])),
            "min": float(np.min(values)),
            "max": float(np.max(values)),
        }
        for k, draw in draws.items()
    }
    default = f"para_k{DEFAULT_DIRECTIONS}"
    out["paired"] = {
        f"{default} - semgrad": paired_difference(labels, scores[default], scores["semgrad"]),
        f"{default} - full_norm": paired_difference(labels, scores[default], scores["full_norm"]),
        f"{default} - random_k{DEFAULT_DIRECTIONS}": paired_difference(
            labels, scores[default], scores[f"random_k{DEFAULT_DIRECTIONS}"]
        ),
        "full_norm - semgrad": paired_difference(labels, scores["full_norm"], scores["semgrad"]),
    }
    return out


def table(name: str, label: str, res: dict[str, Any]) -> list[str]:
    """Markdown rows: one per k for para / random / question-PCA, then the reference scores."""

    def cell(values: list[float]) -> str:
        return f"{values[0]:.3f} [{values[1]:.3f}, {values[2]:.3f}]"

    a = res["auroc"]
    lines = [
        f"### {name}, labels: {label} ({res['n']} answers, {res['error_rate']:.0%} wrong)",
        "",
        f"SemGrad (offset -4, layers 15-29): {cell(a['semgrad'])}; full gradient norm "
        f"(mean_l ||g_l||): {cell(a['full_norm'])}.",
        "",
        "| k | semgrad_para (paraphrase directions) | random directions, draw 0 | random, 20 draws: mean "
        "(min-max) | question-variance directions |",
        "| ---: | --- | --- | --- | --- |",
    ]
    for k in K_GRID:
        spread = res["random_draws"][str(k)]
        question = cell(a[f"qpca_k{k}"]) if f"qpca_k{k}" in a else "-"
        lines.append(
            f"| {k} | {cell(a[f'para_k{k}'])} | {cell(a[f'random_k{k}'])} | {spread['mean']:.3f} "
            f"({spread['min']:.3f}-{spread['max']:.3f}) | {question} |"
        )
    lines += ["", "Paired bootstrap, 95% interval of the AUROC difference:", ""]
    lines += [f"- {pair}: [{low:+.3f}, {high:+.3f}]" for pair, (low, high) in res["paired"].items()]
    return [*lines, ""]


def main() -> None:
    """Fit the directions, get the gradients, compute the AUROCs, write the results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sets", nargs="+", default=["sciq", "truthfulqa"])
    parser.add_argument("--limit", type=int, help="first N usable benchmark rows per set")
    parser.add_argument("--write-builtin", action="store_true", help="(re)write the shipped directions file")
    args = parser.parse_args()
    started = time.perf_counter()
    torch.manual_seed(0)
    scorer = SemGradScorer(device="cpu").load()
    model, tokenizer, profile = scorer.model, scorer.tokenizer, scorer.profile
    assert profile.layers is not None and (profile.offset, profile.layers) == (-4, tuple(range(15, 30)))
    items = load_default_items()
    fitted_on = {item.question for item in items}

    # 1. Directions on the shipped (TruthfulQA-only) set, and the label-free held-out check.
    fit_start = time.perf_counter()
    directions = fit_directions(
        model,
        tokenizer,
        profile,
        items,
        k=max(K_GRID),
        name=scorer.model_name,
        data=DEFAULT_DATA,
        progress=True,
    )
    fit_seconds = time.perf_counter() - fit_start
    # Principal components are nested: the shipped k = DEFAULT_DIRECTIONS file is the first k of these.
    top = DEFAULT_DIRECTIONS
    shipped = replace(
        directions, vectors=directions.vectors[:, :top], singular_values=directions.singular_values[:, :top]
    )
    if args.write_builtin:
        shipped.save(BUILTIN_FILE)
        scorer = SemGradScorer(device="cpu").load()  # reload: the built-in profile now finds the file
    if BUILTIN_FILE.is_file():  # the shipped file is this fit
        torch.testing.assert_close(
            ParaphraseDirections.load(BUILTIN_FILE).vectors, shipped.vectors.float().double()
        )
    prompts, source = encode_items(tokenizer, items)
    states = tail_states(model, prompts, [profile.offset], num_layers(model), 16, False)
    states = states[:, 0, list(profile.layers)]
    capture: dict[str, Any] = heldout_capture(paraphrase_differences(states, source), source)
    explained = (directions.singular_values**2).cumsum(-1) / directions.energy[:, None]
    capture["in_sample_captured"] = [float(explained[:, k - 1].mean()) for k in K_GRID]
    originals = sorted(set(source))
    centred = states[originals].double() - states[originals].double().mean(0)
    # Where different questions differ; 40 centred states have rank 39, so k stops below that.
    qpca, _, _ = principal_directions(centred, len(originals) - 1)
    tqdm.write(json.dumps(capture))

    vectors, question_vectors = directions.vectors.numpy(), qpca.numpy()
    layers, hidden = vectors.shape[0], vectors.shape[-1]
    results: dict[str, Any] = {
        "model": scorer.model_name,
        "profile": {"offset": profile.offset, "layers": list(profile.layers)},
        "directions": {
            "data": directions.data,
            "n_questions": directions.n_questions,
            "n_differences": directions.n_differences,
            "fit_seconds": fit_seconds,
            "shipped_k": DEFAULT_DIRECTIONS,
            **capture,
        },
        "sets": {},
    }
    md = [
        "# semgrad_para on the embedded model (generated by `benchmarks/semgrad_para.py`)",
        "",
        f"Directions: offset {profile.offset}, layers {profile.layers[0]}-{profile.layers[-1]}, fitted on "
        f"`{directions.data}` ({directions.n_questions} TruthfulQA questions, {directions.n_differences} "
        f"paraphrase differences, {fit_seconds:.0f} s). Evaluated only on questions outside that set.",
        "",
        "Held-out capture (fit on half the questions, share of the other half's paraphrase movement inside "
        "the top-k directions; mean over layers): "
        + ", ".join(
            f"k={k}: {c:.2f} (random {r:.3f})"
            for k, c, r in zip(K_GRID, capture["heldout_captured"], capture["random_expected"], strict=True)
        )
        + ".",
        "",
    ]
    for name in args.sets:
        folder = RESULTS / name
        primary = json.loads((folder / "results.json").read_text())["primary_judge"]
        rows = read_rows(folder, fitted_on, args.limit)
        grads = gradient_vectors(scorer, rows, name)
        semgrad = np.abs(grads).mean(-1).mean(-1)
        np.testing.assert_allclose(semgrad, [float(r["semgrad"]) for r in rows], rtol=1e-4)
        if scorer.directions is not None:  # the shipped file through the scorer equals the projection here
            check = scorer.score_batch([(qa_prompt(r["question"]), r["answer"]) for r in rows[:8]])
            np.testing.assert_allclose(
                [s.semgrad_para for s in check],
                projection(grads[:8], scorer.directions.numpy()),
                rtol=1e-4,
            )
        scores = {"semgrad": semgrad, "full_norm": np.linalg.norm(grads, axis=-1).mean(-1)}
        draws: dict[int, list[np.ndarray]] = {}
        for k in K_GRID:
            scores[f"para_k{k}"] = projection(grads, vectors[:, :k])
            if k <= question_vectors.shape[1]:
                scores[f"qpca_k{k}"] = projection(grads, question_vectors[:, :k])
            draws[k] = [
                projection(grads, random_orthonormal(layers, k, hidden, seed)) for seed in range(RANDOM_DRAWS)
            ]
            scores[f"random_k{k}"] = draws[k][0]
        label_sets: dict[str, np.ndarray] = {}
        found = audited(name, rows)
        if found is not None:
            labels, unsure = found
            label_sets["audited"] = labels
            label_sets["audited, unsure rows left out"] = np.where(unsure, np.nan, labels)
        if primary == "audited":  # the bench's main labels are the same file's: check, do not repeat
            assert found is not None
            np.testing.assert_array_equal(found[0], [float(r["incorrect_audited"]) for r in rows])
        for judge in dict.fromkeys([primary, JUDGE.get(name, primary)]):
            if judge != "audited":
                label_sets[f"judge:{judge}"] = np.array([float(r[f"incorrect_{judge}"]) for r in rows])
        alignment = {
            "k": list(K_GRID),
            "random_expected": [k / hidden for k in K_GRID],
            "paraphrase": [share(grads, vectors[:, :k]) for k in K_GRID],
            "question_variance": [
                share(grads, question_vectors[:, :k]) if k <= question_vectors.shape[1] else None
                for k in K_GRID
            ],
        }
        results["sets"][name] = {
            "rows": len(rows),
            "excluded_fitting_questions": True,
            "alignment": alignment,
            "labels": {},
        }
        md += [
            f"### {name}: how much of the gradient lies in the directions ({len(rows)} answers)",
            "",
            "Mean over answers and layers of ||U_l g_l||^2 / ||g_l||^2 (a random k-dimensional subspace: k / "
            f"{hidden}):",
            "",
            "| k | " + " | ".join(str(k) for k in K_GRID) + " |",
            "| --- | " + " | ".join("---:" for _ in K_GRID) + " |",
            *(
                f"| {label} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in alignment[key]) + " |"
                for label, key in [
                    ("paraphrase directions", "paraphrase"),
                    ("question-variance directions", "question_variance"),
                    ("random subspace (expected)", "random_expected"),
                ]
            ),
            "",
        ]
        for label, values in label_sets.items():
            keep = ~np.isnan(values)
            res = evaluate(
                values[keep].astype(int),
                {m: s[keep] for m, s in scores.items()},
                {k: [d[keep] for d in draw] for k, draw in draws.items()},
            )
            results["sets"][name]["labels"][label] = res
            md += table(name, label, res)
            tqdm.write("\n".join(table(name, label, res)))
    results["seconds"] = time.perf_counter() - started
    md += [f"Total time {results['seconds']:.0f} s on a 2-core CPU (OMP_NUM_THREADS=1)."]
    out = RESULTS / "sps"
    out.mkdir(parents=True, exist_ok=True)
    (out / "semgrad_para.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "semgrad_para.md").write_text("\n".join(md) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
