"""Calibration: raw scores -> the probability an answer is wrong, and thresholds with a stated guarantee.

A :class:`CalibrationBundle` holds a fitted map (isotonic or logistic on one Score field, or a small
regularised logistic model over several fields on a log scale), the acceptance threshold on the calibrated
risk with the guarantee it was selected under, the data and model it was fitted on, and its measured
quality. Applying a bundle needs only numpy; fitting (:mod:`semgrad_guard.evaluation.fitting`) needs
scikit-learn.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from semgrad_guard.results import RawField, Score

__all__ = [
    "DEFAULT_CALIBRATION",
    "CalibrationBundle",
    "CalibrationMap",
    "IsotonicMap",
    "LogisticMap",
    "Threshold",
    "features",
    "load_calibration",
    "shipped_calibration",
]

logger = logging.getLogger(__name__)

DEFAULT_CALIBRATION = Path(__file__).parent / "calibrations" / "smollm2-135m-instruct.json"
"""The shipped calibration of the embedded model, fitted on the dev questions (docs/calibration.md)."""

_EPS = 1e-12
_LOG_FIELDS = {"semgrad", "hybridgrad", "param_grad", "exgrad", "semgrad_para"}


def features(values: Mapping[str, float], fields: list[RawField]) -> np.ndarray:
    """Model inputs for ``fields``: log of the gradient norms (they span decades), others as they are."""
    return np.array([math.log(values[f] + _EPS) if f in _LOG_FIELDS else values[f] for f in fields])


class IsotonicMap(BaseModel):
    """A monotone non-decreasing step-wise linear map from one raw field to risk."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["isotonic"] = "isotonic"
    fields: list[RawField] = Field(min_length=1, max_length=1)
    x: list[float]
    y: list[float]

    def risk(self, row: np.ndarray) -> float:
        """Interpolate between the fitted knots, clipped at both ends."""
        return float(np.interp(row[0], self.x, self.y))


class LogisticMap(BaseModel):
    """sigmoid(intercept + coef . standardised features): Platt scaling for one field, or the combination."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["logistic"] = "logistic"
    fields: list[RawField] = Field(min_length=1)
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float

    def risk(self, row: np.ndarray) -> float:
        """The logistic model's probability of an incorrect answer."""
        z = self.intercept + float(np.dot(self.coef, (row - np.array(self.mean)) / np.array(self.scale)))
        return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))


CalibrationMap = Annotated[IsotonicMap | LogisticMap, Field(discriminator="kind")]


class Threshold(BaseModel):
    """Accept an answer when its risk is at most ``max_risk``; how that was chosen and what it achieved."""

    model_config = ConfigDict(frozen=True)

    max_risk: float
    rule: Literal["error-guarantee", "coverage"]
    target_error: float | None = Field(default=None, description="Error among accepted, at most (rule 1).")
    delta: float | None = Field(default=None, description="Allowed probability that the guarantee fails.")
    target_coverage: float | None = Field(default=None, description="Fraction accepted, at least (rule 2).")
    calibration_n: int
    test_coverage: float | None = Field(default=None, description="Fraction accepted on the test split.")
    test_error: float | None = Field(default=None, description="Error among accepted on the test split.")
    test_n: int = 0


class CalibrationBundle(BaseModel):
    """Everything needed to turn a Score into a risk and a decision, with where it came from."""

    model_config = ConfigDict(frozen=True)

    format: Literal[1] = 1
    model: str = Field(description="Scoring model the bundle was fitted for.")
    profile_name: str | None = None
    method: str = Field(description="Chosen map, e.g. 'logistic:combined' or 'isotonic:semgrad'.")
    map: CalibrationMap
    threshold: Threshold | None = None
    no_threshold_reason: str | None = Field(
        default=None, description="Why no threshold was chosen (e.g. the error target is out of reach)."
    )
    labels: str = Field(description="Where the correctness labels came from (judge, audit).")
    data: list[str] = Field(description="Data sets the bundle was fitted on.")
    created: datetime
    candidates: dict[str, dict[str, float]] = Field(default_factory=dict, description="Held-out fit of each.")
    single_cv_auroc: float | None = Field(
        default=None,
        description="Cross-validated AUROC of picking the best single field inside each fold: the bar the "
        "combination had to beat (None in bundles made before it was recorded).",
    )
    quality: dict[str, float] = Field(
        default_factory=dict, description="ECE, Brier, AUROC on the test split."
    )

    def risk(self, score: Score) -> float:
        """Estimated probability that the scored answer is wrong."""
        values: dict[str, float] = {f: getattr(score, f) for f in self.map.fields}
        return min(max(self.map.risk(features(values, self.map.fields)), 0.0), 1.0)

    def apply(self, score: Score) -> Score:
        """The score with ``risk``, ``confidence`` and ``low_confidence`` filled; invalid ones unchanged."""
        if not score.valid:
            return score
        risk = self.risk(score)
        low = None if self.threshold is None else risk > self.threshold.max_risk
        return score.model_copy(update={"risk": risk, "confidence": 1.0 - risk, "low_confidence": low})

    def save(self, path: str | Path) -> None:
        """Write the bundle as JSON."""
        Path(path).write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> CalibrationBundle:
        """Read a bundle written by :meth:`save`."""
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))


def shipped_calibration(model_name: str) -> CalibrationBundle | None:
    """The bundle shipped for this scoring model (matched by the name scores report), if there is one."""
    for path in sorted(DEFAULT_CALIBRATION.parent.glob("*.json")):
        bundle = CalibrationBundle.load(path)
        if bundle.model == model_name:
            return bundle
    return None


def load_calibration(source: CalibrationBundle | str | Path, model_name: str) -> CalibrationBundle | None:
    """A bundle from an object, a JSON path, ``"default"`` (the embedded model's), or ``"auto"``.

    ``"auto"`` is the bundle shipped for this model, or ``None`` when none was shipped. Warns when the bundle
    was fitted for another model: risks do not transfer between models.
    """
    if str(source) == "auto":
        return shipped_calibration(model_name)
    if isinstance(source, CalibrationBundle):
        bundle = source
    else:
        bundle = CalibrationBundle.load(DEFAULT_CALIBRATION if str(source) == "default" else source)
    if bundle.model != model_name:
        logger.warning(
            "calibration was fitted for %s but the scorer runs %s: its risks do not transfer between models",
            bundle.model,
            model_name,
        )
    return bundle
