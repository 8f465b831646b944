"""The process-wide default scorer every adapter shares when it is given none: one model in memory."""

from __future__ import annotations

import threading

from semgrad_guard.scorer import SemGradScorer

__all__ = ["default_scorer", "set_default_scorer"]

_lock = threading.Lock()
_default: SemGradScorer | None = None


def default_scorer() -> SemGradScorer:
    """The shared scorer, created on first use (the embedded model unless :func:`set_default_scorer` ran).

    It carries the embedded model's shipped calibration, so guards work without a raw threshold. Creating it
    does not load the model; the first score does.
    """
    global _default
    with _lock:
        if _default is None:
            _default = SemGradScorer(calibration="default")
        return _default


def set_default_scorer(scorer: SemGradScorer | None) -> None:
    """Make ``scorer`` the one every adapter uses by default (``None`` resets to the embedded model)."""
    global _default
    with _lock:
        _default = scorer
