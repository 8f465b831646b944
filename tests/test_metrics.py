"""The error-detection metrics pinned to hand-checked values, and the bootstrap interval's behaviour."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from semgrad_guard.evaluation import metrics

# scikit-learn's own documentation example: positives score 0.35 and 0.8, negatives 0.1 and 0.4.
Y = [0, 0, 1, 1]
S = [0.1, 0.4, 0.35, 0.8]


def test_auroc_counts_pairs_and_ties_half() -> None:
    assert metrics.auroc(Y, S) == pytest.approx(3 / 4)  # 0.35 < 0.4 is the one pair ranked wrong
    # positives {0.5, 0.9}, negatives {0.5, 0.2}: the tied pair counts 1/2, the other three 1 each
    assert metrics.auroc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(3.5 / 4)
    assert metrics.auroc([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3]) == pytest.approx(0.5)


def test_auroc_perfect_and_reversed_scores() -> None:
    y = [0, 0, 0, 1, 1]
    assert metrics.auroc(y, [0.1, 0.2, 0.3, 0.7, 0.9]) == 1.0
    assert metrics.auroc(y, [0.9, 0.7, 0.3, 0.2, 0.1]) == 0.0


def test_auprc_step_wise_average_precision() -> None:
    # ranked 0.8 (+), 0.4 (-), 0.35 (+): recall 1/2 at precision 1, then 1 at precision 2/3
    assert metrics.auprc(Y, S) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # a tie is one threshold: {0.5, 0.5} gives precision 1/2 at recall 1/2, then 2/3 at recall 1
    assert metrics.auprc([1, 0, 1], [0.5, 0.5, 0.2]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert metrics.auprc([0, 1, 1], [0.1, 0.2, 0.3]) == 1.0
    assert metrics.auprc([1, 1, 1], [0.1, 0.2, 0.3]) == 1.0  # every answer wrong: precision is 1


def test_prr_and_aurc_on_known_rankings() -> None:
    y = [1, 0, 1, 0, 0]
    oracle, reversed_ = [0.9, 0.1, 0.8, 0.2, 0.3], [0.1, 0.9, 0.2, 0.8, 0.7]
    assert metrics.prr(y, oracle) == pytest.approx(1.0)
    # kept quality by rising uncertainty 0,0,1,1,1: area (0 + 0 + 1/3 + 1/2 + 3/5) / 5 = 43/150;
    # random 3/5, oracle (1 + 1 + 1 + 3/4 + 3/5) / 5 = 87/100
    assert metrics.prr(y, reversed_) == pytest.approx((43 / 150 - 3 / 5) / (87 / 100 - 3 / 5))
    # error among the k most confident: 0, 0, 0, 1/4, 2/5 and 1, 1, 2/3, 2/4, 2/5
    assert metrics.aurc(y, oracle) == pytest.approx((1 / 4 + 2 / 5) / 5)
    assert metrics.aurc(y, reversed_) == pytest.approx((1 + 1 + 2 / 3 + 2 / 4 + 2 / 5) / 5)
    coverage, risk = metrics.risk_coverage(y, oracle)
    np.testing.assert_allclose(coverage, [0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(risk, [0, 0, 0, 1 / 4, 2 / 5])


@pytest.mark.parametrize("y", [[0, 0, 0], [1, 1, 1]])
def test_one_class_gives_nan_without_warnings(y: list[int]) -> None:
    s = [0.1, 0.2, 0.3]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(metrics.auroc(y, s))
        assert np.isnan(metrics.prr(y, s))
        assert all(np.isnan(metrics.bootstrap_auroc(y, s)))
        assert all(np.isnan(metrics.bootstrap_auroc_difference(y, s, s)))
        if sum(y) == 0:
            assert np.isnan(metrics.auprc(y, s))  # scikit-learn alone would say 0.0


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="same length"):
        metrics.auroc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"0 \(correct\) or 1"):
        metrics.auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError):
        metrics.auroc([0, 1, 1], [0.1, float("nan"), 0.2])  # scikit-learn refuses NaN scores


def _sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.round(rng.normal(size=n) + 0.8 * y, 1)  # rounded: ties happen; AUROC about 0.71


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_n() -> None:
    widths = []
    for n in (100, 400, 1600):
        y, s = _sample(n, n)
        low, high = metrics.bootstrap_auroc(y, s, rounds=500)
        assert low < metrics.auroc(y, s) < high
        # about +-1.96 standard errors; Hanley & McNeil's approximation of the AUROC's standard error
        a, pos, neg = metrics.auroc(y, s), y.sum(), n - y.sum()
        q1, q2 = a / (2 - a), 2 * a**2 / (1 + a)
        se = np.sqrt((a * (1 - a) + (pos - 1) * (q1 - a**2) + (neg - 1) * (q2 - a**2)) / (pos * neg))
        assert high - low == pytest.approx(2 * 1.96 * se, rel=0.25)
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] == pytest.approx(4, rel=0.3)  # width ~ 1/sqrt(n)


def test_bootstrap_is_seeded_and_paired() -> None:
    y, s = _sample(200, 0)
    assert metrics.bootstrap_auroc(y, s, rounds=200) == metrics.bootstrap_auroc(y, s, rounds=200)
    assert metrics.bootstrap_auroc(y, s, rounds=200, seed=1) != metrics.bootstrap_auroc(y, s, rounds=200)
    # resampled together, a perfectly separating score separates every resample; resampled apart, it would not
    perfect = y + 0.5 * np.random.default_rng(1).random(len(y))
    assert metrics.bootstrap_auroc(y, perfect, rounds=200) == pytest.approx((1.0, 1.0))
    assert metrics.bootstrap_auroc_difference(y, s, s, rounds=200) == pytest.approx((0.0, 0.0))
    low, high = metrics.bootstrap_auroc_difference(y, perfect, s, rounds=200)
    assert low < 1 - metrics.auroc(y, s) < high


def test_bootstrap_leaves_out_resamples_with_one_class() -> None:
    # One wrong answer in six: about a third of the resamples miss it and have no AUROC.
    y, s = [1, 0, 0, 0, 0, 0], [0.9, 0.1, 0.2, 0.3, 0.4, 0.5]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert metrics.bootstrap_auroc(y, s, rounds=300) == pytest.approx((1.0, 1.0))
        low, high = metrics.bootstrap_auroc([1, 0, 0, 0, 1, 0], [0.9, 0.1, 0.95, 0.3, 0.4, 0.5], rounds=300)
    assert 0 <= low < metrics.auroc([1, 0, 0, 0, 1, 0], [0.9, 0.1, 0.95, 0.3, 0.4, 0.5]) <= high <= 1


def test_summary_drops_non_finite_scores() -> None:
    out = metrics.summary([0, 0, 1, 1, 1], [0.1, 0.4, 0.35, 0.8, float("nan")])
    assert out["n"] == 4
    assert out["auroc"] == pytest.approx(3 / 4)
    assert out["auprc"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert set(out) == {"auroc", "auroc_ci", "auprc", "prr", "aurc", "n"}
    low, high = out["auroc_ci"]
    assert 0 <= low <= high <= 1
