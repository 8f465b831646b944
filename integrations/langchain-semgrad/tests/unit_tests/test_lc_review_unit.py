"""The SQLite review queue and its command line."""

from __future__ import annotations

import threading

import pytest
from langchain_semgrad import ReviewQueue
from langchain_semgrad.review import default_review_path, main

from semgrad_guard import Score


def test_queue_survives_a_restart(tmp_path) -> None:
    path = tmp_path / "nested" / "review.sqlite3"
    first = ReviewQueue(path)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of Peru?"}]
    item = first.add(messages, "Quito", Score(model="m", semgrad=1.5), {"route": "human"})
    first.add("Capital of Chile?", "Santiago")
    del first
    reopened = ReviewQueue(path)
    assert [i.answer for i in reopened.items()] == ["Quito", "Santiago"]
    again = reopened.get(item.id)
    assert again == item and again.score is not None and again.score.semgrad == 1.5
    resolved = reopened.resolve(item.id, "Lima")
    assert resolved.status == "resolved" and resolved.resolution == "Lima" and resolved.resolved_at
    assert [i.answer for i in ReviewQueue(path).items()] == ["Santiago"]
    assert len(ReviewQueue(path).items(None)) == 2
    with pytest.raises(KeyError):
        reopened.resolve("missing", "x")


def test_concurrent_writers(tmp_path) -> None:
    queue = ReviewQueue(tmp_path / "q.sqlite3")
    threads = [threading.Thread(target=queue.add, args=(f"q{i}", f"a{i}")) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(i.answer for i in queue.items()) == sorted(f"a{i}" for i in range(16))


def test_default_path_follows_the_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SEMGRAD_REVIEW_DB", str(tmp_path / "env.sqlite3"))
    assert default_review_path() == tmp_path / "env.sqlite3"


def test_cli_lists_shows_and_resolves(tmp_path, capsys) -> None:
    db = str(tmp_path / "cli.sqlite3")
    item = ReviewQueue(db).add("What is 2+2?", "5", Score(model="m", semgrad=0.002))
    assert main(["--db", db, "list"]) == 0
    assert item.id in capsys.readouterr().out
    assert main(["--db", db, "show", item.id]) == 0
    assert '"answer": "5"' in capsys.readouterr().out
    assert main(["--db", db, "resolve", item.id, "4"]) == 0
    assert "=> '4'" in capsys.readouterr().out
    assert main(["--db", db, "list"]) == 0 and capsys.readouterr().out == "no items\n"
    assert main(["--db", db, "list", "--all"]) == 0 and "resolved" in capsys.readouterr().out
    assert main(["--db", db, "resolve", "nope", "x"]) == 1
