"""`RemoteScorer`: the scoring interface of :class:`~semgrad_guard.SemGradScorer`, over HTTP to a service.

It raises what a local scorer raises: the service sends each error's ``code``, and the client rebuilds the
same :class:`~semgrad_guard.SemGradError` subclass (:func:`~semgrad_guard.service.errors.error_from_code`).
What only a network can do wrong is typed too: no connection is :class:`ScorerUnavailableError`, no answer
in time :class:`ScorerTimeoutError`, a refused token :class:`UnauthorizedError`, so adapters' fail-open and
fail-closed policies apply unchanged.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx

from semgrad_guard.errors import InvalidInputError, ScorerBusyError, SemGradError
from semgrad_guard.results import Score
from semgrad_guard.service.errors import (
    RequestTooLargeError,
    ScorerTimeoutError,
    ScorerUnavailableError,
    error_from_code,
)
from semgrad_guard.service.schema import BatchResponse, ErrorMode, Info, Limits, ScoreResponse

if TYPE_CHECKING:
    from semgrad_guard.calibration import CalibrationBundle
    from semgrad_guard.profiles import ModelProfile
    from semgrad_guard.prompts import Prompt

__all__ = ["RemoteScorer"]

_ENVELOPE_BYTES = 64  # '{"pairs": [...], "errors": "mark"}' around the pairs
_MAX_BACKOFF_S = 30.0


class _Refused(Exception):
    """A response that is an error: the typed error, and how long the service asked to wait."""

    def __init__(self, error: SemGradError, retry_after: float | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


def _wire(pair: object) -> dict[str, Any] | InvalidInputError:
    """One pair as the JSON object the service reads, or the reason it cannot be sent.

    The service's scorer judges the values themselves (an empty answer, a non-string prompt); only what
    JSON cannot carry (NaN, objects) is refused here, as the local scorer refuses what it cannot tokenize.
    """
    if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
        return InvalidInputError(f"a pair must be (prompt, answer), got {type(pair).__name__}")
    prompt, answer = pair
    if isinstance(prompt, Sequence) and not isinstance(prompt, (str, bytes)):
        prompt = [dict(message) if isinstance(message, Mapping) else message for message in prompt]
    body = {"prompt": prompt, "answer": answer}
    try:
        json.dumps(body, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return InvalidInputError(f"the pair cannot be sent as JSON ({type(exc).__name__})")
    return body


def _encode(body: object) -> bytes:
    """JSON bytes; ASCII escapes keep text with lone surrogates sendable (the scorer judges them)."""
    return json.dumps(body, allow_nan=False, separators=(",", ":")).encode("ascii")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


def _decode(response: httpx.Response) -> Any:
    """The JSON of a successful response; any other raises :class:`_Refused` with the typed error."""
    if response.status_code == 200:
        try:
            return response.json()
        except ValueError:
            raise _Refused(ScorerUnavailableError("the service answered 200 without JSON"), None) from None
    status = response.status_code
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        snippet = " ".join(response.text.split())[:200]
        code, message = f"http_{status}", f"HTTP {status} without an error body: {snippet}"
    if status == 404 and code == "not_found":
        typed: SemGradError = ScorerUnavailableError(f"no scorer service at {response.request.url}")
    else:
        typed = error_from_code(code, message, status)
    raise _Refused(typed, _retry_after(response))


class RemoteScorer:
    """Scores (prompt, answer) pairs on a scorer service (:mod:`semgrad_guard.service.app`).

    Args:
        url: the service's base URL, e.g. ``http://127.0.0.1:8000``.
        token: the service's bearer token, if it has one.
        timeout: seconds to wait for an answer (``None``: as long as it takes); past it,
            :class:`ScorerTimeoutError`.
        connect_timeout: seconds to wait for a connection; past it, :class:`ScorerUnavailableError`.
        max_retries: how many times to retry a request the service refused as busy (429) or unavailable
            (503, no connection), waiting what ``Retry-After`` says or a doubling backoff. Default 0: the
            error reaches the caller at once, whose policy decides.
        transport: the httpx transport of the sync client (default: the network).
        async_transport: the httpx transport of the async clients (tests: ``httpx.ASGITransport(app)``).
        headers: extra headers sent with every request.

    The scoring methods, ``model_name``, ``profile`` and ``calibration`` match
    :class:`~semgrad_guard.SemGradScorer` (both satisfy :class:`~semgrad_guard.service.protocol.Scorer`);
    the last three come from ``GET /v1/info``, fetched once. Batches are split to the service's
    ``max_pairs`` and body limit. The sync client is shared by threads; each event loop gets its own async
    client. Close with :meth:`close` / :meth:`aclose`, or use it as a (async) context manager.

    Example:
        >>> scorer = RemoteScorer("http://127.0.0.1:8000", token="s3cret")  # doctest: +SKIP
        >>> scorer.score("What is the capital of France?", "Paris").semgrad  # doctest: +SKIP
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float | None = 60.0,
        connect_timeout: float = 5.0,
        max_retries: int = 0,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Record the settings; nothing is contacted until first use."""
        if max_retries < 0:
            raise ValueError("max_retries must be at least 0")
        self.url = url.rstrip("/")
        self.max_retries = max_retries
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self._headers = {"content-type": "application/json", **dict(headers or {})}
        if token is not None:
            self._headers["authorization"] = f"Bearer {token}"
        self._transport = transport
        self._async_transport = async_transport
        self._client: httpx.Client | None = None
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self._info: Info | None = None

    @classmethod
    def from_env(cls) -> RemoteScorer:
        """A scorer for the service ``SEMGRAD_GUARD_URL`` names (the default scorer when it is set).

        ``SEMGRAD_GUARD_TOKEN`` is its bearer token; ``SEMGRAD_GUARD_TIMEOUT`` the seconds to wait for an
        answer (default 60; ``none``: no limit).
        """
        url = os.environ.get("SEMGRAD_GUARD_URL", "")
        if not url:
            raise ValueError("SEMGRAD_GUARD_URL is not set: it names the scorer service, http://host:port")
        timeout = os.environ.get("SEMGRAD_GUARD_TIMEOUT", "60")
        try:
            seconds = None if timeout.strip().lower() == "none" else float(timeout)
        except ValueError:
            raise ValueError(f"SEMGRAD_GUARD_TIMEOUT is seconds or 'none', not {timeout!r}") from None
        if seconds is not None and not seconds > 0:
            raise ValueError(f"SEMGRAD_GUARD_TIMEOUT must be positive, not {timeout!r}")
        return cls(url, token=os.environ.get("SEMGRAD_GUARD_TOKEN") or None, timeout=seconds)

    def __repr__(self) -> str:
        """The URL, never the token."""
        return f"RemoteScorer({self.url!r})"

    # ------------------------------------------------------------------------------------------ clients
    def _sync_client(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(
                    base_url=self.url, timeout=self._timeout, headers=self._headers, transport=self._transport
                )
            return self._client

    def _async_client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._async_clients.get(loop)
            if client is None:
                client = httpx.AsyncClient(
                    base_url=self.url,
                    timeout=self._timeout,
                    headers=self._headers,
                    transport=self._async_transport,
                )
                self._async_clients[loop] = client
            return client

    def close(self) -> None:
        """Close the sync client (async clients: :meth:`aclose` in their loop)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Close this event loop's async client, and the sync client."""
        with self._lock:
            client = self._async_clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()
        self.close()

    def __enter__(self) -> RemoteScorer:
        """Use as a context manager: the sync client closes at the end."""
        return self

    def __exit__(self, *_: object) -> None:
        """Close the sync client."""
        self.close()

    async def __aenter__(self) -> RemoteScorer:
        """Use as an async context manager: this loop's client closes at the end."""
        return self

    async def __aexit__(self, *_: object) -> None:
        """Close this loop's client."""
        await self.aclose()

    # ----------------------------------------------------------------------------------------- requests
    def _backoff(self, refused: _Refused, attempt: int) -> float | None:
        """Seconds to wait before retrying, or ``None`` when this error is final."""
        retryable = isinstance(refused.error, (ScorerBusyError, ScorerUnavailableError)) and not isinstance(
            refused.error, ScorerTimeoutError
        )
        if not retryable or attempt >= self.max_retries:
            return None
        return min(
            refused.retry_after if refused.retry_after is not None else 0.25 * 2**attempt, _MAX_BACKOFF_S
        )

    def _transport_error(self, exc: httpx.HTTPError) -> _Refused:
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            error: SemGradError = ScorerTimeoutError(
                f"no answer from {self.url} in time ({type(exc).__name__})"
            )
        else:
            error = ScorerUnavailableError(
                f"cannot reach the scorer service at {self.url} ({type(exc).__name__})"
            )
        return _Refused(error, None)

    def _request(self, method: str, path: str, body: object = None) -> Any:
        content = None if body is None else _encode(body)
        attempt = 0
        while True:
            try:
                try:
                    response = self._sync_client().request(method, path, content=content)
                except httpx.HTTPError as exc:
                    raise self._transport_error(exc) from exc
                return _decode(response)
            except _Refused as refused:
                wait = self._backoff(refused, attempt)
                if wait is None:
                    raise refused.error from refused.__cause__
            time.sleep(wait)
            attempt += 1

    async def _arequest(self, method: str, path: str, body: object = None) -> Any:
        content = None if body is None else _encode(body)
        attempt = 0
        while True:
            try:
                try:
                    response = await self._async_client().request(method, path, content=content)
                except httpx.HTTPError as exc:
                    raise self._transport_error(exc) from exc
                return _decode(response)
            except _Refused as refused:
                wait = self._backoff(refused, attempt)
                if wait is None:
                    raise refused.error from refused.__cause__
            await asyncio.sleep(wait)
            attempt += 1

    # ------------------------------------------------------------------------------------------ service
    def load(self) -> RemoteScorer:
        """Fetch the service's info now (it loads its model if it has not yet); returns the scorer."""
        self.info()
        return self

    def info(self) -> Info:
        """The service's model, version, profile, calibration and limits (fetched once)."""
        if self._info is None:
            self._info = Info.model_validate(self._request("GET", "/v1/info"))
        return self._info

    async def ainfo(self) -> Info:
        """Async :meth:`info`."""
        if self._info is None:
            self._info = Info.model_validate(await self._arequest("GET", "/v1/info"))
        return self._info

    def healthy(self) -> bool:
        """Whether the service answers its liveness probe."""
        try:
            self._request("GET", "/healthz")
        except SemGradError:
            return False
        return True

    def ready(self) -> bool:
        """Whether the service has its model loaded."""
        try:
            self._request("GET", "/readyz")
        except SemGradError:
            return False
        return True

    @property
    def model_name(self) -> str:
        """The model name reported in every Score."""
        return self.info().model

    @property
    def profile(self) -> ModelProfile:
        """The service's profile, with its layers written out."""
        return self.info().profile

    @property
    def calibration(self) -> CalibrationBundle | None:
        """The calibration the service applies to every Score, if any."""
        return self.info().calibration

    @property
    def context_length(self) -> int | None:
        """The longest prompt + answer, in tokens, the service accepts (``None`` if it does not say)."""
        return self.info().context_length

    @property
    def limits(self) -> Limits:
        """The service's request limits."""
        return self.info().limits

    # ------------------------------------------------------------------------------------------ scoring
    def score(self, prompt: Prompt, answer: str, *, errors: ErrorMode = "raise") -> Score:
        """Score one answer to one prompt. Higher scores = more likely wrong."""
        body = _wire((prompt, answer))
        if isinstance(body, SemGradError):
            return self._refuse_locally(body, errors, self.model_name)
        try:
            response = self._request("POST", "/v1/score", {**body, "errors": errors})
        except RequestTooLargeError as exc:  # the pair's own size: marked like any bad pair
            return self._refuse_locally(exc, errors, self.model_name)
        return ScoreResponse.model_validate(response).score

    async def ascore(self, prompt: Prompt, answer: str, *, errors: ErrorMode = "raise") -> Score:
        """Async :meth:`score`: the event loop stays free while the service scores."""
        body = _wire((prompt, answer))
        if isinstance(body, SemGradError):
            return self._refuse_locally(body, errors, (await self.ainfo()).model)
        try:
            response = await self._arequest("POST", "/v1/score", {**body, "errors": errors})
        except RequestTooLargeError as exc:  # the pair's own size: marked like any bad pair
            return self._refuse_locally(exc, errors, (await self.ainfo()).model)
        return ScoreResponse.model_validate(response).score

    def score_batch(self, pairs: Sequence[tuple[Prompt, str]], *, errors: ErrorMode = "raise") -> list[Score]:
        """Score many pairs, in order; batches larger than the service takes are sent in parts.

        With ``errors="mark"`` a pair that cannot be scored comes back as an invalid Score in its place;
        with ``"raise"`` the first bad pair raises its typed error.
        """
        info = self.info()
        slots, chunks = self._plan(pairs, errors, info)
        for chunk in chunks:
            scores = BatchResponse.model_validate(
                self._request("POST", "/v1/score_batch", self._batch_body(chunk, errors))
            ).scores
            for (index, _), score in zip(chunk, scores, strict=True):
                slots[index] = score
        return [slot for slot in slots if slot is not None]

    async def ascore_batch(
        self, pairs: Sequence[tuple[Prompt, str]], *, errors: ErrorMode = "raise"
    ) -> list[Score]:
        """Async :meth:`score_batch`: the parts of a large batch are sent concurrently."""
        info = await self.ainfo()
        slots, chunks = self._plan(pairs, errors, info)
        answers = await asyncio.gather(
            *(self._arequest("POST", "/v1/score_batch", self._batch_body(chunk, errors)) for chunk in chunks)
        )
        for chunk, answer in zip(chunks, answers, strict=True):
            for (index, _), score in zip(chunk, BatchResponse.model_validate(answer).scores, strict=True):
                slots[index] = score
        return [slot for slot in slots if slot is not None]

    # -------------------------------------------------------------------------------------------- batch
    @staticmethod
    def _refuse_locally(error: InvalidInputError, errors: ErrorMode, model: str) -> Score:
        if errors == "raise":
            raise error
        return Score.invalid(f"{error.code}: {error}", model=model)

    @staticmethod
    def _batch_body(chunk: list[tuple[int, dict[str, Any]]], errors: ErrorMode) -> dict[str, Any]:
        return {"pairs": [body for _, body in chunk], "errors": errors}

    def _plan(
        self, pairs: Sequence[tuple[Prompt, str]], errors: ErrorMode, info: Info
    ) -> tuple[list[Score | None], list[list[tuple[int, dict[str, Any]]]]]:
        """Slots for the results (pairs refused here already filled) and the parts to send, in order.

        A part holds at most ``max_pairs`` pairs and fits the body limit; one pair alone over the body
        limit is refused here as :class:`RequestTooLargeError` (raised or marked, like any bad pair).
        """
        limit = info.limits
        slots: list[Score | None] = [None] * len(pairs)
        chunks: list[list[tuple[int, dict[str, Any]]]] = []
        size = 0
        for index, pair in enumerate(pairs):
            body: dict[str, Any] | InvalidInputError = _wire(pair)
            if not isinstance(body, InvalidInputError):
                length = len(_encode(body)) + 1
                if length + _ENVELOPE_BYTES > limit.max_body_bytes:
                    body = RequestTooLargeError(
                        f"the pair is {length} bytes as JSON, over the service's limit of "
                        f"{limit.max_body_bytes} bytes per request"
                    )
            if isinstance(body, InvalidInputError):
                slots[index] = self._refuse_locally(body, errors, info.model)
                continue
            if not chunks or len(chunks[-1]) >= limit.max_pairs or size + length > limit.max_body_bytes:
                chunks.append([])
                size = _ENVELOPE_BYTES
            chunks[-1].append((index, body))
            size += length
        return slots, chunks
