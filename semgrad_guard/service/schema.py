"""The scorer service's request and response bodies, shared by the app and :class:`RemoteScorer`.

Only pydantic: a client needs neither FastAPI nor a model library to read them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from semgrad_guard.calibration import CalibrationBundle
from semgrad_guard.profiles import ModelProfile
from semgrad_guard.results import Score

__all__ = [
    "BatchRequest",
    "BatchResponse",
    "ErrorBody",
    "ErrorMode",
    "ErrorResponse",
    "Info",
    "Limits",
    "PairIn",
    "ScoreRequest",
    "ScoreResponse",
]

ErrorMode = Literal["raise", "mark"]
"""As :data:`semgrad_guard.scorer.ErrorMode`: raise a bad pair's typed error, or mark it invalid."""


class PairIn(BaseModel):
    """One (prompt, answer) pair; whether its values can be scored is the scorer's to judge, pair by pair."""

    model_config = ConfigDict(extra="forbid")

    prompt: Any = Field(description="The user turn as a string, or a list of {role, content} messages.")
    answer: Any = Field(description="The answer to score, a string.")


class ScoreRequest(PairIn):
    """``POST /v1/score``: one pair."""

    errors: ErrorMode = Field(
        default="raise", description="'raise': 422 for a bad pair; 'mark': invalid Score."
    )


class BatchRequest(BaseModel):
    """``POST /v1/score_batch``: many pairs, scored in order."""

    model_config = ConfigDict(extra="forbid")

    pairs: list[PairIn]
    errors: ErrorMode = Field(default="mark", description="'mark': bad pairs come back invalid in place.")


class ScoreResponse(BaseModel):
    """The Score of one pair."""

    score: Score


class BatchResponse(BaseModel):
    """One Score per pair, in the request's order."""

    scores: list[Score]


class ErrorBody(BaseModel):
    """What went wrong: ``code`` names the :class:`~semgrad_guard.SemGradError` subclass."""

    code: str
    type: str
    message: str


class ErrorResponse(BaseModel):
    """Every error answer of the service."""

    error: ErrorBody


class Limits(BaseModel):
    """The service's request limits."""

    max_body_bytes: int
    max_pairs: int
    timeout_s: float | None


class Info(BaseModel):
    """``GET /v1/info``: what the service scores with."""

    model: str
    version: str
    profile: ModelProfile
    calibration: CalibrationBundle | None
    context_length: int | None
    limits: Limits
