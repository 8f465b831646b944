"""A durable human-review queue in SQLite, and the ``langchain-semgrad-review`` command that works it.

``SemGradGuard(policy="human")`` puts each low-confidence answer here; a reviewer lists the pending items and
resolves them with a corrected answer. Every operation opens its own connection, so one queue object can be
shared by threads, and a new object on the same file (after a restart) sees everything written before.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from semgrad_guard import Score
from semgrad_guard.prompts import Prompt

__all__ = ["ReviewItem", "ReviewQueue", "default_review_path", "main"]

ReviewStatus = Literal["pending", "resolved"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS review_items (
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
        path: the database file (created with its folders on first use); default :func:`default_review_path`.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        """Create the file and table if they do not exist yet."""
        self.path = Path(path) if path is not None else default_review_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.execute(_SCHEMA)

    def __repr__(self) -> str:
        """Show the file the queue lives in."""
        return f"ReviewQueue({str(self.path)!r})"

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A short-lived connection: one transaction, committed on success, rolled back on error."""
        with closing(sqlite3.connect(self.path, timeout=30)) as conn, conn:
            yield conn

    def add(
        self, prompt: Prompt, answer: str, score: Score | None = None, details: dict[str, Any] | None = None
    ) -> ReviewItem:
        """Queue an answer for review and return the stored item."""
        item = ReviewItem(
            id=uuid.uuid4().hex,
            created_at=datetime.now(timezone.utc),
            status="pending",
            prompt=prompt if isinstance(prompt, str) else [dict(m) for m in prompt],
            answer=answer,
            score=score,
            details=dict(details or {}),
        )
        with self._connect() as conn:
            conn.execute(
                f"INSERT INTO review_items ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        """The item with this id; ``KeyError`` if there is none."""
        with self._connect() as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM review_items WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            raise KeyError(f"no review item {item_id!r} in {self.path}")
        return _item(row)

    def items(self, status: ReviewStatus | None = "pending") -> list[ReviewItem]:
        """Items with this status (``None``: all), oldest first."""
        query = f"SELECT {_COLUMNS} FROM review_items"
        params: tuple[str, ...] = ()
        if status is not None:
            query, params = f"{query} WHERE status = ?", (status,)
        with self._connect() as conn:
            rows = conn.execute(f"{query} ORDER BY created_at, rowid", params).fetchall()
        return [_item(row) for row in rows]

    def resolve(self, item_id: str, resolution: str) -> ReviewItem:
        """Record the reviewer's answer (or verdict) for an item and mark it resolved."""
        now = datetime.now(timezone.utc).isoformat()
        with self._connect() as conn:
            updated = conn.execute(
                "UPDATE review_items SET status = 'resolved', resolution = ?, resolved_at = ? WHERE id = ?",
                (resolution, now, item_id),
            ).rowcount
        if not updated:
            raise KeyError(f"no review item {item_id!r} in {self.path}")
        return self.get(item_id)


def _item(row: Sequence[Any]) -> ReviewItem:
    item_id, created, status, prompt, answer, score, details, resolution, resolved = row
    return ReviewItem(
        id=item_id,
        created_at=datetime.fromisoformat(created),
        status=status,
        prompt=json.loads(prompt),
        answer=answer,
        score=Score.model_validate_json(score) if score else None,
        details=json.loads(details),
        resolution=resolution,
        resolved_at=datetime.fromisoformat(resolved) if resolved else None,
    )


def _summary(item: ReviewItem) -> str:
    prompt = item.prompt if isinstance(item.prompt, str) else item.prompt[-1]["content"]
    value = f"{item.score.semgrad:.3g}" if item.score is not None and item.score.semgrad is not None else "-"
    line = f"{item.id}  {item.status:<8}  semgrad={value:<9}  {prompt[:60]!r} -> {item.answer[:40]!r}"
    return f"{line}  => {item.resolution!r}" if item.resolution is not None else line


def main(argv: Sequence[str] | None = None) -> int:
    """``langchain-semgrad-review``: list, show and resolve queued answers."""
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
    resolving = commands.add_parser("resolve", help="resolve an item with the reviewer's answer")
    resolving.add_argument("id")
    resolving.add_argument("resolution", help="the corrected answer or the verdict")
    args = parser.parse_args(argv)

    queue = ReviewQueue(args.db)
    try:
        if args.command == "list":
            lines = [_summary(item) for item in queue.items(None if args.all else "pending")]
            sys.stdout.write("".join(f"{line}\n" for line in lines) or "no items\n")
        elif args.command == "show":
            sys.stdout.write(queue.get(args.id).model_dump_json(indent=2) + "\n")
        else:
            sys.stdout.write(_summary(queue.resolve(args.id, args.resolution)) + "\n")
    except KeyError as exc:
        sys.stderr.write(f"error: {exc.args[0]}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
