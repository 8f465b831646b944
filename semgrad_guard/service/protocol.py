"""The scoring interface that :class:`~semgrad_guard.SemGradScorer` and :class:`RemoteScorer` share.

Adapters and applications that only score can type their scorer as :class:`Scorer` and take either: the
model in this process, or a scorer service reached over HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from semgrad_guard.calibration import CalibrationBundle
    from semgrad_guard.profiles import ModelProfile
    from semgrad_guard.prompts import Prompt
    from semgrad_guard.results import Score

__all__ = ["Scorer"]


class Scorer(Protocol):
    """Anything that scores (prompt, answer) pairs the way :class:`~semgrad_guard.SemGradScorer` does.

    ``errors="raise"`` raises the typed :class:`~semgrad_guard.SemGradError` of a pair that cannot be
    scored; ``errors="mark"`` returns it as a Score with ``valid=False`` in its place. Errors that are not
    the pair's (a full queue, an unreachable service) raise either way.

    Not runtime-checkable, since ``isinstance`` would read the properties, which load a model or call a
    service. As the type of a pydantic field (an adapter's ``scorer``), the value is checked to have every
    member on its class, without reading any.
    """

    @property
    def model_name(self) -> str:
        """The model name reported in every Score."""
        ...

    @property
    def profile(self) -> ModelProfile:
        """The profile in use, with its layers written out."""
        ...

    @property
    def calibration(self) -> CalibrationBundle | None:
        """The calibration applied to every Score, if any."""
        ...

    def score(self, prompt: Prompt, answer: str, *, errors: Literal["raise", "mark"] = "raise") -> Score:
        """Score one answer to one prompt. Higher scores = more likely wrong."""
        ...

    async def ascore(
        self, prompt: Prompt, answer: str, *, errors: Literal["raise", "mark"] = "raise"
    ) -> Score:
        """Async :meth:`score`."""
        ...

    def score_batch(
        self, pairs: Sequence[tuple[Prompt, str]], *, errors: Literal["raise", "mark"] = "raise"
    ) -> list[Score]:
        """Score many pairs, in order."""
        ...

    async def ascore_batch(
        self, pairs: Sequence[tuple[Prompt, str]], *, errors: Literal["raise", "mark"] = "raise"
    ) -> list[Score]:
        """Async :meth:`score_batch`."""
        ...

    if not TYPE_CHECKING:  # for pydantic only: to type checkers, the protocol is the members above

        @classmethod
        def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
            """Validate a field typed ``Scorer`` by the members of the value's class; it is kept as is."""
            from pydantic_core import core_schema

            return core_schema.no_info_plain_validator_function(_check_scorer)


_MEMBERS = tuple(name for name in vars(Scorer) if not name.startswith("_"))


def _check_scorer(value: object) -> object:
    """``value`` itself, if its class has every member of :class:`Scorer` (no property is read)."""
    missing = [name for name in _MEMBERS if not hasattr(type(value), name)]
    if missing:
        raise ValueError(f"not a scorer: {type(value).__name__} has no {', '.join(missing)}")
    return value


if TYPE_CHECKING:  # mypy proves both scorers satisfy the protocol
    from semgrad_guard.scorer import SemGradScorer
    from semgrad_guard.service.remote import RemoteScorer

    def _both_are_scorers(local: SemGradScorer, remote: RemoteScorer) -> tuple[Scorer, Scorer]:
        return local, remote
