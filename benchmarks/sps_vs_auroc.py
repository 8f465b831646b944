"""Does SPS pick well? SPS of every candidate (offset x layer band) next to SemGrad's AUROC there.

Run from the repository root after the benchmark has written its labelled rows::

    OMP_NUM_THREADS=1 python benchmarks/sps_vs_auroc.py [--sets sciq truthfulqa] [--limit N]

It computes SPS for the embedded model on the shipped set, then, for every benchmark row (the greedy answer
and its judged label in ``benchmarks/results/embedded/<set>/rows.csv``), ONE forward and backward pass gives
``|dL/dh_l|`` at every candidate position and layer at once; SemGrad at a candidate is the band's mean. The
pass is checked against ``SemGradScorer`` at the template rule's candidate before anything is written.
Writes ``docs/sps_evidence.md``, ``docs/sps_vs_auroc.png`` and ``benchmarks/results/embedded/sps/``.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from semgrad_guard import SemGradScorer
from semgrad_guard.evaluation.datasets import load_qa, qa_prompt
from semgrad_guard.evaluation.metrics import auroc, bootstrap_auroc_difference
from semgrad_guard.model_parts import num_layers
from semgrad_guard.pairs import EncodedPair
from semgrad_guard.profiles import template_rule_profile
from semgrad_guard.prompts import ChatFormat
from semgrad_guard.sps import SPSResult, compute_sps, sps_table
from semgrad_guard.statistics import gradient_statistics

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "embedded"
DOCS = ROOT / "docs"
# Short one-phrase SciQ answers are judged by containment; TruthfulQA's sentences by embedding similarity.
JUDGE = {"sciq": "containment", "truthfulqa": "similarity"}
STABILITY_QUESTIONS = 60


def candidate_gradients(
    scorer: SemGradScorer, pairs: list[tuple[str, str]], offsets: list[int], batch_size: int = 8
) -> np.ndarray:
    """Mean |dL/dh_l[P + offset]| for every pair, offset and layer: (pairs, offsets, layers).

    The scorer's own pass (:func:`~semgrad_guard.statistics.gradient_statistics`), run once per candidate
    offset with every hidden state as a scored layer.
    """
    model, chat = scorer.model, ChatFormat(scorer.tokenizer)
    depth = num_layers(model)
    encoded = [EncodedPair(chat.encode_prompt(qa_prompt(q)), chat.encode_answer(a), 0) for q, a in pairs]
    out = np.zeros((len(pairs), len(offsets), depth))
    for column, offset in enumerate(offsets):
        for start in tqdm(range(0, len(encoded), batch_size), desc=f"gradients at {offset}", unit="batch"):
            batch = [
                replace(p, position=len(p.prompt_ids) + offset) for p in encoded[start : start + batch_size]
            ]
            for row, stat in enumerate(gradient_statistics(model, batch, list(range(depth)), depth)):
                out[start + row, column] = stat.hidden_grad.numpy()
    return out


def read_rows(folder: Path, limit: int | None, judge: str) -> tuple[list[tuple[str, str]], np.ndarray]:
    """(question, greedy answer) pairs with a non-empty answer and their labels under ``judge``."""
    with (folder / "rows.csv").open(encoding="utf-8") as source:
        rows = [r for r in csv.DictReader(source) if r["answer"].strip()][:limit]
    return (
        [(r["question"], r["answer"]) for r in rows],
        np.array([int(r[f"incorrect_{judge}"]) for r in rows]),
    )


def band_scores(grads: np.ndarray, bands: list[tuple[int, int]]) -> np.ndarray:
    """SemGrad at every (offset, band), the mean over the band's layers: (pairs, offsets, bands)."""
    return np.stack([grads[:, :, first : last + 1].mean(-1) for first, last in bands], axis=-1)


def evaluate(
    sps: SPSResult, grads: np.ndarray, labels: np.ndarray, lengths: np.ndarray, rule_offset: int
) -> dict[str, Any]:
    """AUROC at every candidate, the rank correlation with SPS, and SPS's pick against the template rule."""
    scores = band_scores(grads, sps.bands)
    aurocs = np.array(
        [[auroc(labels, scores[:, o, b]) for b in range(len(sps.bands))] for o in range(len(sps.offsets))]
    )
    layer_aurocs = np.array(
        [
            [auroc(labels, grads[:, o, layer]) for layer in range(sps.num_layers)]
            for o in range(len(sps.offsets))
        ]
    )
    band_sps = np.array(sps.band_sps)
    rho, p = spearmanr(band_sps.ravel(), aurocs.ravel())
    rho_layer, p_layer = spearmanr(np.array(sps.sps).ravel(), layer_aurocs.ravel())
    retrieval = np.array(sps.retrieval)
    band_retrieval = np.stack([retrieval[:, first : last + 1].mean(1) for first, last in sps.bands], axis=1)
    rho_retrieval, p_retrieval = spearmanr(band_retrieval.ravel(), aurocs.ravel())
    pick = (sps.offsets.index(sps.profile.offset), _band_index(sps, sps.profile.layers))
    rule = (sps.offsets.index(rule_offset), len(sps.bands) - 1)  # the last band is the last half
    best = np.unravel_index(np.nanargmax(aurocs), aurocs.shape)
    return {
        "n": len(labels),
        "error_rate": float(labels.mean()),
        "auroc": aurocs.tolist(),
        "layer_auroc": layer_aurocs.tolist(),
        "spearman": {"rho": float(rho), "p": float(p), "candidates": int(aurocs.size)},
        "spearman_layers": {
            "rho": float(rho_layer),
            "p": float(p_layer),
            "candidates": int(layer_aurocs.size),
        },
        "spearman_retrieval": {"rho": float(rho_retrieval), "p": float(p_retrieval)},
        "sps_pick": {
            "offset": sps.offsets[pick[0]],
            "band": sps.bands[pick[1]],
            "auroc": float(aurocs[pick]),
        },
        "template_rule": {"offset": rule_offset, "band": sps.bands[rule[1]], "auroc": float(aurocs[rule])},
        "best": {"offset": sps.offsets[best[0]], "band": sps.bands[best[1]], "auroc": float(aurocs[best])},
        "length_auroc": auroc(labels, lengths),
        "pick_minus_rule_ci": paired_difference(
            labels, scores[:, pick[0], pick[1]], scores[:, rule[0], rule[1]]
        ),
    }


def paired_difference(labels: np.ndarray, a: np.ndarray, b: np.ndarray, rounds: int = 1000) -> list[float]:
    """A 95% paired-bootstrap interval (resampling questions, fixed seed) for AUROC(a) - AUROC(b)."""
    return list(bootstrap_auroc_difference(labels, a, b, rounds=rounds, seed=0))


def _band_index(sps: SPSResult, layers: tuple[int, ...] | None) -> int:
    assert layers is not None
    return sps.bands.index((layers[0], layers[-1]))


def write_docs(
    sps: SPSResult,
    results: dict[str, dict[str, Any]],
    stability: dict[str, dict[str, Any]],
    seconds: float,
    docs: Path,
) -> None:
    """The evidence tables (markdown) and the SPS-vs-AUROC scatter plot."""
    chosen, layers = sps.profile, sps.profile.layers or ()
    token = sps.tokens[sps.offsets.index(chosen.offset)]
    lines = [
        "# SPS evidence for the embedded model (generated by `benchmarks/sps_vs_auroc.py`)",
        "",
        f"Model `{sps.model}`, SPS from `{sps.data}` ({sps.n_questions} questions, {sps.n_prompts} prompts, "
        f"{sps.seconds:.0f} s). Chosen: offset {chosen.offset} (`{token}`), layers {layers[0]}-{layers[-1]}.",
        "",
        "## SPS (within- minus between-question cosine, centred), per offset and layer band",
        "",
        sps_table(sps),
        "",
    ]
    for name, res in results.items():
        lines += [
            f"## {name}: SemGrad AUROC per candidate ({res['n']} questions, judge `{res['judge']}`, "
            f"error rate {res['error_rate']:.2f})",
            "",
            f"(The benchmark's own primary judge for this set is `{res['bench_primary_judge']}`.)",
            "",
            "| offset | token | " + " | ".join(f"SPS / AUROC layers {a}-{b}" for a, b in sps.bands) + " |",
            "| --- | --- | " + " | ".join("---" for _ in sps.bands) + " |",
        ]
        for o, (offset, token) in enumerate(zip(sps.offsets, sps.tokens, strict=True)):
            cells = [f"{sps.band_sps[o][b]:.3f} / {res['auroc'][o][b]:.3f}" for b in range(len(sps.bands))]
            shown = f"`{token}`" if sps.template[o] else f"question token (e.g. `{token}`)"
            lines.append(f"| {offset} | {shown} | " + " | ".join(cells) + " |")
        s, r, p, best = res["spearman"], res["template_rule"], res["sps_pick"], res["best"]
        lines += [
            "",
            f"- Spearman rho(SPS, AUROC) over {s['candidates']} (offset, band) candidates: {s['rho']:.3f} "
            f"(p = {s['p']:.3g}); over {res['spearman_layers']['candidates']} (offset, layer) cells: "
            f"{res['spearman_layers']['rho']:.3f} (p = {res['spearman_layers']['p']:.3g}); "
            f"retrieval accuracy instead of SPS, per band: {res['spearman_retrieval']['rho']:.3f} "
            f"(p = {res['spearman_retrieval']['p']:.3g}).",
            f"- SPS pick (offset {p['offset']}, layers {p['band'][0]}-{p['band'][1]}): "
            f"AUROC {p['auroc']:.3f}; "
            f"template rule (offset {r['offset']}, layers {r['band'][0]}-{r['band'][1]}): "
            f"AUROC {r['auroc']:.3f}; "
            f"best candidate (offset {best['offset']}, layers {best['band'][0]}-{best['band'][1]}): "
            f"{best['auroc']:.3f}; answer length: {res['length_auroc']:.3f}. AUROC(pick) - AUROC(rule): "
            f"{p['auroc'] - r['auroc']:+.3f}, 95% paired bootstrap interval "
            f"[{res['pick_minus_rule_ci'][0]:+.3f}, {res['pick_minus_rule_ci'][1]:+.3f}].",
            "",
        ]
    lines += ["## Stability: SPS computed on each set's own first questions instead of the shipped set", ""]
    for name, own in stability.items():
        lines.append(
            f"- {name} ({STABILITY_QUESTIONS} questions): pick offset {own['offset']}, layers "
            f"{own['layers'][0]}-{own['layers'][-1]}; Spearman rho of its (offset, band) SPS table with the "
            f"shipped set's: {own['rho']:.3f}."
        )
    lines += ["", f"Total time {seconds:.0f} s on a 2-core CPU (OMP_NUM_THREADS=1)."]
    (docs / "sps_evidence.md").write_text("\n".join(lines) + "\n", encoding="utf-8")

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.5), squeeze=False)
    for axis, (name, res) in zip(axes[0], results.items(), strict=True):
        aurocs = np.array(res["auroc"])
        for b, (first, last) in enumerate(sps.bands):
            axis.scatter(np.array(sps.band_sps)[:, b], aurocs[:, b], label=f"layers {first}-{last}")
        for o, offset in enumerate(sps.offsets):
            point = (sps.band_sps[o][-1], aurocs[o, -1])
            axis.annotate(f"offset {offset}", point, xytext=(4, 4), textcoords="offset points", fontsize=7)
        axis.axhline(res["length_auroc"], color="grey", linestyle=":", label="answer length")
        axis.set_title(f"{name} (rho = {res['spearman']['rho']:.2f}, p = {res['spearman']['p']:.2g})")
        axis.set_xlabel("SPS of the candidate")
        axis.set_ylabel(f"SemGrad AUROC ({res['judge']})")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(docs / "sps_vs_auroc.png", dpi=120)


def main() -> None:
    """Compute SPS, the per-candidate gradients and AUROCs, check them against the scorer, write the docs."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sets", nargs="+", default=["sciq", "truthfulqa"])
    parser.add_argument("--limit", type=int, help="first N benchmark rows per set")
    parser.add_argument("--results", type=Path, default=RESULTS, help="bench output folder per set")
    parser.add_argument("--docs", type=Path, default=DOCS, help="where the table and figure go")
    args = parser.parse_args()
    started = time.perf_counter()
    torch.manual_seed(0)
    scorer = SemGradScorer(device="cpu").load()
    out = args.results / "sps"
    out.mkdir(parents=True, exist_ok=True)
    sps = compute_sps(scorer.model, scorer.tokenizer, name=scorer.model_name, progress=True)
    sps.save(out / "sps.json")
    tqdm.write(sps_table(sps))

    results = {}
    for name in args.sets:
        primary = json.loads((args.results / name / "results.json").read_text())["primary_judge"]
        judge = JUDGE.get(name, primary)
        pairs, labels = read_rows(args.results / name, args.limit, judge)
        tqdm.write(f"{name}: {len(pairs)} rows, judge {judge}")
        cached = out / f"{name}_gradients.npy"
        if cached.is_file() and np.load(cached).shape[:2] == (len(pairs), len(sps.offsets)):
            grads = np.load(cached)  # written by an earlier run on the same rows
        else:
            grads = candidate_gradients(scorer, pairs, sps.offsets)
        # Fidelity: at the template rule's candidate the pass must equal the scorer's SemGrad.
        check = scorer.score_batch([(qa_prompt(q), a) for q, a in pairs[:8]])
        rule = scorer.profile
        ours = grads[:8, sps.offsets.index(rule.offset), list(rule.layers or ())].mean(-1)
        theirs = np.array([s.semgrad for s in check], dtype=float)
        np.testing.assert_allclose(ours, theirs, rtol=1e-4)
        np.save(cached, grads)
        chat = ChatFormat(scorer.tokenizer)
        lengths = np.array([len(chat.encode_answer(a)) for _, a in pairs])
        rule_offset = template_rule_profile(scorer.tokenizer, scorer.model_name).offset
        results[name] = {
            "judge": judge,
            "bench_primary_judge": primary,
            **evaluate(sps, grads, labels, lengths, rule_offset),
        }
        (out / "evidence.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    stability = {}
    for name in args.sets:  # does the pick depend on which questions SPS sees?
        own = compute_sps(scorer.model, scorer.tokenizer, load_qa(name)[:STABILITY_QUESTIONS], data=name)
        rho, _ = spearmanr(np.ravel(own.band_sps), np.ravel(sps.band_sps))
        stability[name] = {"offset": own.profile.offset, "layers": own.profile.layers, "rho": float(rho)}
    (out / "stability.json").write_text(json.dumps(stability, indent=2) + "\n", encoding="utf-8")
    write_docs(sps, results, stability, time.perf_counter() - started, args.docs)
    tqdm.write((args.docs / "sps_evidence.md").read_text())


if __name__ == "__main__":
    main()
