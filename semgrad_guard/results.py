"""What scoring returns: :class:`Score`, and :class:`ScoredGeneration` for self-generated answers."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from semgrad_guard.errors import InvalidInputError, NoThresholdError
from semgrad_guard.profiles import ModelProfile

if TYPE_CHECKING:
    import torch

    from semgrad_guard.pairs import EncodedPair
    from semgrad_guard.statistics import PassStatistics

__all__ = ["RawField", "Score", "ScoredGeneration", "check_decision"]

RawField = Literal[
    "semgrad",
    "hybridgrad",
    "param_grad",
    "exgrad",
    "mean_entropy",
    "nll",
    "ln_nll",
    "max_token_nll",
    "semgrad_para",
]
"""The raw scores a threshold can be set on; higher is more uncertain for each (``semgrad_para`` only where
the profile has paraphrase directions)."""

_GRADIENT_FIELDS = ("semgrad", "hybridgrad", "param_grad", "exgrad", "semgrad_para")
"""Raw gradient norms: about 1e-5 to 1e-3 on the embedded model; a threshold from 0.01 to 1 is a risk."""
_RISK_LIKE = (0.01, 1.0)


def check_decision(
    threshold: float | None, threshold_field: RawField | None, max_risk: float | None, owner: str
) -> None:
    """Refuse a decision rule (``max_risk`` or a raw ``threshold``) that cannot be right.

    Every adapter checks its arguments here; messages name ``owner``'s own arguments.
    """
    if max_risk is not None:
        if threshold is not None:
            raise ValueError(f"{owner} takes max_risk= (calibrated) or threshold= (raw), not both")
        if not 0.0 <= max_risk <= 1.0:
            raise ValueError(f"max_risk={max_risk} is not a probability: give a value from 0 to 1")
        return
    if threshold is None:
        if threshold_field is not None:
            raise ValueError(f"threshold_field={threshold_field!r} needs threshold= (the raw value)")
        return
    if threshold_field is None:
        raise ValueError(
            f"threshold={threshold} is a raw value on one Score field: name it, e.g. "
            f"{owner}(..., threshold={threshold}, threshold_field='semgrad'); for a probability that the "
            f"answer is wrong use {owner}(..., max_risk={threshold}) (needs a calibrated scorer)"
        )
    if not threshold >= 0.0:  # negative (flags every answer) or NaN (flags none)
        raise ValueError(f"threshold={threshold} on {threshold_field!r} cannot be right: raw scores are >= 0")
    low, high = _RISK_LIKE
    if threshold_field in _GRADIENT_FIELDS and low <= threshold <= high:
        raise ValueError(
            f"threshold={threshold} on threshold_field={threshold_field!r} (a raw gradient norm, about "
            f"1e-5 to 1e-3) would flag no answer: it looks like a risk. Use {owner}(..., "
            f"max_risk={threshold}) for the calibrated probability of being wrong, or a raw threshold on "
            f"this field's own scale (e.g. threshold=4.4e-5, threshold_field={threshold_field!r})"
        )


class Score(BaseModel):
    """Uncertainty scores of one (prompt, answer) pair; higher = more likely wrong. JSON-serialisable.

    A pair that could not be scored (when the caller asked for ``errors="mark"``) has ``valid=False``, an
    ``invalid_reason`` and no numbers.
    """

    model_config = ConfigDict(frozen=True)

    model: str = Field(description="Name of the scoring model.")
    valid: bool = True
    invalid_reason: str | None = Field(default=None, description="'<code>: <message>' when not valid.")
    semgrad: float | None = Field(
        default=None, description="Mean |dL/dh| at the profile position and layers."
    )
    hybridgrad: float | None = Field(
        default=None, description="exp(-H) * param_grad + (1 - exp(-H)) * semgrad."
    )
    param_grad: float | None = Field(default=None, description="Mean |dL/dW_out|, output path only.")
    exgrad: float | None = Field(default=None, description="Mean |dCE/dW_out| under plain cross-entropy.")
    mean_entropy: float | None = Field(
        default=None, description="Mean next-token entropy of the answer, nats."
    )
    nll: float | None = Field(default=None, description="Sum of answer-token NLLs (PE).")
    ln_nll: float | None = Field(default=None, description="Mean answer-token NLL (LN-PE).")
    max_token_nll: float | None = Field(default=None, description="Largest answer-token NLL.")
    semgrad_para: float | None = Field(
        default=None,
        description="Mean over layers of the norm of dL/dh projected onto the profile's paraphrase "
        "directions; None when the profile has none.",
    )
    n_answer_tokens: int | None = Field(
        default=None, description="Answer tokens scored, end-of-turn included."
    )
    n_prompt_tokens: int | None = Field(default=None, description="Prompt tokens after the chat template.")
    position: int | None = Field(default=None, description="Absolute prompt position of the gradient.")
    profile: ModelProfile | None = Field(default=None, description="Offset and layers used.")
    seconds: float = Field(
        default=0.0, description="Wall time of the pass that produced it (shared by a batch)."
    )
    reused: bool = Field(
        default=False, description="Taken from an earlier call's pass over the same token ids, not rerun."
    )
    risk: float | None = Field(default=None, description="Calibrated probability the answer is wrong.")
    confidence: float | None = Field(default=None, description="1 - risk.")
    low_confidence: bool | None = Field(default=None, description="risk above the calibration's threshold.")

    @classmethod
    def from_statistics(
        cls,
        stats: PassStatistics,
        pair: EncodedPair,
        *,
        model: str,
        profile: ModelProfile,
        seconds: float,
        directions: torch.Tensor | None = None,
    ) -> Score:
        """Build a Score from one pass's statistics (``semgrad_para`` when ``directions`` are given)."""
        from semgrad_guard import estimators  # torch: imported with the first score, not the package

        return cls(
            model=model,
            semgrad=estimators.semgrad(stats),
            hybridgrad=estimators.hybridgrad(stats),
            param_grad=estimators.param_grad(stats),
            exgrad=estimators.exgrad(stats),
            mean_entropy=estimators.mean_entropy(stats),
            nll=estimators.nll(stats),
            ln_nll=estimators.ln_nll(stats),
            max_token_nll=estimators.max_token_nll(stats),
            semgrad_para=None if directions is None else estimators.semgrad_para(stats, directions),
            n_answer_tokens=len(pair.answer_ids),
            n_prompt_tokens=len(pair.prompt_ids),
            position=pair.position,
            profile=profile,
            seconds=seconds,
        )

    @classmethod
    def invalid(cls, reason: str, *, model: str, seconds: float = 0.0) -> Score:
        """A Score that records why the pair could not be scored."""
        return cls(model=model, valid=False, invalid_reason=reason, seconds=seconds)

    def untrusted(self, threshold: float | None = None, field: RawField = "semgrad") -> bool:
        """Whether the answer should not be trusted.

        With ``threshold``: the raw ``field`` is above it. Without: the calibration's ``low_confidence``;
        a score without calibration then raises :class:`NoThresholdError`, since raw values mean nothing
        on their own. An invalid score raises :class:`InvalidInputError` (callers apply their own policy).
        """
        if not self.valid:
            raise InvalidInputError(f"this pair was not scored: {self.invalid_reason}")
        if threshold is not None:
            value = getattr(self, field)
            if value is None:
                raise ValueError(
                    f"this score has no {field!r} (semgrad_para needs a profile with directions)"
                )
            return bool(value > threshold)
        if self.low_confidence is None:
            raise NoThresholdError(
                "there is no threshold: no calibration is loaded, or its bundle has none (its "
                "no_threshold_reason says why); pass a raw threshold on a Score field (e.g. "
                "untrusted(threshold=4.4e-5, field='semgrad')), decide on score.risk, or load a calibration"
            )
        return self.low_confidence

    def is_finite(self) -> bool:
        """Whether every numeric score is a finite number."""
        values = (self.semgrad, self.hybridgrad, self.param_grad, self.mean_entropy, self.nll)
        optional = self.semgrad_para is None or math.isfinite(self.semgrad_para)
        return optional and all(v is not None and math.isfinite(v) for v in values)


class ScoredGeneration(BaseModel):
    """An answer the scorer generated itself, with the Score of its own token ids."""

    model_config = ConfigDict(frozen=True)

    text: str
    score: Score
