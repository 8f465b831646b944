"""The ``semgrad-guard serve`` command's options and runner, and the model options it shares with ``score``.

Building the parser imports nothing heavy; :func:`run` imports the model library and the server when it
runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, get_args

from semgrad_guard.loading import DTypeName

__all__ = [
    "DTYPES",
    "LOOPBACK",
    "MODEL_HELP",
    "add_arguments",
    "add_model_arguments",
    "run",
    "scorer_options",
]

LOOPBACK = ("127.0.0.1", "localhost", "::1")
MODEL_HELP = (
    "Hugging Face id, folder, .gguf file or a named model (qwen2.5-coder-1.5b; docs/models.md) "
    "(default: embedded SmolLM2)"
)
DTYPES = list(get_args(DTypeName))


def add_model_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add the options that build the scorer (``score`` and ``serve``) to ``parser``; their group."""
    model = parser.add_argument_group("model")
    model.add_argument("--model", help=MODEL_HELP)
    model.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default: auto)")
    model.add_argument("--dtype", default="auto", choices=DTYPES)
    model.add_argument("--profile", type=Path, help="a model profile saved as JSON")
    model.add_argument("--batch-size", type=int, default=8, help="pairs per pass (default: 8)")
    model.add_argument("--max-length", type=int, help="refuse pairs longer than this many tokens")
    model.add_argument("--trust-remote-code", action="store_true", help="run code shipped with the model")
    return model


def scorer_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~semgrad_guard.SemGradScorer` keyword arguments of :func:`add_model_arguments`' options."""
    return {
        "device": args.device,
        "dtype": args.dtype,
        "profile": args.profile,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "trust_remote_code": args.trust_remote_code,
    }


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the serve command's options to ``parser`` (returned)."""
    add_model_arguments(parser).add_argument(
        "--calibration", help="a calibration bundle JSON, or 'default' (default: the embedded model's)"
    )
    http = parser.add_argument_group("service")
    http.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine)"
    )
    http.add_argument("--port", type=int, default=8000, help="port to bind (default: 8000)")
    http.add_argument(
        "--token",
        default=os.environ.get("SEMGRAD_GUARD_TOKEN"),
        help="bearer token /v1/* requests must carry (default: $SEMGRAD_GUARD_TOKEN)",
    )
    http.add_argument("--max-pairs", type=int, default=256, help="pairs per request (default: 256)")
    http.add_argument("--max-body-bytes", type=int, default=4 << 20, help="request body limit (4 MiB)")
    http.add_argument("--timeout", type=float, default=60.0, help="seconds per request before 504 (60)")
    http.add_argument("--max-queue", type=int, default=1024, help="queued pairs before 429 (default: 1024)")
    http.add_argument(
        "--queue-timeout", type=float, default=1.0, help="seconds a request waits for queue room (1.0)"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Build the scorer from ``args``, load it, and serve it until interrupted; 2 if it cannot start."""
    try:
        from semgrad_guard.service.app import serve
    except ImportError as exc:
        sys.stderr.write(f"semgrad-guard: serving needs the serve extra ({exc.name} is missing): ")
        sys.stderr.write("pip install 'semgrad-guard[serve]'\n")
        return 2
    from semgrad_guard.batching import BatchingConfig
    from semgrad_guard.errors import SemGradError
    from semgrad_guard.scorer import SemGradScorer

    if args.host not in LOOPBACK and not args.token:
        sys.stderr.write("semgrad-guard: serving beyond this machine without --token: anyone may score\n")
    try:
        scorer = SemGradScorer(
            args.model,
            **scorer_options(args),
            calibration=args.calibration or ("default" if args.model is None else None),
            batching=BatchingConfig(max_queue=args.max_queue, queue_timeout_s=args.queue_timeout),
        ).load()
    except (SemGradError, ValueError, OSError, RuntimeError) as exc:
        sys.stderr.write(f"semgrad-guard: could not load the scorer: {type(exc).__name__}: {exc}\n")
        return 2
    serve(
        scorer,
        host=args.host,
        port=args.port,
        token=args.token,
        max_pairs=args.max_pairs,
        max_body_bytes=args.max_body_bytes,
        timeout_s=args.timeout,
    )
    return 0
