"""The guard facing a failing review queue, and streams whose fallback returns a whole message."""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.runnables import RunnableLambda
from langchain_semgrad import GuardResult, LowConfidenceError, ReviewQueue, SemGradGuard
from langchain_semgrad import runnables as guard_module
from langchain_semgrad.review import ReviewQueueError

HARD = "a hard question"


def result_of(message: Any) -> GuardResult:
    return GuardResult.model_validate(message.response_metadata["semgrad"])


def _corrupt(path: Path) -> Path:
    path.write_bytes(b"this is not a database, just text\n" * 300)
    return path


def test_a_failing_queue_fails_open_flagged(chat, scorer, tmp_path, caplog) -> None:
    queue = ReviewQueue(tmp_path / "q.sqlite3")
    _corrupt(tmp_path / "q.sqlite3")
    guard = SemGradGuard(
        chat, policy="human", review_queue=queue, scorer=scorer, threshold=1e-3, threshold_field="semgrad"
    )
    with caplog.at_level(logging.WARNING, logger="langchain_semgrad.runnables"):
        out = guard.invoke(HARD)
    result = result_of(out)
    assert out.content == f"unsure about {HARD}"  # the answer, flagged: no holding answer without a review
    assert (result.route, result.flagged, result.review_id) == ("annotate", True, None)
    assert result.review_error is not None and "ReviewQueueError" in result.review_error
    assert "fail_open" in result.review_error and "review queue failed" in caplog.text


def test_a_locked_queue_fails_closed_with_low_confidence_error(chat, scorer, tmp_path) -> None:
    path = tmp_path / "q.sqlite3"
    queue = ReviewQueue(path, timeout=0.05)
    guard = SemGradGuard(
        chat,
        policy="human",
        review_queue=queue,
        scorer=scorer,
        threshold=1e-3,
        threshold_field="semgrad",
        on_scorer_error="fail_closed",
    )
    with closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(LowConfidenceError, match="review queue failed") as caught:
                guard.invoke(HARD)
        finally:
            other.execute("ROLLBACK")
    assert caught.value.result.route == "raise" and caught.value.result.review_error is not None
    assert isinstance(caught.value.__cause__, ReviewQueueError)


@pytest.mark.asyncio
async def test_the_default_queue_failing_to_open_follows_the_policy(
    chat, scorer, tmp_path, monkeypatch
) -> None:
    def broken() -> ReviewQueue:
        raise ReviewQueueError(f"{tmp_path} is not a review queue")

    monkeypatch.setattr(guard_module, "_default_queue", broken)
    guard = SemGradGuard(chat, policy="human", scorer=scorer, threshold=1e-3, threshold_field="semgrad")
    out = await guard.ainvoke(HARD)
    assert result_of(out).route == "annotate" and "not a review queue" in (result_of(out).review_error or "")


def test_stream_keeps_the_metadata_when_the_fallback_returns_a_whole_message(chat, scorer) -> None:
    rescue = RunnableLambda(lambda _: AIMessage("rescued"))
    guard = SemGradGuard(
        chat, policy="fallback", fallback=rescue, scorer=scorer, threshold=1e-3, threshold_field="semgrad"
    )
    chunks = list(guard.stream(HARD))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole += chunk
    assert whole.content == "rescued"
    assert result_of(whole).route == "fallback" == result_of(guard.invoke(HARD)).route


class RunSink(BaseCallbackHandler):
    """What a tracer sees: each chain run's name, parent, tags and metadata."""

    def __init__(self) -> None:
        self.runs: dict[Any, dict[str, Any]] = {}

    def on_chain_start(self, serialized: Any, inputs: Any, *, run_id: Any, **kwargs: Any) -> None:
        self.runs[run_id] = {
            "name": kwargs.get("name"),
            "parent": kwargs.get("parent_run_id"),
            "tags": kwargs.get("tags") or [],
            "metadata": kwargs.get("metadata") or {},
        }


def test_tracers_see_the_decision_on_the_guard_run(chat, make_scorer) -> None:
    sink = RunSink()
    guard = SemGradGuard(chat, scorer=make_scorer(calibrated=True), max_risk=0.5).with_config(
        run_name="guard"
    )
    out = guard.invoke(HARD, {"callbacks": [sink]})
    (guard_id,) = [run_id for run_id, run in sink.runs.items() if run["name"] == "guard"]
    (decision,) = [run for run in sink.runs.values() if run["name"] == "semgrad_decision"]
    assert decision["parent"] == guard_id
    assert {"semgrad:annotate", "semgrad:flagged"} <= set(decision["tags"])
    assert decision["metadata"] == {
        "semgrad_route": "annotate",
        "semgrad_risk": 0.9,
        "semgrad_confidence": pytest.approx(0.1),
        "semgrad_flagged": True,
    }
    result = result_of(out)
    assert (result.risk, result.flagged) == (0.9, True) and result.confidence == pytest.approx(0.1)


@pytest.mark.asyncio
async def test_astream_events_show_the_tagged_decision(chat, make_scorer) -> None:
    guard = SemGradGuard(chat, scorer=make_scorer(calibrated=True), max_risk=0.5)
    events = [e async for e in guard.astream_events("an easy question", version="v2")]
    ends = [e for e in events if e["name"] == "semgrad_decision" and e["event"] == "on_chain_end"]
    assert len(ends) == 1 and "semgrad:pass" in ends[0]["tags"]
    assert ends[0]["metadata"]["semgrad_route"] == "pass" and ends[0]["data"]["output"]["route"] == "pass"
