"""The command line: `score` (one pair from flags, JSONL in and out, on Ray) and `serve`."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from semgrad_guard import SemGradScorer
from semgrad_guard.cli import main
from tests._tolerances import FLOAT32


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


# ------------------------------------------------------------------------------ bad input, faults, files
def _strict_rows(path: Path) -> list[dict[str, Any]]:
    """Output lines parsed as strict JSON: NaN or Infinity in the output would be an error here."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} in the output")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text(encoding="utf-8").splitlines()]


def test_bad_lines_each_get_their_own_invalid_line_in_order(
    tiny_dir: Path, tmp_path: Path, capsys: Any
) -> None:
    """Each unreadable line is reported on its own output line; the file is never aborted."""
    good = json.dumps({"id": "a", "prompt": "What is 2+2?", "answer": "4"}).encode()
    lines = [
        good,
        b'{"id": "b", "prompt": 5, "answer": "4"}',
        b'{"id": NaN, "prompt": "What is 2+2?", "answer": "4"}',
        b'{"id": "d", "prompt": "What is 2+2?", "answer": 1e999}',
        b'{"id": "e", "prompt": "What is \\ud800?", "answer": "4"}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"id": "g", "prompt": "caf\xe9?", "answer": "4"}',  # Latin-1, not UTF-8
        b"",
        b"   ",
        b'{"id": "j", "prompt": [{"role": "user"}], "answer": "4"}',
        b'"just a string"',
        b'{"id": "l", "answer": "4"}',
        b'{"id": [1, 2], "prompt": "What is 2+2?", "answer": "4"}',
        json.dumps({"id": "z", "prompt": "Capital of Italy?", "answer": "Rome"}).encode(),
    ]
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    sink = tmp_path / "out.jsonl"
    argv = ["score", "--model", str(tiny_dir), "--device", "cpu", "--batch-size", "3"]
    assert main([*argv, "--input", str(source), "--output", str(sink)]) == 0
    rows = _strict_rows(sink)
    assert [r["id"] for r in rows] == ["a", "b", 3, 4, "e", 6, 7, 8, 9, "j", 11, "l", 13, "z"]
    assert [r["valid"] for r in rows] == [True] + [False] * 12 + [True]
    reasons = [r["invalid_reason"] for r in rows[1:-1]]
    assert all(reason for reason in reasons)
    assert reasons[1].startswith("invalid_record: line 3") and "NaN" in reasons[1]
    assert reasons[2].startswith("invalid_record: line 4") and "too large" in reasons[2]
    assert reasons[4].startswith("invalid_record: line 6: nested too deep")
    assert reasons[5].startswith("invalid_record: line 7: not UTF-8")
    assert reasons[6].startswith("blank_line: line 8") and reasons[7].startswith("blank_line: line 9")
    err = capsys.readouterr().err
    assert "Traceback" not in err and "12 pair(s) could not be scored" in err


def test_invalid_utf8_on_standard_input_stays_one_lines_problem(
    tiny_dir: Path, tmp_path: Path, monkeypatch: Any
) -> None:
    data = b'{"id": 1, "prompt": "\xff\xfe", "answer": "4"}\n{"id": 2, "prompt": "Why?", "answer": "4"}\n'
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    sink = tmp_path / "out.jsonl"
    assert main(["score", "--model", str(tiny_dir), "--input", "-", "--output", str(sink)]) == 0
    rows = _strict_rows(sink)
    assert [(r["id"], r["valid"]) for r in rows] == [(1, False), (2, True)]


def test_a_pair_that_breaks_the_pass_is_reported_on_its_own_line(
    tiny_dir: Path, tmp_path: Path, monkeypatch: Any
) -> None:
    """A fault the scorer does not mark (here a RuntimeError) costs only its own pair its score."""
    original = SemGradScorer.score_batch

    def fragile(self: SemGradScorer, pairs: Any, **kwargs: Any) -> Any:
        if any(answer == "boom" for _, answer in pairs):
            raise RuntimeError("the pass broke")
        return original(self, pairs, **kwargs)

    monkeypatch.setattr(SemGradScorer, "score_batch", fragile)
    source = tmp_path / "in.jsonl"
    answers = ["4", "boom", "Rome", "Paris"]
    source.write_text("".join(json.dumps({"prompt": "Q?", "answer": a}) + "\n" for a in answers), "utf-8")
    sink = tmp_path / "out.jsonl"
    argv = ["score", "--model", str(tiny_dir), "--batch-size", "4", "--input", str(source)]
    assert main([*argv, "--output", str(sink)]) == 0
    rows = _strict_rows(sink)
    assert [r["valid"] for r in rows] == [True, False, True, True]
    assert rows[1]["invalid_reason"] == "error: RuntimeError: the pass broke"


def _watch_batches(monkeypatch: Any, folder: Path, sink: Path, fail_on: int | None = None) -> list[Any]:
    """Record, at each call of score_batch, the lines written so far and what ``sink`` holds."""
    original = SemGradScorer.score_batch
    seen: list[Any] = []

    def watched(self: SemGradScorer, pairs: Any, **kwargs: Any) -> Any:
        partial = [p for p in folder.iterdir() if p.name.endswith(".partial")]
        written = sum(len(p.read_text(encoding="utf-8").splitlines()) for p in partial)
        seen.append((written, sink.read_text(encoding="utf-8") if sink.exists() else None))
        if fail_on is not None and len(seen) == fail_on:
            raise KeyboardInterrupt
        return original(self, pairs, **kwargs)

    monkeypatch.setattr(SemGradScorer, "score_batch", watched)
    return seen


def _five_pairs(tmp_path: Path) -> Path:
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(json.dumps({"id": i, "prompt": f"Question {i}?", "answer": "Yes"}) + "\n" for i in range(5)),
        encoding="utf-8",
    )
    return source


def test_scores_are_written_chunk_by_chunk(tiny_dir: Path, tmp_path: Path, monkeypatch: Any) -> None:
    source, sink = _five_pairs(tmp_path), tmp_path / "out.jsonl"
    seen = _watch_batches(monkeypatch, tmp_path, sink)
    argv = ["score", "--model", str(tiny_dir), "--batch-size", "2", "--input", str(source)]
    assert main([*argv, "--output", str(sink)]) == 0
    assert [written for written, _ in seen] == [0, 2, 4]  # each chunk written before the next is scored
    assert [r["id"] for r in _strict_rows(sink)] == [0, 1, 2, 3, 4]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []


def test_previous_output_stays_until_the_new_one_is_complete(
    tiny_dir: Path, tmp_path: Path, monkeypatch: Any
) -> None:
    source, sink = _five_pairs(tmp_path), tmp_path / "out.jsonl"
    sink.write_text("previous\n", encoding="utf-8")
    seen = _watch_batches(monkeypatch, tmp_path, sink, fail_on=2)
    argv = ["score", "--model", str(tiny_dir), "--batch-size", "2", "--input", str(source)]
    with pytest.raises(KeyboardInterrupt):
        main([*argv, "--output", str(sink)])
    assert [held for _, held in seen] == ["previous\n", "previous\n"]
    assert sink.read_text(encoding="utf-8") == "previous\n"  # interrupted: the old file, untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []

    monkeypatch.undo()
    assert main([*argv, "--output", str(sink)]) == 0
    assert [r["id"] for r in _strict_rows(sink)] == [0, 1, 2, 3, 4]


def _refused(argv: list[str], capsys: Any) -> str:
    """Run the command; it must exit 2 with a one-line message and no traceback. Returns the message."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("semgrad-guard: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_output_that_is_the_input_is_refused(tiny_dir: Path, tmp_path: Path, capsys: Any) -> None:
    source = _five_pairs(tmp_path)
    before = source.read_bytes()
    link = tmp_path / "link.jsonl"
    link.symlink_to(source)
    hard = tmp_path / "hard.jsonl"
    os.link(source, hard)
    for output in (source, tmp_path / "." / "in.jsonl", link, hard):
        argv = ["score", "--model", str(tiny_dir), "--input", str(source), "--output", str(output)]
        assert "is the --input file" in _refused(argv, capsys)
    assert source.read_bytes() == before


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--input", "{tmp}/missing.jsonl"], "no such file"),
        (["--input", "{tmp}"], "is a folder"),
        (["--output", "{tmp}/no/such/folder/out.jsonl"], "does not exist"),
        (["--output", "{tmp}"], "is a folder"),
        (["--profile", "{tmp}/missing-profile.json"], "no such file"),
        (["--profile", "{tmp}/garbage-profile.json"], "could not load the scorer"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--max-length", "1"], "--max-length must be at least 2"),
        (["--device", "cuda:7"], "--device cuda:7"),
        (["--device", "toaster"], "is not a device"),
        (["--model", "{tmp}/no-such-model"], "ModelLoadError"),
        (["--ray", "--actors", "0"], "--actors must be at least 1"),
        (["--ray", "--num-gpus", "-1"], "--num-gpus at least 0"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    tiny_dir: Path, tmp_path: Path, capsys: Any, flags: list[str], needle: str
) -> None:
    source = _five_pairs(tmp_path)
    (tmp_path / "garbage-profile.json").write_text("{not json", encoding="utf-8")
    argv = ["score", "--model", str(tiny_dir), "--input", str(source), "--output", str(tmp_path / "o.jsonl")]
    assert needle in _refused([*argv, *(f.format(tmp=tmp_path) for f in flags)], capsys)
    assert source.read_text(encoding="utf-8").count("\n") == 5


def test_load_errors_exit_2_for_one_pair_too(tmp_path: Path, capsys: Any) -> None:
    argv = ["score", "--model", str(tmp_path / "nothing-here"), "--prompt", "Q?", "--answer", "A"]
    assert "ModelLoadError" in _refused(argv, capsys)


def test_a_cuda_index_past_the_devices_is_refused(tmp_path: Path, capsys: Any, monkeypatch: Any) -> None:
    """On a machine with one GPU (simulated), cuda:7 is refused before any model is read."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    argv = [
        "score",
        "--model",
        str(tmp_path / "never-read"),
        "--device",
        "cuda:7",
        "--prompt",
        "Q?",
        "--answer",
        "A",
    ]
    assert "no such device (this machine has 1 CUDA device(s))" in _refused(argv, capsys)


def test_ray_without_the_ray_extra_is_refused(
    tiny_dir: Path, tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    monkeypatch.setitem(sys.modules, "semgrad_guard.ray", None)  # as if Ray were not installed
    argv = ["score", "--model", str(tiny_dir), "--input", str(_five_pairs(tmp_path)), "--ray"]
    assert "--ray needs the ray extra" in _refused([*argv, "--output", str(tmp_path / "o.jsonl")], capsys)
    assert not (tmp_path / "o.jsonl").exists()
    with pytest.raises(SystemExit):  # one pair is scored here, never on Ray
        main(["score", "--prompt", "Q?", "--answer", "A", "--ray"])


@pytest.fixture
def ray_cluster() -> Iterator[None]:
    """A local two-CPU Ray cluster for one test (run on a shared machine inside ``unshare -rn``)."""
    ray = pytest.importorskip("ray", reason="Ray is optional: pip install 'semgrad-guard[ray]'")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.mark.allow_hosts(["127.0.0.1"])
@pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")
def test_score_on_ray_writes_what_one_process_writes(
    ray_cluster: None, tiny_dir: Path, tmp_path: Path
) -> None:
    lines = [
        json.dumps({"id": "a", "prompt": "What is 2+2?", "answer": "4"}),
        json.dumps(
            {"id": "b", "prompt": [{"role": "user", "content": "Capital of Italy?"}], "answer": "Rome"}
        ),
        json.dumps({"id": "c", "prompt": "Why?", "answer": " "}),
        "not json",
        json.dumps({"id": "e", "prompt": "Largest planet?", "answer": "Jupiter, by far."}),
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    argv = ["score", "--model", str(tiny_dir), "--device", "cpu", "--batch-size", "2", "--input", str(source)]
    assert main([*argv, "--output", str(tmp_path / "local.jsonl")]) == 0
    assert main([*argv, "--output", str(tmp_path / "ray.jsonl"), "--ray"]) == 0
    local, on_ray = _strict_rows(tmp_path / "local.jsonl"), _strict_rows(tmp_path / "ray.jsonl")
    assert [r["id"] for r in on_ray] == ["a", "b", "c", 4, "e"]
    assert [r["valid"] for r in on_ray] == [True, True, False, False, True]
    for got, want in zip(on_ray, local, strict=True):
        assert (got["id"], got["valid"], got["invalid_reason"], got["model"]) == (
            want["id"],
            want["valid"],
            want["invalid_reason"],
            want["model"],
        )
        if want["valid"]:
            assert got["n_prompt_tokens"] == want["n_prompt_tokens"]
            for field in ("semgrad", "hybridgrad", "nll"):
                assert got[field] == pytest.approx(want[field], rel=2 * FLOAT32), field


# ----------------------------------------------------------------------------------------------- serve
def test_serve_builds_the_scorer_and_serves_it(tiny_dir: Path, monkeypatch: Any) -> None:
    """``semgrad-guard serve``: the scorer loaded from the flags goes to uvicorn with the service options."""
    pytest.importorskip("fastapi", reason="serving needs the serve extra")
    from semgrad_guard.service import app

    served: list[tuple[SemGradScorer, dict[str, Any]]] = []
    monkeypatch.setattr(app, "serve", lambda scorer, **options: served.append((scorer, options)))
    flags = ["--device", "cpu", "--port", "8123", "--token", "t0k", "--max-pairs", "3", "--max-queue", "5"]
    assert main(["serve", "--model", str(tiny_dir), *flags]) == 0
    [(scorer, options)] = served
    assert scorer.model_name == str(tiny_dir) and scorer.config.batching.max_queue == 5
    assert (options["host"], options["port"], options["token"], options["max_pairs"]) == (
        "127.0.0.1",
        8123,
        "t0k",
        3,
    )


def test_serve_refuses_a_model_it_cannot_load(tmp_path: Path, capsys: Any) -> None:
    pytest.importorskip("fastapi", reason="serving needs the serve extra")
    assert main(["serve", "--model", str(tmp_path / "no-such-model"), "--port", "9"]) == 2
    assert "could not load the scorer" in capsys.readouterr().err


def test_python_m_service_is_the_serve_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "semgrad_guard.service", "--help"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("usage: semgrad-guard serve") and "--max-queue" in out.stdout


def test_bench_refuses_bad_proxy_flags_in_one_line(tiny_dir: Path, tmp_path: Path, capsys: Any) -> None:
    data = tmp_path / "qa.jsonl"
    data.write_text('{"question": "Capital of France?", "answers": ["Paris"]}\n', encoding="utf-8")
    base = ["bench", "--data", str(data), "--model", str(tiny_dir), "--out", str(tmp_path / "out")]
    # Sampling baselines would sample the scoring model, not the one whose answers are scored.
    assert main([*base, "--answers-from", str(tmp_path), "--samples", "3"]) == 2
    assert "samples=0 with answers_from" in capsys.readouterr().err
    # A folder without that question's greedy answer: refused before anything is scored or written.
    assert main([*base, "--answers-from", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no greedy answer for 1 questions" in err
    assert not (tmp_path / "out" / "scores.jsonl").exists()
