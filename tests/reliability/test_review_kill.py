"""The review queue killed mid-write: writer and resolver processes are SIGKILLed by PID while they add and
resolve items. Every acknowledged item and resolution survives, none is duplicated or half-written, and
SQLite's integrity check passes; text that is not Unicode is stored readably instead of failing the add."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from langchain_semgrad.review import ReviewQueue, main

WRITER = """
import sys
from langchain_semgrad.review import ReviewQueue
queue, name = ReviewQueue(sys.argv[1], timeout=60), sys.argv[2]
for seq in range(10**9):
    item = queue.add(f"question {name}-{seq}", f"answer {name}-{seq}", details={"writer": name, "seq": seq})
    print("added", item.id, name, seq, flush=True)
"""
RESOLVER = """
import sys
from langchain_semgrad.review import AlreadyResolvedError, ReviewQueue
queue = ReviewQueue(sys.argv[1], timeout=60)
while True:
    for item in queue.items():
        try:
            queue.resolve(item.id, "fixed " + item.id)
        except AlreadyResolvedError:
            continue
        print("resolved", item.id, flush=True)
"""
ROUNDS, WRITERS, ACKS_BEFORE_KILL = 3, 2, 8
WAIT_S = 300  # a deadlock guard for a loaded CI machine, not a speed requirement


class Child:
    """A Python process running ``script`` whose complete stdout lines are collected as they come."""

    def __init__(self, script: str, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            if raw.endswith(b"\n"):  # a line cut by the kill was never acknowledged
                self.lines.append(raw.decode())

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(WAIT_S)
        self.reader.join(WAIT_S)
        errors = self.process.stderr.read().decode() if self.process.stderr else ""
        assert self.process.returncode == -signal.SIGKILL, errors[-2000:]  # it died of the kill, not before


def test_no_acknowledged_item_is_lost_when_writers_are_killed(tmp_path: Path) -> None:
    path = tmp_path / "queue.sqlite3"
    journal = path.with_name(path.name + "-journal")
    chance = random.Random(0)
    added: dict[str, tuple[str, int]] = {}
    resolved: set[str] = set()
    hot_journals = 0
    for round_ in range(ROUNDS):
        writers = [Child(WRITER, str(path), f"r{round_}w{k}") for k in range(WRITERS)]
        resolver = Child(RESOLVER, str(path))
        start = time.monotonic()
        while any(len(w.lines) < ACKS_BEFORE_KILL for w in writers):  # let every writer commit some
            assert time.monotonic() - start < WAIT_S, "the writers stalled"
            time.sleep(0.01)
        time.sleep(chance.uniform(0, 0.05))  # then kill at an arbitrary moment of their loops
        for child in [*writers, resolver]:
            child.kill()
        hot_journals += journal.exists() and journal.stat().st_size > 0  # killed inside a transaction
        for line in (line for w in writers for line in w.lines):
            _, item_id, name, seq = line.split()
            added[item_id] = (name, int(seq))
        resolved |= {line.split()[1] for line in resolver.lines}

    with sqlite3.connect(path) as conn:  # opening rolls back a transaction a killed writer left open
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    items, skipped = ReviewQueue(path, create=False).readable_items(None)
    assert skipped == [], "every stored row reads back"
    stored = {item.id: item for item in items}
    assert len(stored) == len(items), "no id twice"
    origins = [(item.details["writer"], item.details["seq"]) for item in items]
    assert len(set(origins)) == len(origins), "no item written twice"
    assert added.keys() <= stored.keys(), "every acknowledged item survived"
    for item_id, (name, seq) in added.items():
        assert stored[item_id].answer == f"answer {name}-{seq}"
    for item in items:  # a resolution is all there or not at all
        assert (item.status == "resolved") == (item.resolution is not None) == (item.resolved_at is not None)
    assert all(stored[item_id].resolution == f"fixed {item_id}" for item_id in resolved)
    print(
        f"\nkill test: {ROUNDS * (WRITERS + 1)} processes killed, {hot_journals} of {ROUNDS} rounds inside a "
        f"transaction; {len(added)} items and {len(resolved)} resolutions acknowledged, all kept; "
        f"{len(items) - len(added)} more committed before their acknowledgement; 0 lost, 0 duplicated"
    )


@pytest.mark.parametrize(
    ("prompt", "answer", "details", "stored"),
    [
        ("q", "Paris\ud800", {}, ("q", "Paris\ufffd", {})),
        (
            [{"role": "user", "content": "q\udfff"}],
            "a",
            {},
            ([{"role": "user", "content": "q\ufffd"}], "a", {}),
        ),
        ("q", "a", {"note": "\udcff"}, ("q", "a", {"note": "\ufffd"})),
        ("q", "smile \ud83d\ude00", {}, ("q", "smile \U0001f600", {})),  # a pair, as a JSON escape decodes
    ],
)
def test_text_that_is_not_unicode_is_stored_readably(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], prompt: Any, answer: str, details: Any, stored: Any
) -> None:
    """SQLite cannot store a lone surrogate: the add failed with a bare UnicodeEncodeError (which the guard's
    human route does not treat as a queue failure), and ``show`` could not print such a prompt. Now the
    text keeps U+FFFD in its place, and the command line reads it, resolves it and refuses a bad id."""
    queue = ReviewQueue(tmp_path / "queue.sqlite3")
    item = queue.add(prompt, answer, details=details)
    assert (item.prompt, item.answer, item.details) == stored and queue.get(item.id) == item
    assert main(["--db", str(queue.path), "show", item.id]) == 0
    assert main(["--db", str(queue.path), "resolve", item.id, "fixed\udcff"]) == 0  # an undecodable argv
    assert queue.get(item.id).resolution == "fixed\ufffd"
    assert main(["--db", str(queue.path), "show", "no-such\udcff"]) == 1
    capsys.readouterr()
