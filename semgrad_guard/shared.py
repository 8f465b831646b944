"""The process-wide default scorer every adapter shares when it is given none.

One model in this process, or, with ``SEMGRAD_GUARD_URL`` set, one scorer service for every process.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from semgrad_guard.scorer import SemGradScorer

if TYPE_CHECKING:
    from semgrad_guard.service.protocol import Scorer

__all__ = ["default_scorer", "set_default_scorer"]

_lock = threading.Lock()
_default: Scorer | None = None


def default_scorer() -> Scorer:
    """The shared scorer, created on first use (unless :func:`set_default_scorer` gave one).

    With ``SEMGRAD_GUARD_URL`` set it is a :class:`~semgrad_guard.service.RemoteScorer` for that scorer
    service (``SEMGRAD_GUARD_TOKEN``, ``SEMGRAD_GUARD_TIMEOUT``: :meth:`RemoteScorer.from_env
    <semgrad_guard.service.RemoteScorer.from_env>`), so every worker process shares one model without a code
    change. Otherwise it is the embedded model with its shipped calibration, so guards work without a raw
    threshold. Creating either loads nothing and contacts nothing; the first score does.
    """
    global _default
    with _lock:
        if _default is None:
            remote = bool(os.environ.get("SEMGRAD_GUARD_URL"))
            _default = _remote() if remote else SemGradScorer(calibration="default")
        return _default


def _remote() -> Scorer:
    """The :class:`RemoteScorer` the environment names; without httpx, an ImportError that says so."""
    try:
        from semgrad_guard.service.remote import RemoteScorer
    except ImportError as exc:
        raise ImportError(
            f"SEMGRAD_GUARD_URL is set: a remote scorer needs {exc.name}; pip install 'semgrad-guard[serve]'"
        ) from exc
    return RemoteScorer.from_env()


def set_default_scorer(scorer: Scorer | None) -> None:
    """Make ``scorer`` the one every adapter uses by default (``None``: the next use creates it again)."""
    global _default
    with _lock:
        _default = scorer
