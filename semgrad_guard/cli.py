"""The ``semgrad-guard`` command line: ``score`` pairs, and the evaluation and SPS commands.

A thin layer over both houses: each command imports what it runs when it runs, so ``score`` never loads the
evaluation tooling and ``--help`` loads no model library.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, TextIO, TypeVar

from pydantic import BaseModel

from semgrad_guard.errors import SemGradError
from semgrad_guard.evaluation.judges import JUDGES
from semgrad_guard.evaluation.methods import METHODS
from semgrad_guard.prompts import Prompt
from semgrad_guard.results import Score
from semgrad_guard.scorer import SemGradScorer

__all__ = ["main"]

Config = TypeVar("Config", bound=BaseModel)
DTYPES = ["auto", "float64", "float32", "bfloat16", "float16"]


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
    model.add_argument("--dtype", default="auto", choices=DTYPES)
    model.add_argument("--profile", type=Path, help="a model profile saved as JSON")
    model.add_argument("--batch-size", type=int, default=8, help="pairs per pass (default: 8)")
    model.add_argument("--max-length", type=int, help="refuse pairs longer than this many tokens")
    model.add_argument("--trust-remote-code", action="store_true", help="run code shipped with the model")
    bench = commands.add_parser(
        "bench",
        help="error-detection benchmark: greedy answers, judged labels, every method, metrics and cost",
    )
    bench.add_argument("--data", required=True, help="sciq, truthfulqa (dev splits) or a JSONL path")
    bench.add_argument(
        "--out", type=Path, required=True, help="folder for results (and the generation cache)"
    )
    bench.add_argument("--model", help="Hugging Face id, folder or .gguf file (default: embedded SmolLM2)")
    bench.add_argument("--limit", type=int, help="first N questions only")
    bench.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    bench.add_argument("--samples", type=int, default=10, help="K samples for sampling baselines (0 = none)")
    bench.add_argument("--max-new-tokens", type=int, default=32)
    bench.add_argument(
        "--judge",
        default="audited",
        choices=["audited", "auto", *JUDGES],
        help="labels of the main table: audited (default; rows without an audited label use the best "
        "automatic judge), auto (the best automatic judge) or one judge",
    )
    bench.add_argument(
        "--labels", type=Path, help="audited labels JSONL (default: benchmarks/labels/<set>.jsonl for sets)"
    )
    bench.add_argument("--seed", type=int, default=0)
    calibrate = commands.add_parser(
        "calibrate", help="fit a calibration bundle (risk map + threshold) from labelled scores"
    )
    calibrate.add_argument(
        "--labels", type=Path, nargs="+", required=True, help="bench output folders and/or JSONL files"
    )
    calibrate.add_argument(
        "--judge", choices=["audited", *JUDGES], help="labels of bench folders (default: their main labels)"
    )
    target = calibrate.add_mutually_exclusive_group()
    target.add_argument("--target-error", type=float, default=0.1, help="max error among accepted answers")
    target.add_argument("--target-coverage", type=float, help="min fraction of answers accepted instead")
    calibrate.add_argument("--delta", type=float, default=0.05, help="allowed failure probability (0.05)")
    calibrate.add_argument("--seed", type=int, default=0)
    calibrate.add_argument("--out", type=Path, required=True, help="bundle JSON to write")
    calibrate.add_argument("--report", type=Path, help="folder for the calibration plot")
    speed = commands.add_parser(
        "bench-speed",
        help="speed benchmark: naive vs fast pass vs a plain forward, self-scoring, throughput, sampling",
    )
    speed.add_argument("--out", type=Path, required=True, help="folder for speed.json and speed.md")
    speed.add_argument("--model", help="Hugging Face id, folder or .gguf file (default: embedded SmolLM2)")
    speed.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default: auto)")
    speed.add_argument("--dtype", default="auto", choices=DTYPES)
    speed.add_argument(
        "--lengths",
        dest="prompt_lengths",
        type=int,
        nargs="+",
        default=[64, 256, 1024, 2048],
        help="prompt tokens",
    )
    speed.add_argument("--answer-tokens", type=int, default=32)
    speed.add_argument("--repeats", type=int, default=5, help="timed runs per setting (median reported)")
    speed.add_argument("--callers", type=int, nargs="+", default=[1, 4, 16], help="concurrent callers")
    speed.add_argument("--throughput-pairs", type=int, default=48)
    speed.add_argument("--sampling-questions", type=int, default=5)
    precision = commands.add_parser(
        "bench-precision",
        help="how far scores move with dtype, batching, pass mode and threads, against float64",
    )
    precision.add_argument(
        "--model", help="Hugging Face id, folder or .gguf file (default: embedded SmolLM2)"
    )
    profile = commands.add_parser(
        "profile",
        help="choose where SemGrad takes its gradient for a model, with the Semantic Preservation Score",
        description="Run questions and their paraphrases through the model (forward passes only), score "
        "each candidate prompt position and layer band by SPS, and save the chosen profile with its table.",
    )
    profile.add_argument("--model", help="Hugging Face id, folder or .gguf file (default: embedded SmolLM2)")
    profile.add_argument(
        "--data", help="sciq, truthfulqa or a JSONL path with paraphrases (default: the shipped set)"
    )
    profile.add_argument("--out", type=Path, required=True, help="profile JSON to write")
    profile.add_argument("--limit", type=int, help="first N questions only")
    profile.add_argument("--offsets", type=int, nargs="+", help="candidate offsets (default: template tail)")
    profile.add_argument("--band-width", type=int, help="layers per candidate band (default: half)")
    profile.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default: auto)")
    profile.add_argument("--dtype", default="auto", choices=DTYPES)
    profile.add_argument("--batch-size", type=int, default=16, help="prompts per forward pass (default: 16)")
    profile.add_argument("--trust-remote-code", action="store_true", help="run code shipped with the model")
    return parser


def _profile(args: argparse.Namespace) -> int:
    from semgrad_guard.evaluation.datasets import load_qa
    from semgrad_guard.loading import load_model, resolve_device, resolve_dtype
    from semgrad_guard.sps import DEFAULT_DATA, compute_sps, load_default_items, sps_table

    device = resolve_device(args.device)
    try:
        loaded = load_model(
            args.model,
            device=device,
            dtype=resolve_dtype(args.dtype, device),
            trust_remote_code=args.trust_remote_code,
        )
        items = (load_qa(args.data) if args.data else load_default_items())[: args.limit]
        result = compute_sps(
            loaded.model,
            loaded.tokenizer,
            items,
            name=loaded.name,
            data=args.data or DEFAULT_DATA,
            offsets=args.offsets,
            band_width=args.band_width,
            batch_size=args.batch_size,
            progress=True,
        )
    except (SemGradError, ValueError, OSError) as exc:
        print(f"semgrad-guard: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result.save(args.out)
    print(sps_table(result))
    print(result.profile.model_dump_json(indent=2))
    for warning in result.warnings:
        print(f"semgrad-guard: warning: {warning}", file=sys.stderr)
    print(f"wrote {args.out} in {result.seconds:.0f} s")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from semgrad_guard.evaluation.fitting import fit_calibration
    from semgrad_guard.evaluation.labels import read_labelled
    from semgrad_guard.evaluation.report import write_calibration_report

    labelled = read_labelled(args.labels, args.judge)
    bundle = fit_calibration(
        labelled.rows,
        labelled.wrong,
        model=labelled.model,
        labels=labelled.labels,
        data=labelled.data,
        profile_name=labelled.profile_name,
        target_error=None if args.target_coverage else args.target_error,
        delta=args.delta,
        target_coverage=args.target_coverage,
        seed=args.seed,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    bundle.save(args.out)
    if args.report:
        write_calibration_report(args.report, bundle, labelled.rows, labelled.wrong, args.seed)
    print(bundle.model_dump_json(indent=2, exclude={"map"}))
    return 0


def _config(kind: type[Config], args: argparse.Namespace) -> Config:
    """A config model from the parsed flags, whose destinations are named as its fields."""
    return kind.model_validate({k: v for k, v in vars(args).items() if k in kind.model_fields})


def _bench(args: argparse.Namespace) -> int:
    from semgrad_guard.evaluation.bench import BenchConfig, run_bench
    from semgrad_guard.evaluation.report import markdown_table

    results = run_bench(_config(BenchConfig, args))
    print(markdown_table(results))
    print(
        f"wrote {args.out}/results.json, rows.csv, results.md and plots in {results['seconds_total']:.0f} s"
    )
    return 0


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


def _speed(args: argparse.Namespace) -> int:
    from semgrad_guard.evaluation.speed import SpeedConfig, run_speed, speed_markdown

    print(speed_markdown(run_speed(_config(SpeedConfig, args))))
    print(f"wrote {args.out}/speed.json and speed.md")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for a pair or file that could not be scored)."""
    args = _parser().parse_args(argv)
    if args.command == "bench":
        return _bench(args)
    if args.command == "calibrate":
        return _calibrate(args)
    if args.command == "profile":
        return _profile(args)
    if args.command == "bench-speed":
        return _speed(args)
    if args.command == "bench-precision":
        from semgrad_guard.evaluation.precision import precision_report

        precision_report(args.model)
        return 0
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
