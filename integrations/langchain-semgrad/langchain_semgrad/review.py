"""A durable human-review queue in SQLite, and the ``langchain-semgrad-review`` command that works it.

``SemGradGuard(policy="human")`` puts each low-confidence answer here; a reviewer lists the pending items and
resolves them with a corrected answer. Every operation opens its own connection, so one queue object can be
shared by threads, and a new object on the same file (after a restart) sees everything written before.

Errors:
    :class:`ReviewQueueError` (a ``RuntimeError``) is the one error a queue raises when its *file* cannot be
    used: ``ReviewQueue(...)`` and every method raise it for a database that is locked by another writer for
    longer than ``timeout`` seconds (2 s by default, not SQLite's usual 30 s), corrupt, truncated, not SQLite
    at all, or another program's database, for a path that is a folder or lies under a file, and for a
    folder that cannot be created. A caller that must keep answering when the queue is unusable (the guard's
    ``human`` route) catches ``ReviewQueueError`` around both opening the queue and :meth:`ReviewQueue.add`,
    then applies its own fail-open or fail-closed policy. :meth:`ReviewQueue.get` and
    :meth:`ReviewQueue.items` also raise it for a stored row that cannot be read back;
    :meth:`ReviewQueue.readable_items` skips such rows and says which. Item-level refusals are not
    ``ReviewQueueError``: an unknown id is a ``KeyError``, resolving an item twice an
    :class:`AlreadyResolvedError` (a ``ValueError``).

Files:
    The queue creates a missing database file with mode 0600, and missing folders above it with mode 0700:
    the queue holds users' prompts and answers. Files and folders that already exist are left as they are.
    ``ReviewQueue(path, create=False)`` (what the command line uses) opens an existing queue only.
    Each ``add`` and ``resolve`` is one SQLite transaction, kept once it returns even if the process is
    killed right after. Text SQLite cannot store (a lone surrogate) is kept with U+FFFD in its place.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import urllib.parse
import uuid
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from semgrad_guard import Score
from semgrad_guard.prompts import Prompt

__all__ = [
    "AlreadyResolvedError",
    "ReviewItem",
    "ReviewQueue",
    "ReviewQueueError",
    "default_review_path",
    "main",
]

ReviewStatus = Literal["pending", "resolved"]

_TABLE = "review_items"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {_TABLE} (
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    status TEXT NOT NULL,
    prompt TEXT NOT NULL,
    answer TEXT NOT NULL,
    score TEXT,
    details TEXT NOT NULL,
    resolution TEXT,
    resolved_at TEXT
)
"""
_COLUMNS = "id, created_at, status, prompt, answer, score, details, resolution, resolved_at"
DEFAULT_TIMEOUT_S = 2.0
"""Seconds an operation waits for another writer's lock before it raises :class:`ReviewQueueError`."""


class ReviewQueueError(RuntimeError):
    """The review queue's file cannot be used: locked too long, corrupt, not a queue, or not reachable."""


class AlreadyResolvedError(ValueError):
    """The item was resolved before; its first resolution is kept."""


def default_review_path() -> Path:
    """``$SEMGRAD_REVIEW_DB`` if set, else ``~/.local/share/semgrad/review.sqlite3``."""
    configured = os.environ.get("SEMGRAD_REVIEW_DB")
    if configured:
        return Path(configured)
    return Path.home() / ".local" / "share" / "semgrad" / "review.sqlite3"


class ReviewItem(BaseModel):
    """One answer waiting for (or given) a human verdict."""

    model_config = ConfigDict(frozen=True)

    id: str
    created_at: datetime
    status: ReviewStatus
    prompt: str | list[dict[str, str]]
    answer: str
    score: Score | None = None
    details: dict[str, Any] = {}
    resolution: str | None = None
    resolved_at: datetime | None = None


class ReviewQueue:
    """Review items stored in one SQLite file; safe to share across threads and processes.

    Args:
        path: the database file; default :func:`default_review_path`.
        create: create the file (0600) and its missing folders (0700) if needed; ``False`` opens an existing
            queue only (a mistyped path is an error, not a new empty queue).
        timeout: seconds to wait for another writer's lock before raising :class:`ReviewQueueError`.

    Raises:
        ReviewQueueError: the file cannot be opened or created, or is not a review queue (see the module).
    """

    def __init__(
        self, path: str | Path | None = None, *, create: bool = True, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        """Open the queue, creating the file and table first if ``create`` and they do not exist yet."""
        self.path = Path(path) if path is not None else default_review_path()
        self.timeout = timeout
        self._create = create
        if self.path.is_dir():
            raise ReviewQueueError(f"review queue {self.path}: is a folder, not a file")
        if create:
            self._make_file()
        elif not self.path.is_file():
            raise ReviewQueueError(f"no review queue at {self.path}")
        with self._connect() as conn:
            if create:
                conn.execute(_SCHEMA)
            columns = {row[1] for row in conn.execute(f"PRAGMA table_info({_TABLE})")}
        missing = [c for c in _COLUMNS.split(", ") if c not in columns]
        if missing:
            found = f"its {_TABLE} table has no {', '.join(missing)}" if columns else f"no {_TABLE} table"
            raise ReviewQueueError(f"{self.path} is not a review queue ({found})")

    def __repr__(self) -> str:
        """Show the file the queue lives in."""
        return f"ReviewQueue({str(self.path)!r})"

    def _make_file(self) -> None:
        """Create missing folders (0700) and the database file (0600); existing ones are left as they are."""
        try:
            missing = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
            for folder in reversed(missing):
                with suppress(FileExistsError):  # another process made it first
                    folder.mkdir(mode=0o700)
            descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            os.close(descriptor)
        except FileExistsError:
            pass  # an existing queue (or another process just created it): opened as it is
        except OSError as exc:
            raise ReviewQueueError(
                f"review queue {self.path}: cannot create it: {exc.strerror or exc}"
            ) from exc

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A short-lived connection: one transaction, committed on success, rolled back on error.

        Any SQLite failure (locked past ``timeout``, corrupt, not a database) becomes a ReviewQueueError.
        """
        target = self.path if self._create else _read_write_uri(self.path)
        try:
            with closing(sqlite3.connect(target, timeout=self.timeout, uri=not self._create)) as conn, conn:
                yield conn
        except sqlite3.Error as exc:
            raise ReviewQueueError(f"review queue {self.path}: {exc}") from exc

    def add(
        self, prompt: Prompt, answer: str, score: Score | None = None, details: dict[str, Any] | None = None
    ) -> ReviewItem:
        """Queue an answer for review and return the stored item (``ReviewQueueError`` if it cannot be)."""
        item = ReviewItem(
            id=uuid.uuid4().hex,
            created_at=datetime.now(timezone.utc),
            status="pending",
            prompt=valid_unicode(prompt if isinstance(prompt, str) else [dict(m) for m in prompt]),
            answer=valid_unicode(answer),
            score=score,
            details=valid_unicode(json.loads(json.dumps(dict(details or {}), default=str))),
        )
        with self._connect() as conn:
            conn.execute(
                f"INSERT INTO {_TABLE} ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    item.id,
                    item.created_at.isoformat(),
                    item.status,
                    json.dumps(item.prompt),
                    item.answer,
                    score.model_dump_json() if score is not None else None,
                    json.dumps(item.details, default=str),
                    None,
                    None,
                ),
            )
        return item

    def get(self, item_id: str) -> ReviewItem:
        """The item with this id; ``KeyError`` if there is none, ``ReviewQueueError`` if it is unreadable."""
        with self._connect() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM {_TABLE} WHERE id = ?", (valid_unicode(item_id),)
            ).fetchone()
        if row is None:
            raise KeyError(f"no review item {item_id!r} in {self.path}")
        try:
            return _item(row)
        except _UnreadableRow as exc:
            raise ReviewQueueError(f"review queue {self.path}: {exc}") from None

    def items(self, status: ReviewStatus | None = "pending") -> list[ReviewItem]:
        """Items with this status (``None``: all), oldest first; ``ReviewQueueError`` on an unreadable row."""
        items, skipped = self.readable_items(status)
        if skipped:
            raise ReviewQueueError(f"review queue {self.path}: {skipped[0]}")
        return items

    def readable_items(self, status: ReviewStatus | None = "pending") -> tuple[list[ReviewItem], list[str]]:
        """Like :meth:`items`, but rows that cannot be read are skipped: (items, why each skip happened).

        A file damaged partway lists the rows before the damage, and says where reading stopped.
        """
        query = f"SELECT {_COLUMNS} FROM {_TABLE}"
        params: tuple[str, ...] = ()
        if status is not None:
            query, params = f"{query} WHERE status = ?", (status,)
        items: list[ReviewItem] = []
        skipped: list[str] = []
        with self._connect() as conn:
            rows = conn.execute(f"{query} ORDER BY created_at, rowid", params)
            while True:
                try:
                    row = rows.fetchone()
                except sqlite3.Error as exc:
                    skipped.append(f"stopped reading after {len(items) + len(skipped)} rows: {exc}")
                    break
                if row is None:
                    break
                try:
                    items.append(_item(row))
                except _UnreadableRow as exc:
                    skipped.append(str(exc))
        return items, skipped

    def resolve(self, item_id: str, resolution: str) -> ReviewItem:
        """Record the reviewer's answer (or verdict) for a pending item and mark it resolved.

        Raises:
            KeyError: there is no such item.
            AlreadyResolvedError: the item was resolved before (its first resolution is kept).
            ReviewQueueError: the file cannot be used, or the item's row cannot be read.
        """
        current = self.get(item_id)  # KeyError if there is none, ReviewQueueError if it is unreadable
        if current.status != "pending":
            raise AlreadyResolvedError(f"review item {item_id!r} is already {current.status}; left as it is")
        now = datetime.now(timezone.utc).isoformat()
        with self._connect() as conn:
            updated = conn.execute(
                f"UPDATE {_TABLE} SET status = 'resolved', resolution = ?, resolved_at = ? "
                "WHERE id = ? AND status = 'pending'",
                (valid_unicode(resolution), now, item_id),
            ).rowcount
        if not updated:  # resolved by someone else since it was read
            raise AlreadyResolvedError(f"review item {item_id!r} was resolved meanwhile; left as it is")
        return self.get(item_id)


def valid_unicode(value: Any) -> Any:
    """``value`` with every string in it made valid Unicode, so SQLite can store it and JSON write it.

    A lone surrogate (from undecodable input or a broken escape) becomes U+FFFD; a surrogate pair is joined.
    """
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [valid_unicode(item) for item in value]
    if isinstance(value, dict):
        return {valid_unicode(key): valid_unicode(item) for key, item in value.items()}
    return value


def _read_write_uri(path: Path) -> str:
    """A SQLite URI that opens ``path`` for reading and writing but never creates it."""
    return f"file:{urllib.parse.quote(str(path.resolve()))}?mode=rw"


class _UnreadableRow(ValueError):
    """A stored row that does not make a ReviewItem (bad JSON, wrong types)."""


def _item(row: Sequence[Any]) -> ReviewItem:
    item_id, created, status, prompt, answer, score, details, resolution, resolved = row
    try:
        return ReviewItem(
            id=item_id,
            created_at=datetime.fromisoformat(created),
            status=status,
            prompt=valid_unicode(json.loads(prompt)),  # rows written before text was made storable
            answer=answer,
            score=Score.model_validate_json(score) if score else None,
            details=valid_unicode(json.loads(details)),
            resolution=resolution,
            resolved_at=datetime.fromisoformat(resolved) if resolved else None,
        )
    except (ValueError, TypeError) as exc:  # JSON, dates and pydantic validation all raise ValueError
        problem = " ".join(str(exc).split())[:200]
        raise _UnreadableRow(f"row {item_id!r} is unreadable ({type(exc).__name__}: {problem})") from None


def _summary(item: ReviewItem) -> str:
    if isinstance(item.prompt, str):
        prompt = item.prompt
    else:
        prompt = item.prompt[-1].get("content", "") if item.prompt else "(no messages)"
    value = f"{item.score.semgrad:.3g}" if item.score is not None and item.score.semgrad is not None else "-"
    line = f"{item.id}  {item.status:<8}  semgrad={value:<9}  {prompt[:60]!r} -> {item.answer[:40]!r}"
    return f"{line}  => {item.resolution!r}" if item.resolution is not None else line


def main(argv: Sequence[str] | None = None) -> int:
    """``langchain-semgrad-review``: list, show and resolve queued answers.

    Exit status: 0 done; 1 no such item, an item already resolved, or a listing that skipped unreadable
    rows (each named on standard error); 2 a queue file that is missing or cannot be used.
    """
    parser = argparse.ArgumentParser(
        prog="langchain-semgrad-review", description="Work the queue of answers SemGradGuard sent for review."
    )
    parser.add_argument(
        "--db", type=Path, default=None, help=f"queue file (default: {default_review_path()})"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="list pending items (or --all)")
    listing.add_argument("--all", action="store_true", help="include resolved items")
    commands.add_parser("show", help="print one item as JSON").add_argument("id")
    resolving = commands.add_parser("resolve", help="resolve a pending item with the reviewer's answer")
    resolving.add_argument("id")
    resolving.add_argument("resolution", help="the corrected answer or the verdict")
    args = parser.parse_args(argv)

    try:
        queue = ReviewQueue(args.db, create=False)
        if args.command == "list":
            items, skipped = queue.readable_items(None if args.all else "pending")
            lines = [_summary(item) for item in items]
            sys.stdout.write("".join(f"{line}\n" for line in lines) or "no items\n")
            for reason in skipped:
                sys.stderr.write(f"warning: skipped {reason}\n")
            return 1 if skipped else 0
        if args.command == "show":
            sys.stdout.write(queue.get(args.id).model_dump_json(indent=2) + "\n")
        else:
            sys.stdout.write(_summary(queue.resolve(args.id, args.resolution)) + "\n")
    except ReviewQueueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except KeyError as exc:
        sys.stderr.write(f"error: {exc.args[0]}\n")
        return 1
    except AlreadyResolvedError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
