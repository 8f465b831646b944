"""Error-detection metrics with incorrect = positive and higher score = more uncertain.

Written with numpy only (the tests check them against scikit-learn): AUROC, AUPRC (average precision),
PRR (prediction-rejection ratio as LM-Polygraph defines it) and AURC (area under the risk-coverage curve),
with bootstrap intervals for AUROC.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["auprc", "aurc", "auroc", "bootstrap_auroc", "prr", "risk_coverage"]


def _arrays(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y, s = np.asarray(labels, dtype=float), np.asarray(scores, dtype=float)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError("labels and scores must be 1-D and the same length")
    return y, s


def auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Probability that a random incorrect answer scores above a random correct one (ties count half)."""
    y, s = _arrays(labels, scores)
    positives, negatives = int(y.sum()), int(len(y) - y.sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_scores = s[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(first, counts, strict=True):
        ranks[order[start : start + count]] = start + (count + 1) / 2
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def auprc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Average precision of ranking incorrect answers first (scikit-learn's step-wise definition)."""
    y, s = _arrays(labels, scores)
    if y.sum() == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    true_pos = np.cumsum(y)[distinct]
    precision = true_pos / (distinct + 1)
    recall = true_pos / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def risk_coverage(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Coverage k/n and the error rate among the k most confident answers, for k = 1..n."""
    y, s = _arrays(labels, scores)
    kept = y[np.argsort(s, kind="mergesort")]
    count = np.arange(1, len(y) + 1)
    return count / len(y), np.cumsum(kept) / count


def aurc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the risk-coverage curve (mean error over coverages; lower is better)."""
    return float(risk_coverage(labels, scores)[1].mean())


def _rejection_area(quality: np.ndarray, uncertainty: np.ndarray) -> float:
    """Mean quality of the kept answers, averaged over rejecting 0 .. n-1 of the most uncertain."""
    kept = quality[np.argsort(uncertainty, kind="mergesort")]
    count = np.arange(1, len(kept) + 1)
    return float((np.cumsum(kept) / count).mean())


def prr(labels: ArrayLike, scores: ArrayLike) -> float:
    """Prediction-rejection ratio: (score's area - random) / (oracle - random); 1 is perfect, 0 random."""
    y, s = _arrays(labels, scores)
    quality = 1.0 - y
    random = float(quality.mean())
    oracle = _rejection_area(quality, y)
    if oracle == random:
        return float("nan")
    return (_rejection_area(quality, s) - random) / (oracle - random)


def bootstrap_auroc(
    labels: ArrayLike, scores: ArrayLike, *, rounds: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """A 95% percentile-bootstrap interval for AUROC (resampling questions, fixed seed)."""
    y, s = _arrays(labels, scores)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(rounds):
        pick = rng.integers(0, len(y), len(y))
        value = auroc(y[pick], s[pick])
        if not np.isnan(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)
