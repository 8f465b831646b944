"""Fitting calibration bundles from labelled scores (needs ``pip install 'semgrad-guard[bench]'``).

The labelled rows are split three ways with a fixed seed: a fit split (choose the map by 5-fold
cross-validated AUROC, then log-loss, and fit it), a calibration split (choose the threshold), and a test
split (measure coverage, error, ECE and Brier on answers neither step saw).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np

from semgrad_guard.calibration import CalibrationBundle, IsotonicMap, LogisticMap, Threshold, features
from semgrad_guard.evaluation.methods import SINGLE_PASS
from semgrad_guard.evaluation.metrics import auroc
from semgrad_guard.results import RawField

__all__ = [
    "COMBINED_FIELDS",
    "SINGLE_FIELDS",
    "choose_map",
    "expected_calibration_error",
    "fit_calibration",
    "out_of_fold_risk",
    "select_threshold",
    "split_indices",
]

SINGLE_FIELDS: tuple[RawField, ...] = tuple(SINGLE_PASS.values())  # type: ignore[arg-type]
"""The Score fields the benchmark writes per answer: each is a candidate on its own."""
COMBINED_FIELDS: tuple[RawField, ...] = SINGLE_FIELDS
"""Inputs of the combined model: every score of the pass. Answer length is left out on purpose: judges can
make length predictive for the wrong reason (see docs/benchmarks.md)."""
GRID = 50


def _grouped(rows: np.ndarray, groups: Sequence[str] | None) -> list[np.ndarray]:
    """``rows`` as blocks of one group each, in the order the groups first appear (a block a row without)."""
    if groups is None:
        return [rows[i : i + 1] for i in range(len(rows))]
    blocks: dict[str, list[int]] = {}
    for row in rows:
        blocks.setdefault(groups[row], []).append(int(row))
    return [np.array(block) for block in blocks.values()]


def split_indices(
    n: int, seed: int, groups: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit (50%), calibration (25%) and test (25%) row indices, shuffled with ``seed``.

    Rows that share a group (answers to paraphrases of one question) are shuffled as one block and land in
    the same split, so no split holds a rewrite of another's question; every split is then about, not
    exactly, its share. Without groups (or with every group distinct) the splits are those of one shuffle.
    """
    if groups is not None and len(groups) != n:
        raise ValueError(f"{len(groups)} groups for {n} rows: give one group per row")
    blocks = _grouped(np.arange(n), groups)
    blocks = [blocks[i] for i in np.random.default_rng(seed).permutation(len(blocks))]
    ends = np.cumsum([len(block) for block in blocks])
    cuts = np.searchsorted(ends, [n // 2, (3 * n) // 4], side="right")
    parts = np.split(np.arange(len(blocks)), cuts)
    fit, cal, test = ([int(i) for b in part for i in blocks[b]] for part in parts)
    return np.array(fit, dtype=int), np.array(cal, dtype=int), np.array(test, dtype=int)


def _folds(fit: np.ndarray, groups: Sequence[str] | None, k: int = 5) -> list[np.ndarray]:
    """``k`` cross-validation folds of the fit split, keeping each group's rows in one fold."""
    blocks = _grouped(fit, groups)
    parts = np.array_split(np.arange(len(blocks)), k)  # fewer groups than k: some folds stay empty
    return [np.concatenate([blocks[b] for b in part]) if part.size else fit[:0] for part in parts]


def _sklearn() -> Any:
    try:
        import sklearn.isotonic
        import sklearn.linear_model
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "fitting a calibration needs scikit-learn: pip install 'semgrad-guard[bench]'"
        ) from exc
    return sklearn


def _fit_map(kind: str, fields: list[RawField], x: np.ndarray, y: np.ndarray) -> IsotonicMap | LogisticMap:
    sklearn = _sklearn()
    if kind == "isotonic":
        model = sklearn.isotonic.IsotonicRegression(
            y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip"
        )
        model.fit(x[:, 0], y)
        return IsotonicMap(fields=fields, x=list(model.X_thresholds_), y=list(model.y_thresholds_))
    mean, scale = x.mean(0), x.std(0) + 1e-12
    if len(np.unique(y)) < 2:  # one class only: the best logistic model is the (clipped) base rate
        rate = min(max(float(y.mean()), 1e-3), 1 - 1e-3)
        intercept = math.log(rate / (1 - rate))
        return LogisticMap(
            fields=fields, mean=list(mean), scale=list(scale), coef=[0.0] * len(fields), intercept=intercept
        )
    model = sklearn.linear_model.LogisticRegression(C=1.0 if len(fields) > 1 else 1e4, max_iter=1000)
    model.fit((x - mean) / scale, y)
    return LogisticMap(
        fields=fields,
        mean=list(mean),
        scale=list(scale),
        coef=list(model.coef_[0]),
        intercept=float(model.intercept_[0]),
    )


def _predict(mapping: IsotonicMap | LogisticMap, x: np.ndarray) -> np.ndarray:
    return np.array([mapping.risk(row) for row in x])


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Mean |observed error - predicted risk| over equal-width risk bins, weighted by bin size."""
    index = np.minimum((p * bins).astype(int), bins - 1)
    return float(sum(abs(y[index == b].mean() - p[index == b].mean()) * (index == b).mean()
                     for b in range(bins) if (index == b).any()))  # fmt: skip


def _error_p_value(risk: np.ndarray, wrong: np.ndarray, lam: float, target_error: float) -> float:
    """Exact binomial p-value of "error among answers with risk <= lam exceeds target_error" (1 if none)."""
    from scipy.stats import binom

    accepted = risk <= lam
    n = int(accepted.sum())
    return float(binom.cdf(int(wrong[accepted].sum()), n, target_error)) if n else 1.0


def select_threshold(
    risk: np.ndarray, wrong: np.ndarray, order: np.ndarray, target_error: float, delta: float
) -> float | None:
    """Largest risk level whose acceptance set has error <= target_error, at confidence 1 - delta.

    Learn-then-test with fixed-sequence testing: each candidate level in ``order`` is the null hypothesis
    "error among answers with risk <= lambda exceeds target_error", tested with an exact binomial tail on the
    calibration split in the given order (which must not depend on these labels), stopping at the first
    that is not rejected. With probability at least 1 - delta every lambda it passes meets the target.
    """
    passed = []
    for lam in order:
        if _error_p_value(risk, wrong, float(lam), target_error) > delta:
            break
        passed.append(float(lam))
    return max(passed) if passed else None


def _error_threshold(
    fit: tuple[np.ndarray, np.ndarray], cal: tuple[np.ndarray, np.ndarray], targets: list[float], delta: float
) -> tuple[float | None, float | None]:
    """The smallest reachable target error and its threshold, or (None, None) where none is reachable.

    The candidate levels are quantiles of the fit split's risks, tested on the calibration split in the order
    of their p-values on the fit split (most promising first, ties by level): an order the calibration
    labels do not influence, which puts well-supported levels ahead of small acceptance sets that cannot pass.
    With several targets each is tested at delta / k, so the one kept still holds with probability at least
    1 - delta (union bound).
    """
    grid = np.unique(np.quantile(fit[0], np.linspace(0.02, 1, GRID)))
    for target in targets:
        promise = np.array([_error_p_value(*fit, float(lam), target) for lam in grid])
        order = grid[np.lexsort((grid, promise))]
        max_risk = select_threshold(*cal, order, target, delta / len(targets))
        if max_risk is not None:
            return target, max_risk
    return None, None


def choose_map(report: dict[str, dict[str, float]], single_cv_auroc: float) -> str:
    """The candidate map to ship: best held-out discrimination first, then calibration.

    The combination wins when its cross-validated AUROC beats ``single_cv_auroc``, the cross-validated AUROC
    of picking the best single field inside each fold (comparing with the best single field's own score
    instead would reward the field that won by chance on these folds). Otherwise the single field with the
    highest cross-validated AUROC wins; among that signal's maps (isotonic, logistic) the one with the lower
    cross-validated log-loss is taken.
    """
    signal_auroc: dict[str, float] = {}
    for name, row in report.items():
        signal = name.split(":", 1)[1]
        signal_auroc[signal] = max(signal_auroc.get(signal, -1.0), row["cv_auroc"])
    combined = signal_auroc.pop("combined", -1.0)
    best = "combined" if combined > single_cv_auroc else max(signal_auroc, key=lambda s: signal_auroc[s])
    maps = [name for name in report if name.split(":", 1)[1] == best]
    return min(maps, key=lambda name: report[name]["cv_log_loss"])


def _picked_single_cv_auroc(x: np.ndarray, y: np.ndarray, fit: np.ndarray, folds: list[np.ndarray]) -> float:
    """Mean held-out-fold AUROC of the single field (column of ``x``) that ranks best on the other folds."""
    held_out = []
    for fold in folds:
        train = np.setdiff1d(fit, fold)
        best = max(range(x.shape[1]), key=lambda j: np.nan_to_num(auroc(y[train], x[train, j])))
        held_out.append(auroc(y[fold], x[fold, best]))
    return float(np.nanmean(held_out))


def out_of_fold_risk(
    rows: list[dict[str, float]], wrong: list[int], *, seed: int = 0, folds: int = 5
) -> np.ndarray:
    """The combined model's risk for each row, from a model fitted on the other folds (honest AUROC)."""
    fields = list(COMBINED_FIELDS)
    x = np.array([features(row, fields) for row in rows])
    y = np.asarray(wrong, dtype=float)
    risk = np.zeros(len(rows))
    for fold in np.array_split(np.random.default_rng(seed).permutation(len(rows)), folds):
        train = np.setdiff1d(np.arange(len(rows)), fold)
        risk[fold] = _predict(_fit_map("logistic", fields, x[train], y[train]), x[fold])
    return risk


def _coverage_threshold(risk: np.ndarray, coverage: float) -> float:
    """Conformal quantile: accepting risk <= it keeps at least ``coverage`` of new answers on average."""
    rank = min(math.ceil((len(risk) + 1) * coverage), len(risk))
    return float(np.sort(risk)[rank - 1])


def fit_calibration(
    rows: list[dict[str, float]],
    wrong: list[int],
    *,
    model: str,
    labels: str,
    data: list[str],
    profile_name: str | None = None,
    target_error: float | Sequence[float] | None = 0.1,
    delta: float = 0.05,
    target_coverage: float | None = None,
    seed: int = 0,
    groups: Sequence[str] | None = None,
) -> CalibrationBundle:
    """Choose, fit and threshold a calibration on labelled scores (``wrong[i] = 1``: row i is incorrect).

    ``groups`` names each row's source question where several rows ask the same one (paraphrases): those
    rows stay together in one split and one cross-validation fold.
    """
    y_all = np.asarray(wrong, dtype=float)
    fit, cal, test = split_indices(len(rows), seed, groups)
    folds = _folds(fit, groups)

    candidates: dict[str, tuple[str, list[RawField]]] = {
        f"{kind}:{field}": (kind, [field]) for field in SINGLE_FIELDS for kind in ("isotonic", "logistic")
    }
    candidates["logistic:combined"] = ("logistic", list(COMBINED_FIELDS))
    x_of = {
        name: np.array([features(rows[i], f) for i in range(len(rows))])
        for name, (_, f) in candidates.items()
    }
    report: dict[str, dict[str, float]] = {}
    for name, (kind, fields) in candidates.items():
        x = x_of[name]
        losses: list[float] = []
        predicted = np.zeros(len(rows))
        for fold in folds:
            train = np.setdiff1d(fit, fold)
            mapping = _fit_map(kind, fields, x[train], y_all[train])
            if isinstance(mapping, LogisticMap) and len(fields) == 1 and mapping.coef[0] < 0:
                losses = []  # decreasing in the raw score: not a calibration of an uncertainty score
                break
            predicted[fold] = _predict(mapping, x[fold])
            losses.append(_log_loss(y_all[fold], predicted[fold]))
        if losses:  # AUROC per held-out fold, as cross_val_score does: pooling would mix each fold's map
            report[name] = {
                "cv_log_loss": float(np.mean(losses)),
                "cv_auroc": float(np.nanmean([auroc(y_all[fold], predicted[fold]) for fold in folds])),
            }
    singles = np.column_stack([x_of[f"isotonic:{field}"][:, 0] for field in SINGLE_FIELDS])
    single_cv_auroc = _picked_single_cv_auroc(singles, y_all, fit, folds)
    method = choose_map(report, single_cv_auroc)
    kind, fields = candidates[method]
    mapping = _fit_map(kind, fields, x_of[method][fit], y_all[fit])
    risk = _predict(mapping, x_of[method])

    threshold, reason = None, None
    if target_coverage is not None:
        reached: tuple[float | None, float | None] = (None, _coverage_threshold(risk[cal], target_coverage))
        rule: Literal["error-guarantee", "coverage"] = "coverage"
    else:
        assert target_error is not None
        targets = sorted([target_error] if isinstance(target_error, float | int) else target_error)
        reached = _error_threshold((risk[fit], y_all[fit]), (risk[cal], y_all[cal]), targets, delta)
        rule = "error-guarantee"
        if reached[1] is None:
            reason = (
                f"no risk level keeps the error among accepted answers at or below "
                f"{' or '.join(f'{t:g}' for t in targets)} with confidence {1 - delta:g} on the {len(cal)} "
                f"calibration answers (their error rate is {y_all[cal].mean():.2f}): decide with max_risk= "
                "or a raw threshold"
            )
        elif reached[1] >= risk[fit].max():  # the grid's top level: it accepts every answer seen
            smaller = "; smaller targets are out of reach" if reached[0] != targets[0] else ""
            reason = (
                f"the smallest error target reached, {reached[0]:g} with confidence {1 - delta:g}, holds "
                f"only by accepting every answer ({len(cal)} calibration answers, {y_all[cal].mean():.2f} of "
                f"them wrong), so its threshold would flag nothing{smaller}: decide with max_risk= or a raw "
                "threshold"
            )
            reached = (None, None)
    target, max_risk = reached
    if max_risk is not None:
        accepted = risk[test] <= max_risk
        threshold = Threshold(
            max_risk=max_risk,
            rule=rule,
            target_error=target,
            delta=delta if rule == "error-guarantee" else None,
            target_coverage=target_coverage,
            calibration_n=len(cal),
            test_coverage=float(accepted.mean()),
            test_error=float(y_all[test][accepted].mean()) if accepted.any() else None,
            test_n=len(test),
        )
    # Each same-pass signal alone on the test answers: what the chosen risk's auroc_after is compared with.
    single_test = {
        f"auroc_{field}": auroc(y_all[test], singles[test, j]) for j, field in enumerate(SINGLE_FIELDS)
    }
    raw = np.array([math.log(rows[i]["semgrad"] + 1e-12) for i in range(len(rows))])
    low, high = raw[fit].min(), raw[fit].max()
    before = np.clip((raw - low) / (high - low + 1e-12), 0, 1)
    quality = {
        "test_n": float(len(test)),
        "test_error_rate": float(y_all[test].mean()),
        "ece_before": expected_calibration_error(y_all[test], before[test]),
        "brier_before": float(((before[test] - y_all[test]) ** 2).mean()),
        "ece_after": expected_calibration_error(y_all[test], risk[test]),
        "brier_after": float(((risk[test] - y_all[test]) ** 2).mean()),
        "auroc_after": auroc(y_all[test], risk[test]),
    } | single_test
    return CalibrationBundle(
        model=model,
        profile_name=profile_name,
        method=method,
        map=mapping,
        threshold=threshold,
        no_threshold_reason=reason,
        labels=labels,
        data=data,
        created=datetime.now(timezone.utc),
        candidates=report,
        single_cv_auroc=single_cv_auroc,
        quality=quality,
    )
