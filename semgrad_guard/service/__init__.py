"""Scoring beyond one process: a scorer service (FastAPI) and :class:`RemoteScorer`, its client.

``pip install "semgrad-guard[serve]"`` brings FastAPI, uvicorn and httpx. The client needs httpx only;
:func:`create_app` and :func:`serve` import FastAPI when first used, so a process that only calls a
service never loads the server side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from semgrad_guard.service.errors import (
    RequestTooLargeError,
    ScorerTimeoutError,
    ScorerUnavailableError,
    UnauthorizedError,
)
from semgrad_guard.service.protocol import Scorer

if TYPE_CHECKING:
    from semgrad_guard.service.app import create_app, serve
    from semgrad_guard.service.remote import RemoteScorer

__all__ = [
    "RemoteScorer",
    "RequestTooLargeError",
    "Scorer",
    "ScorerTimeoutError",
    "ScorerUnavailableError",
    "UnauthorizedError",
    "create_app",
    "serve",
]

_LAZY = {
    "RemoteScorer": "semgrad_guard.service.remote",
    "create_app": "semgrad_guard.service.app",
    "serve": "semgrad_guard.service.app",
}


def __getattr__(name: str) -> Any:
    """Import the client or the app on first use (each needs its optional dependencies)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
