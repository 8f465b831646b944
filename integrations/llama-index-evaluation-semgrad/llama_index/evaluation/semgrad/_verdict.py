"""One way to read a Score, shared by the evaluator, the event handler and the query-engine wrapper."""

from __future__ import annotations

from semgrad_guard import NoThresholdError, RawField, Score


def trusted(score: Score, threshold: float | None, field: RawField) -> bool | None:
    """``not score.untrusted(threshold, field)``; ``None`` when the score is invalid or nothing decides.

    Nothing decides when there is neither a raw ``threshold`` nor a calibration on the score.
    """
    if not score.valid:
        return None
    try:
        return not score.untrusted(threshold=threshold, field=field)
    except NoThresholdError:
        return None


def headline(score: Score, field: RawField) -> float | None:
    """The evaluation score: calibrated confidence, else the raw ``field`` (higher = worse)."""
    if not score.valid:
        return None
    if score.confidence is not None:
        return score.confidence
    value = getattr(score, field)
    return None if value is None else float(value)


def describe(score: Score, field: RawField, threshold: float | None, prompt_source: str) -> str:
    """One line saying risk, method, model, position and which prompt was scored."""
    if not score.valid:
        return f"not scored ({score.invalid_reason}); model={score.model}; prompt={prompt_source}"
    raw = getattr(score, field)
    if score.risk is not None:
        risk = f"risk={score.risk:.3f} (calibrated, confidence={score.confidence:.3f})"
    else:
        risk = "risk=n/a (no calibration)"
    if threshold is not None:
        rule = f"threshold {threshold:.3g}: {'above' if raw > threshold else 'not above'}"
    elif score.low_confidence is not None:
        rule = f"calibrated low_confidence={score.low_confidence}"
    else:
        rule = "no threshold"
    return (
        f"{risk}; {field}={raw:.4g} (raw, higher = less trustworthy; {rule}); "
        f"model={score.model}; position={score.position} of {score.n_prompt_tokens} prompt tokens; "
        f"answer tokens={score.n_answer_tokens}; prompt={prompt_source}"
    )
