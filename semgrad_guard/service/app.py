"""The scorer service: a FastAPI app over one shared scorer, so many processes and hosts use one model.

Endpoints (JSON in and out; every error is ``{"error": {"code", "type", "message"}}``, see
:mod:`semgrad_guard.service.errors`):

``POST /v1/score``
    ``{"prompt", "answer", "errors": "raise"}`` -> ``{"score": Score}``. A pair that cannot be scored is
    HTTP 422 with the error's code (``empty_answer``, ``too_long``...), or with ``"errors": "mark"`` a
    Score with ``valid: false``.
``POST /v1/score_batch``
    ``{"pairs": [{"prompt", "answer"}, ...], "errors": "mark"}`` -> ``{"scores": [Score, ...]}`` in order;
    each pair that cannot be scored is marked in its place (``"errors": "raise"``: the first one is a 422).
``GET /healthz``
    Liveness: the process answers (the model may still be loading).
``GET /readyz``
    Readiness: 200 once the model is loaded, 503 before (or with the load error's code if it failed).
``GET /v1/info``
    Model name, version, profile, calibration bundle, context length and the service's limits.

Concurrent requests share passes through the scorer's micro-batcher (``await scorer.ascore_batch``), so
the event loop never runs a pass. Limits: a body over ``max_body_bytes`` or a batch over ``max_pairs`` is
413; a request the scorer has not answered within ``timeout_s`` is 504; a full queue (the scorer's
``BatchingConfig(max_queue, queue_timeout_s)``) is 429 with ``Retry-After``; with ``token`` set, ``/v1/*``
wants ``Authorization: Bearer <token>`` (401 otherwise). The probes need no token.

Run it with ``semgrad-guard serve --model M --port 8000`` (see ``--help``), with
``uvicorn semgrad_guard.service.app:app_from_env --factory`` (settings from ``SEMGRAD_GUARD_*``
variables), or on Ray Serve with :func:`semgrad_guard.service.ray_serve.deployment` (docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from semgrad_guard._version import __version__
from semgrad_guard.errors import InvalidInputError, ScorerBusyError, SemGradError
from semgrad_guard.prompts import Prompt
from semgrad_guard.results import Score
from semgrad_guard.service.errors import (
    RequestTooLargeError,
    ScorerTimeoutError,
    ScorerUnavailableError,
    UnauthorizedError,
    status_for,
)
from semgrad_guard.service.protocol import Scorer
from semgrad_guard.service.schema import (
    BatchRequest,
    BatchResponse,
    ErrorBody,
    ErrorMode,
    ErrorResponse,
    Info,
    Limits,
    ScoreRequest,
    ScoreResponse,
)

__all__ = ["BodyLimit", "app_from_env", "create_app", "serve"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 4 << 20
DEFAULT_MAX_PAIRS = 256
DEFAULT_TIMEOUT_S = 60.0


# ------------------------------------------------------------------------------------------------ errors
def _error_response(error: SemGradError, *, retry_after_s: int = 1) -> JSONResponse:
    """The JSON answer for one of the core's (or the service's) errors, with its HTTP status."""
    status = status_for(error)
    headers: dict[str, str] = {}
    if isinstance(error, ScorerBusyError):
        headers["Retry-After"] = str(retry_after_s)
    if isinstance(error, UnauthorizedError):
        headers["WWW-Authenticate"] = "Bearer"
    body = ErrorBody(code=error.code, type=type(error).__name__, message=" ".join(str(error).split())[:2000])
    return JSONResponse(ErrorResponse(error=body).model_dump(), status_code=status, headers=headers)


_HTTP_CODES = {400: "invalid_input", 404: "not_found", 405: "method_not_allowed", 422: "invalid_input"}


def _http_error_response(status: int, detail: str) -> JSONResponse:
    body = ErrorBody(code=_HTTP_CODES.get(status, f"http_{status}"), type="HTTPException", message=detail)
    return JSONResponse(ErrorResponse(error=body).model_dump(), status_code=status)


def _validation_message(exc: RequestValidationError) -> str:
    """Where and what, for each problem, without repeating the input (reasons never repeat the text)."""
    problems = [
        f"{'.'.join(str(part) for part in problem.get('loc', ()))}: {problem.get('msg', 'invalid')}"
        for problem in exc.errors()[:5]
    ]
    return "the request does not match the schema: " + "; ".join(problems)


# ------------------------------------------------------------------------------------------- body limit
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered 413 before the app parses it.

    A declared ``Content-Length`` over the limit is refused without reading; a body sent in chunks is read
    up to the limit and refused as soon as it passes it, so no request holds more than the limit here.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        """Wrap ``app``."""
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Read the whole body (within the limit), then hand it to the app."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = bytes(message.get("body", b""))
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = RequestTooLargeError(
            f"the request body is over the service's limit of {self.max_bytes} bytes"
        )
        await _error_response(error)(scope, receive, send)


# ---------------------------------------------------------------------------------------------- the app
class _State:
    """Whether the model is loaded, and the service's info once it is."""

    def __init__(self, scorer: Scorer, limits: Limits) -> None:
        self.scorer = scorer
        self.limits = limits
        self.info: Info | None = None
        self.load_error: SemGradError | None = None
        self._loading: asyncio.Task[None] | None = None
        self._lock = threading.Lock()

    def _load(self) -> Info:
        """Load the model (reading its name does) and gather the info; runs on a worker thread."""
        with self._lock:
            if self.info is None:
                scorer = self.scorer
                context = getattr(scorer, "context_length", None)
                self.info = Info(
                    model=scorer.model_name,
                    version=__version__,
                    profile=scorer.profile,
                    calibration=scorer.calibration,
                    context_length=context if isinstance(context, int) else None,
                    limits=self.limits,
                )
                self.load_error = None
            return self.info

    async def load(self) -> Info:
        """The info, loading the model first if needed, without blocking the event loop."""
        if self.info is not None:
            return self.info
        try:
            return await asyncio.to_thread(self._load)
        except SemGradError as exc:
            self.load_error = exc
            raise
        except Exception as exc:  # a model that fails to load in any other way
            self.load_error = ScorerUnavailableError(f"the model failed to load: {type(exc).__name__}")
            raise self.load_error from exc

    def start_loading(self) -> None:
        """Start loading in the background (once), so probes answer while the model loads."""
        if self.info is None and (self._loading is None or self._loading.done()):
            self._loading = asyncio.get_running_loop().create_task(self._background_load())

    async def _background_load(self) -> None:
        try:
            await self.load()
        except Exception:
            logger.exception("the scorer service could not load its model")


def create_app(
    scorer: Scorer,
    *,
    token: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    retry_after_s: int = 1,
    load_on_startup: bool = True,
) -> FastAPI:
    """A FastAPI app that serves ``scorer`` (see the module docstring for the endpoints).

    Args:
        scorer: the scorer every request shares; a :class:`~semgrad_guard.SemGradScorer` gathers concurrent
            requests into shared passes (its ``BatchingConfig`` sets the queue bound and wait behind 429).
        token: if set, ``/v1/*`` requests must carry ``Authorization: Bearer <token>``.
        max_body_bytes: larger request bodies are refused with 413 before they are parsed.
        max_pairs: larger batches are refused with 413 (``RemoteScorer`` splits its batches to fit).
        timeout_s: a request not answered within this many seconds is 504 (its queued pairs are dropped
            if no pass has taken them yet); ``None``: no limit.
        retry_after_s: the ``Retry-After`` seconds sent with 429.
        load_on_startup: start loading the model when the app starts; otherwise the first request or
            ``/readyz`` probe does (``/readyz`` is 503 until it is loaded).
    """
    if max_body_bytes < 1 or max_pairs < 1:
        raise ValueError("max_body_bytes and max_pairs must be at least 1")
    if timeout_s is not None and timeout_s <= 0:
        raise ValueError("timeout_s must be positive, or None for no limit")
    state = _State(scorer, Limits(max_body_bytes=max_body_bytes, max_pairs=max_pairs, timeout_s=timeout_s))
    expected = None if token is None else token.encode("utf-8")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if load_on_startup:
            state.start_loading()
        yield

    app = FastAPI(
        title="semgrad-guard scorer",
        version=__version__,
        lifespan=lifespan,
        responses={"default": {"model": ErrorResponse, "description": "An error, by its code."}},
    )
    app.state.semgrad = state
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    @app.exception_handler(SemGradError)
    async def semgrad_error(_: Request, exc: SemGradError) -> JSONResponse:
        return _error_response(exc, retry_after_s=retry_after_s)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(InvalidInputError(_validation_message(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _http_error_response(exc.status_code, str(exc.detail))

    async def authorize(request: Request) -> None:
        if expected is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8"), expected):
            raise UnauthorizedError("this service wants 'Authorization: Bearer <token>' with its token")

    async def run(pairs: Sequence[tuple[Prompt, str]], errors: ErrorMode) -> list[Score]:
        """Score through the shared scorer within the time limit; unexpected failures are 503, logged."""
        try:
            scoring = scorer.ascore_batch(pairs, errors=errors)
            scores = await (scoring if timeout_s is None else asyncio.wait_for(scoring, timeout_s))
        except asyncio.TimeoutError:
            raise ScorerTimeoutError(f"the scorer did not answer within {timeout_s} s") from None
        except SemGradError:
            raise
        except Exception as exc:
            logger.exception("scoring failed unexpectedly")
            raise ScorerUnavailableError(f"the scorer failed: {type(exc).__name__}") from exc
        if state.info is None:
            state.start_loading()  # the model is loaded now: fill the info for /readyz
        return scores

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])

    @v1.post("/score", response_model=ScoreResponse)
    async def score(body: ScoreRequest) -> ScoreResponse:
        """Score one pair."""
        scores = await run([(body.prompt, body.answer)], body.errors)
        return ScoreResponse(score=scores[0])

    @v1.post("/score_batch", response_model=BatchResponse)
    async def score_batch(body: BatchRequest) -> BatchResponse:
        """Score many pairs, in order; bad pairs are marked in place unless ``errors`` is 'raise'."""
        if len(body.pairs) > max_pairs:
            raise RequestTooLargeError(
                f"{len(body.pairs)} pairs is over the service's limit of {max_pairs} per request"
            )
        scores = await run([(pair.prompt, pair.answer) for pair in body.pairs], body.errors)
        return BatchResponse(scores=scores)

    @v1.get("/info", response_model=Info)
    async def info() -> Info:
        """The model, version, profile, calibration and limits (loads the model if it is not yet)."""
        return await state.load()

    app.include_router(v1)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorResponse}})
    async def readyz() -> JSONResponse:
        """Readiness: 200 once the model is loaded; 503 while it loads or if it failed to."""
        if state.info is not None:
            return JSONResponse({"status": "ready", "model": state.info.model})
        state.start_loading()
        if state.load_error is not None:
            return _error_response(state.load_error)
        return _error_response(ScorerUnavailableError("the model is still loading"))

    return app


def _env_float(name: str, default: float | None) -> float | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return None if value.lower() == "none" else float(value)


def app_from_env() -> FastAPI:
    """An app set up from the environment: ``uvicorn semgrad_guard.service.app:app_from_env --factory``.

    ``SEMGRAD_GUARD_MODEL`` (id, folder or .gguf; default the embedded model), ``SEMGRAD_GUARD_DEVICE``
    (default auto), ``SEMGRAD_GUARD_CALIBRATION`` (a bundle path or ``default``), ``SEMGRAD_GUARD_TOKEN``,
    ``SEMGRAD_GUARD_MAX_PAIRS``, ``SEMGRAD_GUARD_MAX_BODY_BYTES``, ``SEMGRAD_GUARD_TIMEOUT_S`` (``none`` for
    no limit), ``SEMGRAD_GUARD_MAX_QUEUE`` and ``SEMGRAD_GUARD_QUEUE_TIMEOUT_S`` (429 after this wait).
    """
    from semgrad_guard.batching import BatchingConfig
    from semgrad_guard.scorer import SemGradScorer

    model = os.environ.get("SEMGRAD_GUARD_MODEL") or None
    scorer = SemGradScorer(
        model,
        device=os.environ.get("SEMGRAD_GUARD_DEVICE", "auto"),
        calibration=os.environ.get("SEMGRAD_GUARD_CALIBRATION") or ("default" if model is None else None),
        batching=BatchingConfig(
            max_queue=int(os.environ.get("SEMGRAD_GUARD_MAX_QUEUE", "1024")),
            queue_timeout_s=_env_float("SEMGRAD_GUARD_QUEUE_TIMEOUT_S", 1.0),
        ),
    )
    return create_app(
        scorer,
        token=os.environ.get("SEMGRAD_GUARD_TOKEN") or None,
        max_body_bytes=int(os.environ.get("SEMGRAD_GUARD_MAX_BODY_BYTES", str(DEFAULT_MAX_BODY_BYTES))),
        max_pairs=int(os.environ.get("SEMGRAD_GUARD_MAX_PAIRS", str(DEFAULT_MAX_PAIRS))),
        timeout_s=_env_float("SEMGRAD_GUARD_TIMEOUT_S", DEFAULT_TIMEOUT_S),
    )


def serve(
    scorer: Scorer,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    log_level: str = "info",
    **app_options: Any,
) -> None:
    """Serve ``scorer`` with uvicorn until interrupted (one process: one model; see docs/scaling.md).

    The default host answers this machine only; give ``host="0.0.0.0"`` (and a ``token``) to serve others.
    """
    import uvicorn

    uvicorn.run(create_app(scorer, token=token, **app_options), host=host, port=port, log_level=log_level)
