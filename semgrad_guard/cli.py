"""The ``semgrad-guard`` command line: ``score`` pairs, and the evaluation and SPS commands.

A thin layer over both houses: each command imports what it runs when it runs, so ``score`` never loads the
evaluation tooling and ``--help`` loads no model library.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any, BinaryIO, TextIO, TypeVar

from pydantic import BaseModel

from semgrad_guard.errors import SemGradError
from semgrad_guard.evaluation.judges import JUDGES
from semgrad_guard.evaluation.methods import METHODS
from semgrad_guard.prompts import Prompt
from semgrad_guard.results import Score
from semgrad_guard.scorer import SemGradScorer
from semgrad_guard.service.cli import DTYPES, MODEL_HELP, add_model_arguments, scorer_options
from semgrad_guard.service.cli import add_arguments as add_serve_arguments

__all__ = ["main"]

Config = TypeVar("Config", bound=BaseModel)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semgrad-guard", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser(
        "score",
        help="score (prompt, answer) pairs; higher = more likely wrong",
        description="Score one pair given as flags, or every line of a JSONL file "
        '({"prompt": str or [{"role", "content"}, ...], "answer": str, "id": optional}). The output has '
        "one line per input line, in order, written as each batch is scored; a line that cannot be read or "
        "scored (blank, not UTF-8 or JSON, wrong fields) gets valid: false and an invalid_reason. An "
        "--output file is replaced only once complete.",
    )
    single = score.add_argument_group("one pair")
    single.add_argument("--prompt", help="the user turn (the chat template is applied)")
    single.add_argument("--answer", help="the answer to score")
    batch = score.add_argument_group("many pairs")
    batch.add_argument("--input", type=Path, help="JSONL file of pairs ('-' = standard input)")
    batch.add_argument("--output", type=Path, help="JSONL file for the scores (default: standard output)")
    add_model_arguments(score)
    ray = score.add_argument_group("Ray (the ray extra; docs/scaling.md)")
    ray.add_argument(
        "--ray",
        action="store_true",
        help="score the --input file on Ray actors, one model each (the cluster of RAY_ADDRESS, else a "
        "local one); the output is the same, written once all lines are scored",
    )
    ray.add_argument("--actors", type=int, default=1, help="with --ray: how many actors (default: 1)")
    ray.add_argument("--num-gpus", type=float, default=0, help="with --ray: GPUs per actor (default: 0)")
    serve = commands.add_parser(
        "serve",
        help="serve one scorer over HTTP for many processes (the serve extra; docs/scaling.md)",
        description="Load one scorer and answer POST /v1/score and /v1/score_batch, GET /v1/info, /healthz "
        "and /readyz until interrupted. RemoteScorer, or any adapter with SEMGRAD_GUARD_URL set, scores "
        "through it.",
    )
    add_serve_arguments(serve)
    bench = commands.add_parser(
        "bench",
        help="error-detection benchmark: greedy answers, judged labels, every method, metrics and cost",
    )
    bench.add_argument("--data", required=True, help="sciq, truthfulqa (dev splits) or a JSONL path")
    bench.add_argument(
        "--out", type=Path, required=True, help="folder for results (and the generation cache)"
    )
    bench.add_argument("--model", help=MODEL_HELP)
    bench.add_argument("--limit", type=int, help="first N questions only")
    bench.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    bench.add_argument(
        "--samples",
        type=int,
        help="K samples for sampling baselines (0 = none; default 10, or 0 with --answers-from)",
    )
    bench.add_argument("--max-new-tokens", type=int, default=32)
    bench.add_argument(
        "--judge",
        default="audited",
        choices=["audited", "auto", *JUDGES],
        help="labels of the main table: audited (default; rows without an audited label use the best "
        "automatic judge), auto (the best automatic judge) or one judge",
    )
    bench.add_argument(
        "--labels",
        type=Path,
        help="audited labels JSONL (default: every benchmarks/labels/[<model>/]<set>.jsonl for sets)",
    )
    bench.add_argument(
        "--answers-from",
        type=Path,
        metavar="DIR",
        help="score the greedy answers of another bench run's folder instead of generating (proxy scoring; "
        "needs --samples 0)",
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
    target.add_argument(
        "--target-error",
        type=float,
        nargs="+",
        default=[0.1],
        help="max error among accepted answers; several: the smallest reachable, each tested at delta / k",
    )
    target.add_argument("--target-coverage", type=float, help="min fraction of answers accepted instead")
    calibrate.add_argument("--delta", type=float, default=0.05, help="allowed failure probability (0.05)")
    calibrate.add_argument("--seed", type=int, default=0)
    calibrate.add_argument("--out", type=Path, required=True, help="bundle JSON to write")
    calibrate.add_argument("--report", type=Path, help="folder for the calibration plot")
    speed = commands.add_parser(
        "bench-speed",
        help="speed benchmark: naive vs fast pass vs a plain forward, self-scoring, throughput, sampling",
    )
    speed.add_argument(
        "--out", type=Path, required=True, help="folder for speed.json and speed.md (shape.* with --depths)"
    )
    speed.add_argument("--model", help=MODEL_HELP)
    speed.add_argument(
        "--shape",
        default=argparse.SUPPRESS,
        help="random weights with a published architecture instead of --model: qwen2.5-7b, llama-3.1-8b, "
        "mistral-7b, qwen2.5-1.5b, smollm2-135m (the cost is the point, the scores mean nothing)",
    )
    speed.add_argument("--layers", type=int, help="decoder layers of --shape (default: the published depth)")
    speed.add_argument(
        "--depths",
        type=int,
        nargs="+",
        help="with --shape: measure these reduced depths side by side and fit the depth cost model "
        "(writes shape.json and shape.md instead of the full bench)",
    )
    speed.add_argument(
        "--full-depth", action="store_true", help="with --depths: also measure the published depth"
    )
    for flag, field, what in (
        ("--memory-answers", "memory_answer_tokens", "answer lengths"),
        ("--memory-batches", "memory_batch_sizes", "batch sizes"),
    ):
        speed.add_argument(
            flag,
            dest=field,
            type=int,
            nargs="+",
            default=argparse.SUPPRESS,
            help=f"with --depths: further {what} for the peak-memory sweep",
        )
    speed.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default: auto)")
    speed.add_argument("--dtype", default="auto", choices=DTYPES)
    speed.add_argument(
        "--lengths",
        dest="prompt_lengths",
        type=int,
        nargs="+",
        default=argparse.SUPPRESS,
        help="prompt tokens (default: 64 256 1024 2048; 256 1024 with --depths)",
    )
    speed.add_argument("--answer-tokens", type=int, default=32)
    speed.add_argument(
        "--repeats",
        type=int,
        default=argparse.SUPPRESS,
        help="timed runs per setting (default: 5, median reported; 2 with --depths, interleaved over depths)",
    )
    speed.add_argument("--callers", type=int, nargs="+", default=[1, 4, 16], help="concurrent callers")
    speed.add_argument("--throughput-pairs", type=int, default=48)
    speed.add_argument("--sampling-questions", type=int, default=5)
    precision = commands.add_parser(
        "bench-precision",
        help="how far scores move with dtype, batching, pass mode and threads, against float64",
    )
    precision.add_argument("--model", help=MODEL_HELP)
    profile = commands.add_parser(
        "profile",
        help="choose where SemGrad takes its gradient for a model, with the Semantic Preservation Score",
        description="Run questions and their paraphrases through the model (forward passes only), score "
        "each candidate prompt position and layer band by SPS, and save the chosen profile with its table.",
    )
    profile.add_argument("--model", help=MODEL_HELP)
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
            dtype=resolve_dtype(args.dtype, device, args.model),
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
        groups=labelled.groups,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    bundle.save(args.out)
    if args.report:
        write_calibration_report(args.report, bundle, labelled, args.seed)
    print(bundle.model_dump_json(indent=2, exclude={"map"}))
    return 0


def _config(kind: type[Config], args: argparse.Namespace) -> Config:
    """A config model from the parsed flags, whose destinations are named as its fields."""
    return kind.model_validate({k: v for k, v in vars(args).items() if k in kind.model_fields})


def _bench(args: argparse.Namespace) -> int:
    from semgrad_guard.evaluation.bench import BenchConfig, run_bench
    from semgrad_guard.evaluation.report import markdown_table

    if args.samples is None:
        args.samples = 0 if args.answers_from else 10
    try:
        results = run_bench(_config(BenchConfig, args))
    except (SemGradError, ValueError, OSError) as exc:  # bad flags, data or --answers-from: one line
        print(f"semgrad-guard: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 2
    print(markdown_table(results))
    print(
        f"wrote {args.out}/results.json, rows.csv, results.md and plots in {results['seconds_total']:.0f} s"
    )
    return 0


class _Refused(Exception):
    """Why the score command cannot run, in one line (exit status 2, no traceback)."""


def _one_line(exc: BaseException) -> str:
    """An error as one line: its type and its message with line breaks folded (pydantic's span lines)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:500]}" if text else type(exc).__name__


def _check_device(name: str) -> None:
    """Refuse a device this machine does not have before any model is read (``auto`` always exists)."""
    if name == "auto":
        return
    import torch  # the score command loads it anyway; --help and the other commands do not

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise _Refused(f"--device {name!r} is not a device (auto, cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise _Refused(f"--device {name}: no CUDA device is available here")
        if device.index is not None and device.index >= count:
            raise _Refused(f"--device {name}: no such device (this machine has {count} CUDA device(s))")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise _Refused(f"--device {name}: MPS is not available here")


def _check_score_args(args: argparse.Namespace) -> None:
    """Refuse, before loading anything, flags and paths the score command cannot work with."""
    if args.batch_size < 1:
        raise _Refused(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.actors < 1 or args.num_gpus < 0:
        raise _Refused(
            f"--actors must be at least 1 and --num-gpus at least 0, got {args.actors}, {args.num_gpus}"
        )
    if args.max_length is not None and args.max_length < 2:
        raise _Refused(f"--max-length must be at least 2 tokens, got {args.max_length}")
    if args.profile is not None and not args.profile.is_file():
        problem = "is not a file" if args.profile.exists() else "no such file"
        raise _Refused(f"--profile {args.profile}: {problem}")
    reading = args.input is not None and str(args.input) != "-"
    if reading and args.input.is_dir():
        raise _Refused(f"--input {args.input} is a folder, not a file")
    if reading and not args.input.exists():
        raise _Refused(f"--input {args.input}: no such file")
    if args.input is not None and args.output is not None:
        if args.output.is_dir():
            raise _Refused(f"--output {args.output} is a folder, not a file")
        folder = args.output.resolve().parent
        if not folder.is_dir():
            problem = "is not a folder" if folder.exists() else "does not exist"
            raise _Refused(f"--output {args.output}: the folder {folder} {problem}")
        if reading and (
            args.output.resolve() == args.input.resolve()
            or (args.output.exists() and args.output.samefile(args.input))
        ):
            raise _Refused(f"--output {args.output} is the --input file; write the scores to another file")
    _check_device(args.device)


def _reject_constant(name: str) -> None:
    """``json.loads`` hook: NaN and Infinity are not JSON, whatever Python's reader accepts."""
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    """``json.loads`` hook: a number too large for a float (``1e999``) would be written back as Infinity."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number too large for a float")
    return value


def _surrogate_in(value: object) -> bool:
    """Whether a prompt or answer as read holds a lone surrogate (an unpaired UTF-16 escape): no text."""
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list):
        texts = [v for m in value if isinstance(m, dict) for v in m.values() if isinstance(v, str)]
    else:
        texts = []
    try:
        for text in texts:
            text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


Record = tuple[Any, "tuple[Prompt, str] | str"]
"""(id, item) of one input line: the item is its (prompt, answer) pair, or the reason it has none."""


def _record(raw: bytes, number: int) -> Record:
    """One input line, read on its own: whatever is wrong with it is its problem, not the file's.

    The id is the record's ``id`` (a string, number, boolean or null), else the line number. Problems name
    what is wrong, never repeat the text: not UTF-8, blank, not JSON (NaN and Infinity included), nested
    too deep to read, not an object with a ``prompt`` and an ``answer`` of the right types, lone surrogates.
    """
    where = f"line {number}"
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return number, f"invalid_record: {where}: not UTF-8 text (byte {exc.start + 1})"
    if number == 1:
        line = line.removeprefix("\ufeff")
    if not line.strip():
        return number, f"blank_line: {where}: nothing to score"
    try:
        record = json.loads(line, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        return number, f"invalid_record: {where}: nested too deep to read"
    except ValueError as exc:  # JSONDecodeError, or a NaN or Infinity refused above
        return number, f"invalid_record: {where}: not JSON ({' '.join(str(exc).split())[:200]})"
    if not isinstance(record, dict):
        return number, f"invalid_record: {where}: not a JSON object"
    key = record.get("id", number)
    if not isinstance(key, (str, int, float, bool, type(None))):
        return number, f"invalid_record: {where}: the id must be a string, number, boolean or null"
    missing = " or ".join(field for field in ("prompt", "answer") if field not in record)
    prompt, answer = record.get("prompt"), record.get("answer")
    if missing:
        problem = f"no {missing}"
    elif not isinstance(prompt, (str, list)):
        problem = f"the prompt must be a string or a list of messages, got {type(prompt).__name__}"
    elif not isinstance(answer, str):
        problem = f"the answer must be a string, got {type(answer).__name__}"
    elif _surrogate_in(prompt) or _surrogate_in(answer):
        problem = "the text holds a lone surrogate (an unpaired \\ud800-\\udfff escape), not Unicode"
    else:
        return key, (prompt, answer)
    return key, f"invalid_record: {where}: {problem}"


def _score_pairs(scorer: SemGradScorer, pairs: list[tuple[Prompt, str]]) -> list[Score]:
    """Scores in order; if a pass fails unexpectedly, each pair again alone: a fault stays its pair's."""
    if not pairs:
        return []
    try:
        return scorer.score_batch(pairs, errors="mark")
    except Exception as exc:  # whatever it is, one line's fault must not cost the others their scores
        if len(pairs) == 1:
            return [Score.invalid(f"error: {_one_line(exc)}", model=scorer.model_name)]
    return [score for pair in pairs for score in _score_pairs(scorer, [pair])]


def _pairs(records: list[Record]) -> list[tuple[Prompt, str]]:
    return [item for _, item in records if not isinstance(item, str)]


def _write(records: list[Record], scores: list[Score], model: str, sink: TextIO) -> int:
    """One output line per record, in order: its pair's score, or its reason as an invalid Score.

    ``scores`` are the records' pairs' scores, in order. Returns how many lines got ``valid: false``.
    """
    scored = iter(scores)
    invalid = 0
    for key, item in records:
        score = Score.invalid(item, model=model) if isinstance(item, str) else next(scored)
        invalid += not score.valid
        sink.write(json.dumps({"id": key, **score.model_dump(mode="json")}) + "\n")
    sink.flush()
    return invalid


def _score_stream(scorer: SemGradScorer, chunk: int, source: BinaryIO, sink: TextIO) -> int:
    """Score a JSONL byte stream ``chunk`` lines at a time, writing one line per input line, in order.

    Each chunk's lines are written (and flushed) as soon as it is scored. Returns how many lines got
    ``valid: false``.
    """
    from tqdm.auto import tqdm

    lines = enumerate(source, start=1)
    invalid = 0
    with tqdm(desc="scoring", unit="line", file=sys.stderr) as bar:
        while records := [_record(raw, number) for number, raw in itertools.islice(lines, chunk)]:
            invalid += _write(records, _score_pairs(scorer, _pairs(records)), scorer.model_name, sink)
            bar.update(len(records))
    return invalid


def _score_on_ray(args: argparse.Namespace, source: BinaryIO, sink: TextIO) -> int:
    """``score --ray``: every line's pair at once to a pool of Ray actors with one model each.

    The driver loads no model; the output is that of :func:`_score_stream`, written once all are scored.
    """
    try:
        from semgrad_guard.ray import score_pairs
    except ImportError as exc:
        raise _Refused(
            f"--ray needs the ray extra ({exc.name} is missing): pip install 'semgrad-guard[ray]'"
        ) from exc
    records = [_record(raw, number) for number, raw in enumerate(source, start=1)]
    try:
        scores = score_pairs(
            _pairs(records),
            args.model,
            actors=args.actors,
            num_gpus=args.num_gpus,
            scorer_options=scorer_options(args),
        )
    except Exception as exc:  # Ray wraps an actor's failure (a model it cannot load) in its own types
        raise _Refused(f"scoring on Ray failed: {_one_line(exc)}") from exc
    # Unscorable lines name the model the actors reported; with no scorable line no actor ran.
    model = scores[0].model if scores else str(args.model or "embedded")
    return _write(records, scores, model, sink)


@contextmanager
def _output(path: Path | None) -> Iterator[TextIO]:
    """Standard output, or a temporary file beside ``path`` that replaces it only once complete.

    Until then (and if scoring fails or is interrupted) a previous file at ``path`` stays as it was; the
    temporary file is removed. A link at ``path`` is followed: its target gets the new content.
    """
    if path is None:
        yield sys.stdout
        return
    target = path.resolve()
    if target.exists():
        mode = stat.S_IMODE(target.stat().st_mode)
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    descriptor, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            yield handle
        os.chmod(partial, mode)
        os.replace(partial, target)
    except BaseException:
        with suppress(OSError):
            os.unlink(partial)
        raise


def _score(args: argparse.Namespace) -> int:
    """The score command: one pair from flags, or a JSONL file streamed to a JSONL file or standard output."""
    if (args.input is None) == (args.prompt is None or args.answer is None):
        _parser().error("give either --prompt and --answer, or --input")
    if args.ray and args.input is None:
        _parser().error("--ray scores an --input file")
    try:
        _check_score_args(args)
    except _Refused as exc:
        print(f"semgrad-guard: {exc}", file=sys.stderr)
        return 2
    score_file: Callable[[BinaryIO, TextIO], int] = functools.partial(_score_on_ray, args)
    if not args.ray:
        try:
            scorer = SemGradScorer(args.model, **scorer_options(args)).load()
        except (SemGradError, ValueError, OSError, RuntimeError) as exc:  # pydantic's errors: ValueErrors
            print(f"semgrad-guard: could not load the scorer: {_one_line(exc)}", file=sys.stderr)
            return 2
        score_file = functools.partial(_score_stream, scorer, args.batch_size)
    try:
        if args.input is None:  # one pair (never with --ray)
            print(scorer.score(args.prompt, args.answer).model_dump_json(indent=2))
            return 0
        with (
            nullcontext(sys.stdin.buffer) if str(args.input) == "-" else args.input.open("rb") as source,
            _output(args.output) as sink,
        ):
            invalid = score_file(source, sink)
    except (SemGradError, OSError, _Refused) as exc:
        print(f"semgrad-guard: {exc if isinstance(exc, _Refused) else _one_line(exc)}", file=sys.stderr)
        return 2
    if invalid:
        print(f"semgrad-guard: {invalid} pair(s) could not be scored; see invalid_reason", file=sys.stderr)
    return 0


def _speed(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from semgrad_guard.evaluation import speed

    try:
        kind: type[speed.ShapeSpeedConfig | speed.SpeedConfig]
        kind = speed.ShapeSpeedConfig if args.depths else speed.SpeedConfig
        config = _config(kind, args)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = "".join(f"{part}: " for part in error["loc"])
        print(f"semgrad-guard: bench-speed: {where}{error['msg']}", file=sys.stderr)
        return 2
    if isinstance(config, speed.ShapeSpeedConfig):
        print(speed.shape_speed_markdown(speed.run_shape_speed(config)))
        print(f"wrote {args.out}/shape.json and shape.md")
    else:
        print(speed.speed_markdown(speed.run_speed(config)))
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
    if args.command == "serve":
        from semgrad_guard.service.cli import run

        return run(args)
    return _score(args)
