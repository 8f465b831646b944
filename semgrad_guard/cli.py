"""The ``semgrad-guard`` command line: ``score`` one pair from flags, or a JSONL file of pairs."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, TextIO

from semgrad_guard.errors import SemGradError
from semgrad_guard.prompts import Prompt
from semgrad_guard.results import Score
from semgrad_guard.scorer import SemGradScorer

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semgrad-guard", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser(
        "score",
        help="score (prompt, answer) pairs; higher = more likely wrong",
        description="Score one pair given as flags, or every line of a JSONL file "
        '({"prompt": str or [{"role", "content"}, ...], "answer": str, "id": optional}).',
    )
    single = score.add_argument_group("one pair")
    single.add_argument("--prompt", help="the user turn (the chat template is applied)")
    single.add_argument("--answer", help="the answer to score")
    batch = score.add_argument_group("many pairs")
    batch.add_argument("--input", type=Path, help="JSONL file of pairs ('-' = standard input)")
    batch.add_argument("--output", type=Path, help="JSONL file for the scores (default: standard output)")
    model = score.add_argument_group("model")
    model.add_argument("--model", help="Hugging Face id, folder or .gguf file (default: embedded SmolLM2)")
    model.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default: auto)")
    model.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    model.add_argument("--profile", type=Path, help="a model profile saved as JSON")
    model.add_argument("--batch-size", type=int, default=8, help="pairs per pass (default: 8)")
    model.add_argument("--max-length", type=int, help="refuse pairs longer than this many tokens")
    model.add_argument("--trust-remote-code", action="store_true", help="run code shipped with the model")
    return parser


def _records(stream: TextIO) -> Iterator[tuple[Any, Prompt | None, str | None, str | None]]:
    """(id, prompt, answer, problem) per non-empty line; a line that cannot be read keeps its place."""
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            prompt, answer = record["prompt"], record["answer"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            yield number, None, None, f"invalid_record: line {number}: {exc!r}"
            continue
        yield record.get("id", number), prompt, answer, None


def _score_file(scorer: SemGradScorer, source: TextIO, sink: TextIO) -> int:
    records = list(_records(source))
    readable = [(prompt, answer) for _, prompt, answer, problem in records if problem is None]
    scores = iter(scorer.score_batch(readable, errors="mark", progress=True))  # type: ignore[arg-type]
    invalid = 0
    for key, _, _, problem in records:
        score = next(scores) if problem is None else Score.invalid(problem, model=scorer.model_name)
        invalid += not score.valid
        sink.write(json.dumps({"id": key, **score.model_dump(mode="json")}) + "\n")
    return invalid


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for a pair or file that could not be scored)."""
    args = _parser().parse_args(argv)
    if (args.input is None) == (args.prompt is None or args.answer is None):
        _parser().error("give either --prompt and --answer, or --input")
    scorer = SemGradScorer(
        args.model,
        device=args.device,
        dtype=args.dtype,
        profile=args.profile,
        batch_size=args.batch_size,
        max_length=args.max_length,
        trust_remote_code=args.trust_remote_code,
    )
    try:
        if args.input is None:
            print(scorer.score(args.prompt, args.answer).model_dump_json(indent=2))
            return 0
        with (
            nullcontext(sys.stdin) if str(args.input) == "-" else args.input.open(encoding="utf-8") as source,
            nullcontext(sys.stdout)
            if args.output is None
            else args.output.open("w", encoding="utf-8") as sink,
        ):
            invalid = _score_file(scorer, source, sink)
    except SemGradError as exc:
        print(f"semgrad-guard: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if invalid:
        print(f"semgrad-guard: {invalid} pair(s) could not be scored; see invalid_reason", file=sys.stderr)
    return 0
