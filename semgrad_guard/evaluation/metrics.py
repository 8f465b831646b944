"""Error-detection metrics with incorrect = positive and higher score = more uncertain.

AUROC and AUPRC are scikit-learn's (:func:`~sklearn.metrics.roc_auc_score`,
:func:`~sklearn.metrics.average_precision_score`); their intervals are :func:`scipy.stats.bootstrap`'s.
PRR (prediction-rejection ratio as LM-Polygraph defines it) and AURC (area under the risk-coverage curve)
are written here: neither scikit-learn nor SciPy has them, and the libraries that do (LM-Polygraph,
torch-uncertainty) would bring a model framework along for ten lines of numpy.

Labels are 0 (correct) and 1 (incorrect); scores must be finite (scikit-learn raises on NaN; the bench drops
non-finite scores first, see :func:`summary`). A metric that needs both classes returns NaN, without a
warning, when the labels hold only one.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

try:
    from scipy import stats
    from sklearn.metrics import average_precision_score, roc_auc_score
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "the evaluation metrics need scikit-learn and SciPy: pip install 'semgrad-guard[bench]'"
    ) from exc

__all__ = [
    "auprc",
    "aurc",
    "auroc",
    "bootstrap_auroc",
    "bootstrap_auroc_difference",
    "prr",
    "risk_coverage",
    "summary",
]

CONFIDENCE = 0.95


def _arrays(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y, s = np.asarray(labels, dtype=float), np.asarray(scores, dtype=float)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError("labels and scores must be 1-D and the same length")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 (correct) or 1 (incorrect)")
    return y, s


def _both_classes(y: np.ndarray) -> bool:
    return bool(0 < y.sum() < len(y))


def auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Probability that a random incorrect answer scores above a random correct one (ties count half).

    scikit-learn's ``roc_auc_score``; NaN when the labels hold one class only.
    """
    y, s = _arrays(labels, scores)
    if not _both_classes(y):
        return float("nan")
    return float(roc_auc_score(y, s))


def auprc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Average precision of ranking incorrect answers first (scikit-learn's ``average_precision_score``).

    NaN when no answer is incorrect (scikit-learn would return 0 with a warning); 1 when every one is.
    """
    y, s = _arrays(labels, scores)
    if y.sum() == 0:
        return float("nan")
    return float(average_precision_score(y, s))


def risk_coverage(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Coverage k/n and the error rate among the k most confident answers, for k = 1..n.

    Hand-written (no library has it); ties in the score keep the input order.
    """
    y, s = _arrays(labels, scores)
    kept = y[np.argsort(s, kind="mergesort")]
    count = np.arange(1, len(y) + 1)
    return count / len(y), np.cumsum(kept) / count


def aurc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the risk-coverage curve (mean error over coverages; lower is better). Hand-written."""
    return float(risk_coverage(labels, scores)[1].mean())


def _rejection_area(quality: np.ndarray, uncertainty: np.ndarray) -> float:
    """Mean quality of the kept answers, averaged over rejecting 0 .. n-1 of the most uncertain."""
    kept = quality[np.argsort(uncertainty, kind="mergesort")]
    count = np.arange(1, len(kept) + 1)
    return float((np.cumsum(kept) / count).mean())


def prr(labels: ArrayLike, scores: ArrayLike) -> float:
    """Prediction-rejection ratio: (score's area - random) / (oracle - random); 1 is perfect, 0 random.

    Hand-written after LM-Polygraph's definition (no general-purpose library has it); NaN with one class.
    """
    y, s = _arrays(labels, scores)
    quality = 1.0 - y
    random = float(quality.mean())
    oracle = _rejection_area(quality, y)
    if oracle == random:
        return float("nan")
    return (_rejection_area(quality, s) - random) / (oracle - random)


def _paired_interval(
    statistic: Callable[..., float], arrays: tuple[np.ndarray, ...], rounds: int, seed: int
) -> tuple[float, float]:
    """95% percentile interval of ``statistic`` from ``scipy.stats.bootstrap``, resampling rows together.

    The statistic is NaN on a resample that holds one class only; such resamples are left out (the interval
    is conditional on both classes appearing, as in any AUROC bootstrap), and NaN, NaN when none is left.
    """

    def batched(*resampled: np.ndarray, axis: int = -1) -> np.ndarray:
        rows = [np.moveaxis(a, axis, -1) for a in resampled]
        flat = [r.reshape(-1, r.shape[-1]) for r in rows]
        return np.array([statistic(*one) for one in zip(*flat, strict=True)]).reshape(rows[0].shape[:-1])

    options: dict[str, Any] = {
        "paired": True,
        "vectorized": True,
        "confidence_level": CONFIDENCE,
        "method": "percentile",
        # `rng` only exists from SciPy 1.15; a Generator passed as `random_state` means the same there.
        "random_state": np.random.default_rng(seed),
    }
    with warnings.catch_warnings():  # NaN resamples make SciPy's interval NaN and warn: handled below
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(arrays, batched, n_resamples=rounds, **options)
    values = np.asarray(result.bootstrap_distribution)
    finite = np.isfinite(values)
    if not finite.any():
        return float("nan"), float("nan")
    if not finite.all():  # the same percentile interval over the resamples that hold both classes
        kept = dataclasses.replace(result, bootstrap_distribution=values[finite])
        result = stats.bootstrap(arrays, batched, n_resamples=0, bootstrap_result=kept, **options)
    low, high = result.confidence_interval
    return float(low), float(high)


def _auroc_or_nan(y: np.ndarray, s: np.ndarray) -> float:
    return float(roc_auc_score(y, s)) if _both_classes(y) else float("nan")


def bootstrap_auroc(
    labels: ArrayLike, scores: ArrayLike, *, rounds: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """A 95% percentile-bootstrap interval for AUROC: ``scipy.stats.bootstrap`` over (label, score) pairs.

    Questions are resampled with their labels (``paired=True``), ``rounds`` times with a fixed seed. The
    percentile method, not SciPy's default BCa: at the benchmark's sizes (360-500 answers, AUROC 0.45-0.65)
    AUROC's bootstrap distribution is nearly symmetric and BCa moves the bounds by at most 0.005; BCa's
    jackknife costs n more AUROCs and is undefined when a class has a single answer, and its
    bias correction gives NaN once resamples without both classes are counted. NaN, NaN when the labels
    hold one class only.
    """
    y, s = _arrays(labels, scores)
    if not _both_classes(y):
        return float("nan"), float("nan")
    return _paired_interval(_auroc_or_nan, (y, s), rounds, seed)


def bootstrap_auroc_difference(
    labels: ArrayLike, first: ArrayLike, second: ArrayLike, *, rounds: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """A 95% paired percentile-bootstrap interval for AUROC(first) - AUROC(second) on the same answers.

    As :func:`bootstrap_auroc`, resampling (label, first, second) triples together.
    """
    y, a = _arrays(labels, first)
    _, b = _arrays(labels, second)
    if not _both_classes(y):
        return float("nan"), float("nan")

    def difference(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
        return _auroc_or_nan(y, a) - _auroc_or_nan(y, b)

    return _paired_interval(difference, (y, a, b), rounds, seed)


def summary(labels: ArrayLike, scores: ArrayLike) -> dict[str, Any]:
    """Every metric the bench reports for one score column, on the answers whose score is finite."""
    y, s = np.asarray(labels, dtype=float), np.asarray(scores, dtype=float)
    keep = np.isfinite(s)
    y, s = y[keep], s[keep]
    low, high = bootstrap_auroc(y, s)
    return {
        "auroc": auroc(y, s),
        "auroc_ci": [low, high],
        "auprc": auprc(y, s),
        "prr": prr(y, s),
        "aurc": aurc(y, s),
        "n": len(y),
    }
