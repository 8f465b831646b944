"""One way to read a Score, shared by the evaluator, the event handler and the query-engine wrapper.

The decision rule is one of: ``max_risk`` on the calibrated risk; a raw ``threshold`` on a named
``threshold_field``; or neither, when the calibration's own acceptance threshold decides.
"""

from __future__ import annotations

import math

from semgrad_guard import NoThresholdError, RawField, Score


def trusted(
    score: Score, threshold: float | None, field: RawField | None, max_risk: float | None = None
) -> bool | None:
    """Whether to trust the answer; ``None`` when the score is invalid or nothing decides.

    ``max_risk``: ``risk <= max_risk`` (``None`` without calibration). ``threshold``: the raw ``field`` at
    most ``threshold``. Neither: the calibration's verdict (``None`` without calibration).
    """
    if not score.valid:
        return None
    if max_risk is not None:
        return None if score.risk is None else score.risk <= max_risk
    try:
        return not score.untrusted(threshold=threshold, field=field or "semgrad")
    except NoThresholdError:
        return None


def headline(score: Score, field: RawField | None, threshold: float | None = None) -> float | None:
    """The evaluation score: a confidence in [0, 1], higher = more trustworthy, always.

    With a raw ``threshold``: ``threshold / (threshold + value)`` of the raw ``field``, 0.5 exactly at the
    threshold (so ``passing`` is ``score >= 0.5``); a monotone rescaling, not a probability. Else the
    calibrated ``confidence`` (``1 - risk``). Uncalibrated with no threshold: ``1 / (1 + value)`` of the raw
    field (default ``semgrad``), again only an ordering.
    """
    if not score.valid:
        return None
    if threshold is None and score.confidence is not None:
        return score.confidence
    value = getattr(score, field or "semgrad")
    if value is None or math.isnan(value):
        return None
    scale = 1.0 if threshold is None else threshold
    if scale == 0.0:
        return 1.0 if value <= 0.0 else 0.0
    return scale / (scale + max(float(value), 0.0))


def describe(
    score: Score,
    field: RawField | None,
    threshold: float | None,
    prompt_source: str,
    max_risk: float | None = None,
) -> str:
    """One line saying risk, method, model, position and which prompt was scored."""
    if not score.valid:
        return f"not scored ({score.invalid_reason}); model={score.model}; prompt={prompt_source}"
    field = field or "semgrad"
    raw = getattr(score, field)
    if score.risk is not None:
        risk = f"risk={score.risk:.3f} (calibrated, confidence={score.confidence:.3f})"
    else:
        risk = "risk=n/a (no calibration)"
    if max_risk is not None:
        rule = "max_risk needs a calibration" if score.risk is None else f"max_risk {max_risk:.3g}"
    elif threshold is not None:
        rule = f"threshold {threshold:.3g}: {'above' if raw > threshold else 'not above'}"
    elif score.low_confidence is not None:
        rule = f"calibrated low_confidence={score.low_confidence}"
    else:
        rule = "no threshold"
    return (
        f"{risk}; {field}={raw:.4g} (raw, higher = less trustworthy); decision: {rule}; "
        f"model={score.model}; position={score.position} of {score.n_prompt_tokens} prompt tokens; "
        f"answer tokens={score.n_answer_tokens}; prompt={prompt_source}"
    )
