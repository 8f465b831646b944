"""The `semgrad-guard score` command: one pair from flags, JSONL in and out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from semgrad_guard import SemGradScorer
from semgrad_guard.cli import main


def test_score_one_pair(tiny_dir: Path, capsys: Any) -> None:
    assert main(["score", "--model", str(tiny_dir), "--prompt", "What is 2+2?", "--answer", "4"]) == 0
    score = json.loads(capsys.readouterr().out)
    assert score["valid"] and score["semgrad"] > 0 and score["model"] == str(tiny_dir)


def test_bad_pair_exits_2_with_message(tiny_dir: Path, capsys: Any) -> None:
    assert main(["score", "--model", str(tiny_dir), "--prompt", "Why?", "--answer", " "]) == 2
    assert "EmptyAnswerError" in capsys.readouterr().err


def test_score_jsonl_keeps_every_line(tiny_dir: Path, tmp_path: Path, capsys: Any) -> None:
    source = tmp_path / "in.jsonl"
    lines = [
        {"id": "a", "prompt": "What is 2+2?", "answer": "4"},
        {"id": "b", "prompt": [{"role": "user", "content": "Capital of Italy?"}], "answer": "Rome"},
        {"id": "c", "prompt": "Why?", "answer": ""},
        {"id": "d", "prompt": "long " * 300, "answer": "no"},
    ]
    source.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n", encoding="utf-8")
    sink = tmp_path / "out.jsonl"
    assert main(["score", "--model", str(tiny_dir), "--input", str(source), "--output", str(sink)]) == 0
    rows = [json.loads(line) for line in sink.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "c", "d", 5]
    assert [r["valid"] for r in rows] == [True, True, False, False, False]
    assert rows[2]["invalid_reason"].startswith("empty_answer")
    assert rows[3]["invalid_reason"].startswith("too_long")
    assert rows[4]["invalid_reason"].startswith("invalid_record")
    assert "3 pair(s) could not be scored" in capsys.readouterr().err


def test_score_jsonl_writes_each_lines_own_score_in_order(tiny_dir: Path, tmp_path: Path) -> None:
    """Every output line is the score of its own input line's pair, in input order (never swapped)."""
    pairs = [
        ("q1", "What is 2+2?", "4"),
        ("q2", [{"role": "user", "content": "Name the capital of Italy, please."}], "It is Rome, in Lazio."),
        ("bad", "Why?", " "),  # unscorable: its place is kept and the pairs after it keep theirs
        ("q3", "Which planet is the largest in the solar system?", "Jupiter"),
        ("q4", "Why is the sky blue on a clear day at noon?", "Rayleigh scattering of sunlight by air."),
    ]
    source = tmp_path / "pairs.jsonl"
    source.write_text(
        "".join(json.dumps({"id": i, "prompt": p, "answer": a}) + "\n" for i, p, a in pairs), encoding="utf-8"
    )
    sink = tmp_path / "scores.jsonl"
    argv = ["score", "--model", str(tiny_dir), "--device", "cpu", "--batch-size", "2"]
    assert main([*argv, "--input", str(source), "--output", str(sink)]) == 0
    rows = [json.loads(line) for line in sink.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == [i for i, _, _ in pairs]

    direct = SemGradScorer(str(tiny_dir), device="cpu")
    for row, (key, prompt, answer) in zip(rows, pairs, strict=True):
        if key == "bad":
            assert not row["valid"] and row["invalid_reason"].startswith("empty_answer")
            continue
        want = direct.score(prompt, answer)
        assert row["valid"], key
        for field in ("n_prompt_tokens", "n_answer_tokens", "position"):
            assert row[field] == getattr(want, field), (key, field)
        for field in ("semgrad", "hybridgrad", "param_grad", "nll", "mean_entropy"):
            assert row[field] == pytest.approx(getattr(want, field), rel=1e-5), (key, field)
    valid = [r for r in rows if r["valid"]]
    assert len({r["n_prompt_tokens"] for r in valid}) == len({r["semgrad"] for r in valid}) == 4  # all differ


def test_needs_a_pair_or_a_file() -> None:
    with pytest.raises(SystemExit):
        main(["score", "--prompt", "only a prompt"])


@pytest.mark.slow
def test_embedded_default_from_the_command_line(capsys: Any) -> None:
    assert (
        main(["score", "--device", "cpu", "--prompt", "What is the capital of France?", "--answer", "Paris"])
        == 0
    )
    score = json.loads(capsys.readouterr().out)
    assert score["model"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and score["profile"]["name"] == "smollm2"
