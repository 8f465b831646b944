"""The review queue and its command line facing locked, corrupt and mistyped files."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from langchain_semgrad import review
from langchain_semgrad.review import ReviewQueue, main

from semgrad_guard import Score


@contextmanager
def _locked(path: Path, how: str) -> Iterator[None]:
    """Another connection holding the database's lock (``IMMEDIATE``: a writer; ``EXCLUSIVE``: all)."""
    with closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute(f"BEGIN {how}")
        try:
            yield
        finally:
            other.execute("ROLLBACK")


def _queue_with_items(path: Path, n: int = 3) -> list[str]:
    queue = ReviewQueue(path)
    return [queue.add(f"Question {i}?", f"Answer {i}", Score(model="m", semgrad=0.5)).id for i in range(n)]


@pytest.mark.parametrize("how", ["IMMEDIATE", "EXCLUSIVE"])
def test_a_locked_queue_raises_its_typed_error_quickly(tmp_path: Path, how: str) -> None:
    """What the guard's human route sees: a ReviewQueueError within seconds, not a 30 s sqlite3 error."""
    path = tmp_path / "q.sqlite3"
    queue = ReviewQueue(path)
    with _locked(path, how):
        start = time.monotonic()
        with pytest.raises(review.ReviewQueueError, match="locked"):
            queue.add("Capital of Peru?", "Quito")
        assert time.monotonic() - start < 10
        if how == "EXCLUSIVE":  # opening the queue (the guard's default queue) fails the same way
            with pytest.raises(review.ReviewQueueError, match="locked"):
                ReviewQueue(path)
    assert queue.add("Capital of Peru?", "Lima").answer == "Lima"  # usable again once the lock is gone


def test_a_short_timeout_can_be_chosen(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    queue = ReviewQueue(path, timeout=0.05)
    with _locked(path, "IMMEDIATE"), pytest.raises(review.ReviewQueueError):
        queue.add("q", "a")


@pytest.mark.parametrize(
    "content", [b"this is not a database, just text\n" * 300, b"SQLite format 3\x00" + b"\xff" * 5000]
)
def test_a_corrupt_queue_raises_its_typed_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "q.sqlite3"
    path.write_bytes(content)
    with pytest.raises(review.ReviewQueueError):
        ReviewQueue(path).add("q", "a")
    assert path.read_bytes() == content


def test_a_path_under_a_file_raises_its_typed_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(review.ReviewQueueError):
        ReviewQueue(tmp_path / "file" / "q.sqlite3")
    with pytest.raises(review.ReviewQueueError):
        ReviewQueue(tmp_path)  # a folder


def test_the_queue_is_created_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "made" / "here" / "q.sqlite3"
        ReviewQueue(path).add("q", "a")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700


def test_an_item_cannot_be_resolved_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "q.sqlite3"
    first, second = _queue_with_items(path, 2)
    queue = ReviewQueue(path)
    queue.resolve(first, "Lima")
    with pytest.raises(review.AlreadyResolvedError):
        queue.resolve(first, "Quito")
    assert queue.get(first).resolution == "Lima"

    assert main(["--db", str(path), "resolve", second, "Santiago"]) == 0
    capsys.readouterr()
    assert main(["--db", str(path), "resolve", second, "Bogota"]) == 1
    err = capsys.readouterr().err
    assert "already resolved" in err and err.count("\n") == 1
    assert queue.get(second).resolution == "Santiago"


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str], code: int = 2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _other_schema(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")


def _old_schema(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE review_items (id TEXT PRIMARY KEY, prompt TEXT)")


def _truncated(path: Path) -> None:
    _queue_with_items(path, 200)
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.truncate(size // 2)


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: p.write_bytes(b"garbage " * 1000), "not a database"),
        (lambda p: p.write_bytes(b""), "not a review queue"),
        (_other_schema, "not a review queue"),
        (_old_schema, "has no created_at"),
        (_truncated, "malformed"),
        (lambda p: p.mkdir(), "is a folder"),
    ],
)
@pytest.mark.parametrize("command", [["list"], ["list", "--all"], ["show", "x"], ["resolve", "x", "y"]])
def test_cli_unusable_files_exit_2_with_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make: Callable[[Path], object],
    needle: str,
    command: list[str],
) -> None:
    path = tmp_path / "q.sqlite3"
    make(path)
    before = path.read_bytes() if path.is_file() else None
    assert needle in _refused(["--db", str(path), *command], capsys)
    assert (path.read_bytes() if path.is_file() else None) == before


def test_cli_locked_file_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "q.sqlite3"
    (item,) = _queue_with_items(path, 1)
    with _locked(path, "EXCLUSIVE"):
        assert "locked" in _refused(["--db", str(path), "list"], capsys)
        assert "locked" in _refused(["--db", str(path), "resolve", item, "x"], capsys)


def test_cli_never_creates_a_mistyped_queue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    for path in (tmp_path / "typo" / "q.sqlite3", tmp_path / "q.sqlite3", tmp_path / "file" / "q.sqlite3"):
        assert "no review queue" in _refused(["--db", str(path), "list"], capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def _insert_raw(path: Path, item_id: str, prompt: str, created: str = "2030-01-01T00:00:00+00:00") -> None:
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "INSERT INTO review_items (id, created_at, status, prompt, answer, score, details) "
            "VALUES (?, ?, 'pending', ?, 'an answer', NULL, '{}')",
            (item_id, created, prompt),
        )


def test_cli_lists_what_it_can_of_a_partly_corrupt_queue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "q.sqlite3"
    good = _queue_with_items(path, 2)
    _insert_raw(path, "bad-json", "{not json")
    _insert_raw(path, "bad-date", '"Question?"', created="yesterday")
    _insert_raw(path, "no-messages", "[]")
    _insert_raw(path, "no-content", '[{"role": "user"}]')
    assert main(["--db", str(path), "list"]) == 1
    captured = capsys.readouterr()
    listed = captured.out.splitlines()
    assert [line.split()[0] for line in listed] == [*good, "no-messages", "no-content"]
    warnings = captured.err.splitlines()
    assert len(warnings) == 2 and all(w.startswith("warning: skipped row ") for w in warnings)
    assert "'bad-json'" in warnings[0] and "'bad-date'" in warnings[1]
    assert "Traceback" not in captured.err

    assert "'bad-json' is unreadable" in _refused(["--db", str(path), "show", "bad-json"], capsys)
    assert "'bad-json' is unreadable" in _refused(["--db", str(path), "resolve", "bad-json", "x"], capsys)
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT status FROM review_items WHERE id = 'bad-json'").fetchone() == (
            "pending",
        )
    assert main(["--db", str(path), "show", "no-messages"]) == 0
    assert main(["--db", str(path), "resolve", "no-content", "fixed"]) == 0
    assert "=> 'fixed'" in capsys.readouterr().out
