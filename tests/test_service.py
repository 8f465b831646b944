"""The scorer service and RemoteScorer: same scores and same typed errors as a local scorer, and limits."""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the service needs the serve extra: pip install 'semgrad-guard[serve]'")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from semgrad_guard import (  # noqa: E402
    BatchingConfig,
    EmptyAnswerError,
    InputTooLongError,
    InvalidInputError,
    ModelLoadError,
    NonFiniteScoreError,
    Score,
    ScorerBusyError,
    SemGradError,
    SemGradScorer,
    default_scorer,
    set_default_scorer,
)
from semgrad_guard.service import (  # noqa: E402
    RemoteScorer,
    RequestTooLargeError,
    Scorer,
    ScorerTimeoutError,
    ScorerUnavailableError,
    UnauthorizedError,
    create_app,
)
from semgrad_guard.service.errors import _subclasses, error_from_code, status_for  # noqa: E402

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])  # loopback only: the in-process server

TOKEN = "s3cret-token"
NUMBERS = (
    "semgrad",
    "hybridgrad",
    "param_grad",
    "exgrad",
    "mean_entropy",
    "nll",
    "ln_nll",
    "max_token_nll",
    "risk",
)
PAIRS: list[tuple[Any, Any]] = [
    ("What is the capital of France?", "Paris."),
    ("Name a prime number.", "Seven, which has no divisors but one and itself."),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}], "4"),
    ("Who wrote Hamlet?", "   "),  # empty answer: marked
    ("What colour is the sky?", "Blue on a clear day, grey when it rains, red at sunset sometimes."),
    ("Say something.", 42),  # not a string: marked
]


@contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def assert_same(remote: list[Score], local: list[Score]) -> None:
    """Equal up to float32 rounding: passes of other shapes sum in another order."""
    assert len(remote) == len(local)
    for r, loc in zip(remote, local, strict=True):
        assert (r.valid, r.invalid_reason, r.model) == (loc.valid, loc.invalid_reason, loc.model)
        assert (r.n_answer_tokens, r.n_prompt_tokens, r.position) == (
            loc.n_answer_tokens,
            loc.n_prompt_tokens,
            loc.position,
        )
        assert r.profile == loc.profile
        for field in NUMBERS:
            a, b = getattr(r, field), getattr(loc, field)
            assert (a is None) == (b is None), field
            if a is not None:
                assert math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-9), (field, a, b)


@pytest.fixture(scope="module")
def tiny_scorer(tiny_dir: Any) -> SemGradScorer:
    """The tiny model from its folder, with the shipped calibration (it fills risk; fitted elsewhere)."""
    return SemGradScorer(tiny_dir, device="cpu", calibration="default", batch_size=4).load()


@pytest.fixture(scope="module")
def server(tiny_scorer: SemGradScorer) -> Iterator[str]:
    """The service over the tiny scorer, with a token and small limits, on a loopback port."""
    app = create_app(tiny_scorer, token=TOKEN, max_pairs=4, max_body_bytes=64 * 1024, timeout_s=30)
    with running(app) as url:
        yield url


@pytest.fixture
def remote(server: str) -> Iterator[RemoteScorer]:
    with RemoteScorer(server, token=TOKEN, timeout=30) as scorer:
        yield scorer


# ------------------------------------------------------------------------------------------------ scores
def test_remote_scores_equal_local_scores(remote: RemoteScorer, tiny_scorer: SemGradScorer) -> None:
    local = tiny_scorer.score_batch(PAIRS, errors="mark")
    assert [s.valid for s in local] == [True, True, True, False, True, False]
    assert_same(remote.score_batch(PAIRS, errors="mark"), local)  # 6 pairs: two requests of max_pairs=4
    assert_same([remote.score(*PAIRS[0])], [tiny_scorer.score(*PAIRS[0])])
    assert remote.score(*PAIRS[1]).risk is not None  # the service's calibration applies


def test_async_remote_scores_equal_local_scores(server: str, tiny_scorer: SemGradScorer) -> None:
    async def main() -> tuple[list[Score], list[Score]]:
        async with RemoteScorer(server, token=TOKEN) as scorer:
            batch = await scorer.ascore_batch(PAIRS, errors="mark")
            ones = await asyncio.gather(*(scorer.ascore(p, a, errors="mark") for p, a in PAIRS))
        return batch, list(ones)

    batch, ones = asyncio.run(main())
    local = tiny_scorer.score_batch(PAIRS, errors="mark")
    assert_same(batch, local)
    assert_same(ones, local)


def test_info_matches_the_scorer(remote: RemoteScorer, tiny_scorer: SemGradScorer) -> None:
    assert remote.model_name == tiny_scorer.model_name
    assert remote.profile == tiny_scorer.profile
    assert remote.calibration == tiny_scorer.calibration
    assert remote.context_length == tiny_scorer.context_length
    assert remote.limits.max_pairs == 4
    assert remote.healthy() and remote.ready()


def test_both_scorers_have_the_protocol_members() -> None:
    """mypy proves the signatures (semgrad_guard/service/protocol.py); here: every member is there."""
    members = [name for name in vars(Scorer) if not name.startswith("_")]
    assert {"score", "ascore", "score_batch", "ascore_batch", "model_name", "profile", "calibration"} <= set(
        members
    )
    for kind in (SemGradScorer, RemoteScorer):
        for name in members:
            inspect.getattr_static(kind, name)  # raises AttributeError if missing; reads no property


# ------------------------------------------------------------------------------------------------ errors
def test_bad_input_raises_the_local_error_type(remote: RemoteScorer) -> None:
    with pytest.raises(EmptyAnswerError) as local_like:
        remote.score("Who wrote Hamlet?", "")
    assert isinstance(local_like.value, InvalidInputError) and local_like.value.code == "empty_answer"
    with pytest.raises(InputTooLongError):
        remote.score("Repeat: " + "word " * 400, "word")
    with pytest.raises(EmptyAnswerError):
        remote.score_batch(PAIRS, errors="raise")  # the first bad pair, as a local batch raises
    with pytest.raises(InvalidInputError):
        remote.score("A question", float("nan"))  # type: ignore[arg-type]  # not JSON: refused here
    marked = remote.score_batch([("q", object()), ("q", "a")], errors="mark")  # type: ignore[list-item]
    assert [s.valid for s in marked] == [False, True]


def test_error_answers_are_structured(server: str) -> None:
    headers = {"authorization": f"Bearer {TOKEN}"}
    answer = httpx.post(f"{server}/v1/score", json={"prompt": "q", "answer": ""}, headers=headers)
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "empty_answer"
    assert answer.json()["error"]["type"] == "EmptyAnswerError"
    malformed = httpx.post(f"{server}/v1/score", content=b"{not json", headers=headers)
    assert malformed.status_code == 422 and malformed.json()["error"]["code"] == "invalid_input"
    missing = httpx.post(f"{server}/v1/score_batch", json={"pairs": [{"prompt": "q"}]}, headers=headers)
    assert missing.status_code == 422 and "answer" in missing.json()["error"]["message"]
    assert httpx.get(f"{server}/nowhere").json()["error"]["code"] == "not_found"


def test_every_error_code_comes_back_as_its_class() -> None:
    for kind in _subclasses(SemGradError):
        rebuilt = error_from_code(kind.code, "message", status_for(kind("x")))
        assert type(rebuilt) is kind, kind
    unknown = error_from_code("from_the_future", "m", 503)
    assert isinstance(unknown, ScorerUnavailableError) and unknown.code == "from_the_future"
    assert status_for(ModelLoadError("m")) == 503 and status_for(NonFiniteScoreError("m")) == 500


def test_an_adapters_error_class_does_not_change_the_mapping() -> None:
    # An adapter may subclass SemGradError with a richer constructor (langchain_semgrad's
    # LowConfidenceError needs the result and the answer); rebuilding a code must never call it.
    class AdapterError(SemGradError):
        code = "invalid_input"

        def __init__(self, message: str, *, extra: object) -> None:
            super().__init__(message)

    assert AdapterError not in _subclasses(SemGradError)
    assert type(error_from_code("invalid_input", "m", 422)) is InvalidInputError


def test_a_token_is_required(server: str) -> None:
    for token in (None, "wrong"):
        with RemoteScorer(server, token=token) as scorer, pytest.raises(UnauthorizedError):
            scorer.score("q", "a")
    refused = httpx.post(f"{server}/v1/score", json={"prompt": "q", "answer": "a"})
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{server}/healthz").status_code == 200  # probes need no token
    assert httpx.get(f"{server}/readyz").status_code == 200


def test_no_service_is_a_typed_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # free, and nothing listens once closed
    with RemoteScorer(f"http://127.0.0.1:{port}", connect_timeout=2) as scorer:
        with pytest.raises(ScorerUnavailableError):
            scorer.score("q", "a")
        assert not scorer.healthy()


# ------------------------------------------------------------------------------------------------ limits
def test_size_limits_are_413(server: str, remote: RemoteScorer) -> None:
    headers = {"authorization": f"Bearer {TOKEN}"}
    pairs = [{"prompt": "q", "answer": "a"}] * 5
    too_many = httpx.post(f"{server}/v1/score_batch", json={"pairs": pairs}, headers=headers)
    assert too_many.status_code == 413 and too_many.json()["error"]["code"] == "too_large"
    big = {"prompt": "q", "answer": "a" * 70_000}
    too_big = httpx.post(f"{server}/v1/score", json=big, headers=headers)
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "too_large"

    def chunked() -> Iterator[bytes]:  # no Content-Length: refused once the body passes the limit
        yield b'{"prompt": "q", "answer": "'
        for _ in range(100):
            yield b"a" * 1024
        yield b'"}'

    streamed = httpx.post(f"{server}/v1/score", content=chunked(), headers=headers)
    assert streamed.status_code == 413
    with pytest.raises(RequestTooLargeError):  # the client refuses it without sending
        remote.score_batch([("q", "a" * 70_000)])
    with pytest.raises(RequestTooLargeError):
        remote.score("q", "a" * 70_000)
    alone = remote.score("q", "a" * 70_000, errors="mark")
    assert not alone.valid and alone.invalid_reason.startswith("too_large")  # type: ignore[union-attr]
    marked = remote.score_batch([("q", "a" * 70_000), ("q", "a")], errors="mark")
    assert not marked[0].valid and marked[0].invalid_reason.startswith("too_large")  # type: ignore[union-attr]
    assert marked[1].valid


def gated(make_tiny: Callable[..., SemGradScorer], **batching: Any) -> tuple[SemGradScorer, threading.Event]:
    """A tiny scorer whose passes wait for the returned event inside the model, holding the scorer as a
    slow pass does: its queue can fill."""
    scorer = make_tiny(batch_size=1, batching=BatchingConfig(max_wait_ms=0, **batching)).load()
    gate = threading.Event()

    def held(*_: object) -> None:
        gate.wait(10)

    scorer.model.get_input_embeddings().register_forward_hook(held)
    return scorer, gate


def test_a_full_queue_is_429_with_retry_after(make_tiny: Callable[..., SemGradScorer]) -> None:
    scorer, gate = gated(make_tiny, max_queue=1, queue_timeout_s=0.05)
    with running(create_app(scorer, retry_after_s=2)) as url, RemoteScorer(url) as remote:
        remote.load()
        with httpx.Client(base_url=url, timeout=30) as client:
            waiting = []
            for answer in ("taken by the worker, held before its pass", "fills the queue"):
                body = {"prompt": "q", "answer": answer}
                waiting.append(
                    threading.Thread(target=client.post, args=("/v1/score",), kwargs={"json": body})
                )
                waiting[-1].start()
                time.sleep(0.3)
            busy = client.post("/v1/score", json={"prompt": "q", "answer": "one too many"})
            assert busy.status_code == 429, busy.text
            assert busy.headers["retry-after"] == "2" and busy.json()["error"]["code"] == "busy"
            with pytest.raises(ScorerBusyError):
                remote.score("q", "and another")
            gate.set()
            for thread in waiting:
                thread.join(10)
        assert remote.score("q", "room again").valid


def test_retries_wait_out_a_full_queue(make_tiny: Callable[..., SemGradScorer]) -> None:
    scorer, gate = gated(make_tiny, max_queue=1, queue_timeout_s=0.05)
    with running(create_app(scorer, retry_after_s=1)) as url, RemoteScorer(url, max_retries=3) as remote:
        remote.load()
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(remote.score, "q", f"held {i}") for i in range(2)]
            time.sleep(0.5)
            threading.Timer(0.3, gate.set).start()
            assert remote.score("q", "retried until there is room").valid  # 429, then a retry after 1 s
            assert all(future.result(10).valid for future in held)


def test_a_slow_answer_is_504(make_tiny: Callable[..., SemGradScorer]) -> None:
    scorer, gate = gated(make_tiny)
    with running(create_app(scorer, timeout_s=0.3)) as url, RemoteScorer(url) as remote:
        remote.load()
        with pytest.raises(ScorerTimeoutError):
            remote.score("q", "too slow")
        gate.set()
        assert remote.score("q", "in time").valid


def test_readiness_follows_the_model_load(make_tiny: Callable[..., SemGradScorer]) -> None:
    """Over ASGITransport (no lifespan): the first probe starts the load, a later one sees it done."""
    scorer = make_tiny()

    async def main() -> list[int]:
        transport = httpx.ASGITransport(app=create_app(scorer))
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            assert (await client.get("/healthz")).status_code == 200
            statuses = [(await client.get("/readyz")).status_code]
            for _ in range(200):
                statuses.append((await client.get("/readyz")).status_code)
                if statuses[-1] == 200:
                    break
                await asyncio.sleep(0.05)
            info = (await client.get("/v1/info")).json()
            assert info["model"] == "tiny" and info["calibration"] is None
        return statuses

    statuses = asyncio.run(main())
    assert statuses[-1] == 200 and set(statuses) <= {200, 503}


def test_remote_scorer_over_asgi_transport(make_tiny: Callable[..., SemGradScorer]) -> None:
    scorer = make_tiny()
    app = create_app(scorer, token=TOKEN)

    async def main() -> list[Score]:
        remote = RemoteScorer("http://service", token=TOKEN, async_transport=httpx.ASGITransport(app=app))
        async with remote:
            return await remote.ascore_batch(PAIRS, errors="mark")

    assert_same(asyncio.run(main()), scorer.score_batch(PAIRS, errors="mark"))


def test_the_app_refuses_bad_limits(make_tiny: Callable[..., SemGradScorer]) -> None:
    with pytest.raises(ValueError):
        create_app(make_tiny(), max_pairs=0)
    with pytest.raises(ValueError):
        create_app(make_tiny(), timeout_s=0)


def test_openapi_schema_names_the_endpoints(make_tiny: Callable[..., SemGradScorer]) -> None:
    paths = create_app(make_tiny()).openapi()["paths"]
    assert {"/v1/score", "/v1/score_batch", "/v1/info", "/healthz", "/readyz"} <= set(paths)
    json.dumps(paths)


def test_app_from_env_reads_its_settings(tiny_dir: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from semgrad_guard.service.app import app_from_env

    for name, value in {
        "SEMGRAD_GUARD_MODEL": str(tiny_dir),
        "SEMGRAD_GUARD_DEVICE": "cpu",
        "SEMGRAD_GUARD_TOKEN": TOKEN,
        "SEMGRAD_GUARD_MAX_PAIRS": "3",
        "SEMGRAD_GUARD_TIMEOUT_S": "none",
    }.items():
        monkeypatch.setenv(name, value)
    app = app_from_env()

    async def main() -> dict[str, Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            assert (await client.get("/v1/info")).status_code == 401
            answer = await client.get("/v1/info", headers={"authorization": f"Bearer {TOKEN}"})
            return dict(answer.json())

    info = asyncio.run(main())
    assert info["limits"] == {"max_body_bytes": 4 << 20, "max_pairs": 3, "timeout_s": None}
    assert info["calibration"] is None


# ----------------------------------------------------------------------- the default scorer and adapters
@pytest.fixture
def service_by_env(server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """SEMGRAD_GUARD_URL and SEMGRAD_GUARD_TOKEN name the service; the default scorer is made afresh."""
    monkeypatch.setenv("SEMGRAD_GUARD_URL", server)
    monkeypatch.setenv("SEMGRAD_GUARD_TOKEN", TOKEN)
    set_default_scorer(None)
    try:
        yield server
    finally:
        set_default_scorer(None)


def test_the_environment_makes_the_default_scorer_remote(
    service_by_env: str, tiny_scorer: SemGradScorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = default_scorer()
    assert isinstance(remote, RemoteScorer) and remote.url == service_by_env
    assert default_scorer() is remote  # shared, like the local default
    assert_same([remote.score(*PAIRS[0])], [tiny_scorer.score(*PAIRS[0])])
    assert remote._timeout.read == 60.0
    for value, seconds in (("2.5", 2.5), ("none", None)):
        monkeypatch.setenv("SEMGRAD_GUARD_TIMEOUT", value)
        assert RemoteScorer.from_env()._timeout.read == seconds
    for bad in ("soon", "0", "-1"):
        monkeypatch.setenv("SEMGRAD_GUARD_TIMEOUT", bad)
        with pytest.raises(ValueError, match="SEMGRAD_GUARD_TIMEOUT"):
            RemoteScorer.from_env()
    monkeypatch.delenv("SEMGRAD_GUARD_URL")
    set_default_scorer(None)
    assert isinstance(default_scorer(), SemGradScorer)  # unset: the embedded model again (not loaded)


def test_every_adapter_scores_through_the_service_by_environment(
    service_by_env: str, tiny_scorer: SemGradScorer
) -> None:
    """With only the variables set, each adapter's default scorer is the service: the same Score (or
    verdict) as the same adapter over the local scorer."""
    pytest.importorskip("langchain_semgrad")
    pytest.importorskip("llama_index.evaluation.semgrad")
    from langchain_core.language_models.fake_chat_models import FakeListChatModel
    from langchain_semgrad import SemGradCallbackHandler, SemGradGuard
    from llama_index.evaluation.semgrad import SemGradEvaluator

    question, answer = PAIRS[0]
    chat = FakeListChatModel(responses=[answer])

    def guarded(scorer: Scorer | None) -> Score:
        message = SemGradGuard(chat, scorer=scorer, max_risk=0.5).invoke(question)
        return Score.model_validate(message.response_metadata["semgrad"]["score"])

    def observed(scorer: Scorer | None) -> Score:
        handler = SemGradCallbackHandler(scorer=scorer)
        chat.invoke(question, config={"callbacks": [handler]})
        assert handler.results[-1].score is not None, handler.results[-1].error
        return handler.results[-1].score

    for adapter in (guarded, observed):
        assert_same([adapter(None)], [adapter(tiny_scorer)])
    remote = SemGradEvaluator(max_risk=0.5).evaluate(query=question, response=answer)
    local = SemGradEvaluator(scorer=tiny_scorer, max_risk=0.5).evaluate(query=question, response=answer)
    assert remote.score is not None and local.score is not None
    assert (remote.passing, remote.invalid_result) == (local.passing, local.invalid_result)
    assert math.isclose(remote.score, local.score, rel_tol=1e-3)


def test_a_lost_service_follows_the_adapters_failure_policy() -> None:
    """Nothing listens on the port: ScorerUnavailableError, which fail-open passes and fail-closed routes."""
    pytest.importorskip("langchain_semgrad")
    from langchain_core.language_models.fake_chat_models import FakeListChatModel
    from langchain_semgrad import SemGradGuard

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with RemoteScorer(f"http://127.0.0.1:{port}", connect_timeout=2) as gone:
        for policy, route in (("fail_open", "pass"), ("fail_closed", "annotate")):
            guard = SemGradGuard(FakeListChatModel(responses=["Paris."]), scorer=gone, on_scorer_error=policy)
            result = guard.invoke("What is the capital of France?").response_metadata["semgrad"]
            assert result["score"] is None and "ScorerUnavailableError" in result["scorer_error"], result
            assert (result["route"], result["flagged"]) == (route, True)
