"""Errors of the scorer service and its client, and how every :class:`SemGradError` crosses HTTP.

The service answers each error as JSON, ``{"error": {"code", "type", "message"}}``, with the HTTP status
:func:`status_for` gives; :class:`~semgrad_guard.service.remote.RemoteScorer` turns the code back into the
same class with :func:`error_from_code`, so a caller's ``except InvalidInputError`` (or an adapter's
fail-open or fail-closed policy) works the same against a local scorer and a remote one. Errors only the
network has are added here::

    SemGradError
    ├── InvalidInputError
    │   └── RequestTooLargeError      the request body or its number of pairs is over the service's limit
    ├── ScorerUnavailableError        the service cannot be reached, or answered with no usable response
    │   └── ScorerTimeoutError        no answer in time (the client's timeout, or the service's: HTTP 504)
    └── UnauthorizedError             the service wants a bearer token that was missing or wrong
"""

from __future__ import annotations

from semgrad_guard.errors import (
    InvalidInputError,
    ModelLoadError,
    NonFiniteScoreError,
    NoThresholdError,
    ScorerBusyError,
    ScorerOutOfMemoryError,
    SemGradError,
)

__all__ = [
    "RequestTooLargeError",
    "ScorerTimeoutError",
    "ScorerUnavailableError",
    "UnauthorizedError",
    "error_from_code",
    "status_for",
]


class ScorerUnavailableError(SemGradError):
    """The scorer service could not be reached, or did not give a usable answer (HTTP 5xx, no JSON)."""

    code = "unavailable"


class ScorerTimeoutError(ScorerUnavailableError):
    """The scorer did not answer in time: the client's timeout passed, or the service's (HTTP 504)."""

    code = "timeout"


class UnauthorizedError(SemGradError):
    """The service refused the request: its bearer token was missing or wrong (HTTP 401)."""

    code = "unauthorized"


class RequestTooLargeError(InvalidInputError):
    """The request is over the service's body size or pair count limit (HTTP 413): send smaller batches."""

    code = "too_large"


# Most specific first: a class is matched by isinstance, so a subclass must come before its base.
_STATUS: list[tuple[type[SemGradError], int]] = [
    (RequestTooLargeError, 413),
    (InvalidInputError, 422),
    (NoThresholdError, 422),
    (UnauthorizedError, 401),
    (ScorerBusyError, 429),
    (ScorerTimeoutError, 504),
    (ScorerUnavailableError, 503),
    (ModelLoadError, 503),
    (ScorerOutOfMemoryError, 507),
    (NonFiniteScoreError, 500),
]


def status_for(error: SemGradError) -> int:
    """The HTTP status the service answers ``error`` with (500 for any error not listed)."""
    return next((status for kind, status in _STATUS if isinstance(error, kind)), 500)


def _subclasses(root: type[SemGradError]) -> list[type[SemGradError]]:
    """``root`` and every class below it that the core defines, breadth first.

    Only the core's errors travel over the wire; an adapter's subclass (say one whose constructor needs
    more than a message) is never rebuilt from a code, so importing an adapter cannot change the mapping.
    """
    found, index = [root], 0
    while index < len(found):
        found.extend(
            sub
            for sub in found[index].__subclasses__()
            if sub not in found and sub.__module__.split(".")[0] == "semgrad_guard"
        )
        index += 1
    return found


def error_from_code(code: str, message: str, status: int | None = None) -> SemGradError:
    """The error a service reported, rebuilt as the :class:`SemGradError` subclass whose ``code`` it had.

    A code no class here has (a newer server's) gives the nearest error the status tells (413 too large,
    429 busy, 401 and 403 unauthorized, other 4xx invalid input, 504 timeout, other 5xx unavailable, else
    :class:`SemGradError`); its ``code`` still reads as sent.
    """
    for kind in _subclasses(SemGradError):
        if kind.__dict__.get("code") == code:
            return kind(message)
    fallback: SemGradError
    if status is not None and 500 <= status < 600:
        fallback = ScorerTimeoutError(message) if status == 504 else ScorerUnavailableError(message)
    elif status == 413:
        fallback = RequestTooLargeError(message)
    elif status == 429:
        fallback = ScorerBusyError(message)
    elif status in (401, 403):
        fallback = UnauthorizedError(message)
    elif status is not None and 400 <= status < 500:
        fallback = InvalidInputError(message)
    else:
        fallback = SemGradError(message)
    fallback.code = code
    return fallback
