"""A bounded loopback load test: the scorer service against in-process scoring of the same model.

``python -m semgrad_guard.service.loadtest --clients 1 8 --requests 64`` scores a fixed number of distinct
(prompt, answer) pairs (TruthfulQA questions and paraphrases shipped in ``semgrad_guard/data``) with N
concurrent callers, each configuration on its own slice of pairs so no score is reused:

* ``in-process``: N threads call ``SemGradScorer.score`` on one shared scorer (its micro-batcher gathers
  them into shared passes);
* ``service``: N threads call ``RemoteScorer.score`` on a service started as a subprocess on a free
  127.0.0.1 port (``python -m semgrad_guard.service``), same model and settings;
* ``stub``: the same service code over a stub scorer that answers at once: the HTTP, JSON and event-loop
  cost alone, i.e. the most requests one service process can take whatever the model;
* ``... batch``: the same, each request a ``score_batch`` of ``--batch-pairs`` pairs.

It reports throughput (pairs/s) and per-request latency (p50, p99) and writes them as JSON with ``--out``.
Everything is bounded: a fixed request count, and ``--max-seconds`` for the whole run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import BaseModel

__all__ = ["Measurement", "load_pairs", "main", "measure"]

DATA = Path(__file__).resolve().parents[1] / "data" / "sps_default.jsonl"


class Measurement(BaseModel):
    """One configuration's figures."""

    mode: str
    clients: int
    requests: int
    pairs_per_request: int
    seconds: float
    pairs_per_s: float
    p50_ms: float
    p99_ms: float
    invalid: int


class _StubScorer:
    """Answers at once with a fixed Score: what is left is the HTTP, JSON and event-loop cost alone."""

    model_name = "stub"
    calibration = None

    def __init__(self) -> None:
        from semgrad_guard.profiles import ModelProfile
        from semgrad_guard.results import Score

        self.profile = ModelProfile(name="stub", offset=-1, layers=(1,))
        self._score = Score(model="stub", semgrad=0.1, hybridgrad=0.1, param_grad=0.1, nll=1.0)

    def score(self, prompt: Any, answer: str, *, errors: str = "raise") -> Any:
        return self._score

    async def ascore(self, prompt: Any, answer: str, *, errors: str = "raise") -> Any:
        return self._score

    def score_batch(self, pairs: Sequence[Any], *, errors: str = "raise") -> list[Any]:
        return [self._score for _ in pairs]

    async def ascore_batch(self, pairs: Sequence[Any], *, errors: str = "raise") -> list[Any]:
        return [self._score for _ in pairs]


def load_pairs() -> list[tuple[str, str]]:
    """Distinct pairs: every shipped question and paraphrase with every reference answer (about 1000)."""
    pairs: list[tuple[str, str]] = []
    for line in DATA.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        for prompt in [record["question"], *record.get("paraphrases", [])]:
            pairs.extend((prompt, answer) for answer in record["answers"])
    return list(dict.fromkeys(pairs))


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def measure(
    mode: str,
    call: Callable[[list[tuple[str, str]]], list[Any]],
    pairs: list[tuple[str, str]],
    *,
    clients: int,
    pairs_per_request: int,
) -> Measurement:
    """Send ``pairs`` in requests of ``pairs_per_request`` from ``clients`` threads; time each request."""
    requests = [pairs[i : i + pairs_per_request] for i in range(0, len(pairs), pairs_per_request)]
    latencies: list[float] = []
    invalid = 0
    lock = threading.Lock()

    def one(request: list[tuple[str, str]]) -> None:
        nonlocal invalid
        start = time.perf_counter()
        scores = call(request)
        took = time.perf_counter() - start
        with lock:
            latencies.append(took)
            invalid += sum(not score.valid for score in scores)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, requests))
    seconds = time.perf_counter() - start
    return Measurement(
        mode=mode,
        clients=clients,
        requests=len(requests),
        pairs_per_request=pairs_per_request,
        seconds=round(seconds, 3),
        pairs_per_s=round(len(pairs) / seconds, 2),
        p50_ms=round(1000 * statistics.median(latencies), 1),
        p99_ms=round(1000 * _percentile(latencies, 0.99), 1),
        invalid=invalid,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_service(args: argparse.Namespace, port: int, *, stub: bool = False) -> subprocess.Popen[bytes]:
    if stub:
        command = [sys.executable, "-m", "semgrad_guard.service.loadtest", "--serve-stub", str(port)]
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    command = [sys.executable, "-m", "semgrad_guard.service", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--device", args.device, "--batch-size", str(args.batch_size), "--queue-timeout", "60"]
    command += ["--timeout", "120", "--max-pairs", str(max(args.batch_pairs, 1))]
    if args.model:
        command += ["--model", args.model]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_ready(url: str, process: subprocess.Popen[bytes], deadline: float) -> None:
    import httpx

    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = process.stderr.read().decode(errors="replace")[-2000:] if process.stderr else ""
            raise RuntimeError(f"the service exited with {process.returncode}: {error}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError("the service did not become ready in time")


def _table(results: list[Measurement]) -> str:
    lines = [
        "| mode | clients | pairs/request | requests | pairs/s | p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.mode} | {r.clients} | {r.pairs_per_request} | {r.requests} | {r.pairs_per_s:.1f} "
            f"| {r.p50_ms:.1f} | {r.p99_ms:.1f} |"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m semgrad_guard.service.loadtest", description=__doc__)
    parser.add_argument("--model", help="Hugging Face id or folder (default: the embedded SmolLM2-135M)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per pass (default: 8)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8], help="concurrent callers")
    parser.add_argument("--requests", type=int, default=64, help="requests per configuration")
    parser.add_argument("--stub-requests", type=int, default=400, help="requests per stub configuration")
    parser.add_argument("--batch-pairs", type=int, default=16, help="pairs per batch request (0: none)")
    parser.add_argument("--batch-requests", type=int, default=8, help="batch requests per configuration")
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["in-process", "service", "stub"],
        choices=["in-process", "service", "stub"],
        help="what to measure (default: all)",
    )
    parser.add_argument("--max-seconds", type=float, default=900, help="stop the whole run after this")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--serve-stub", type=int, metavar="PORT", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the configurations and print a Markdown table."""
    args = _parser().parse_args(argv)
    if args.serve_stub is not None:  # the stub service the "stub" mode starts as a subprocess
        from semgrad_guard.service.app import serve

        serve(_StubScorer(), host="127.0.0.1", port=args.serve_stub, log_level="warning", max_pairs=1000)
        return 0
    if max(args.clients) > 64 or max(args.requests, args.stub_requests, args.batch_requests) > 1000:
        raise SystemExit("bounded by design: at most 64 clients and 1000 requests per configuration")
    deadline = time.monotonic() + args.max_seconds
    pool = load_pairs()
    offset = 0

    def take(n: int) -> list[tuple[str, str]]:
        nonlocal offset
        chosen = [pool[(offset + i) % len(pool)] for i in range(n)]
        offset += n
        return chosen

    results: list[Measurement] = []
    plans = [(c, 1) for c in args.clients]
    if args.batch_pairs > 0:
        plans += [(c, args.batch_pairs) for c in args.clients]

    def run_all(mode: str, single: Callable[..., Any], batch: Callable[..., Any]) -> None:
        single([("Warm-up question?", "A warm-up answer.")])
        for clients, per_request in plans:
            if mode == "stub":
                count = args.stub_requests
            else:
                count = args.requests if per_request == 1 else args.batch_requests
            if time.monotonic() > deadline:
                print(f"stopped: --max-seconds {args.max_seconds} passed", file=sys.stderr)  # noqa: T201
                return
            name = mode if per_request == 1 else f"{mode} batch"
            call = single if per_request == 1 else batch
            chosen = take(count * per_request)
            results.append(measure(name, call, chosen, clients=clients, pairs_per_request=per_request))
            print(_table(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)  # noqa: T201

    if "in-process" in args.modes:
        from semgrad_guard.scorer import SemGradScorer

        scorer = SemGradScorer(args.model, device=args.device, batch_size=args.batch_size).load()
        run_all(
            "in-process",
            lambda pairs: [scorer.score(*pairs[0])],
            lambda pairs: scorer.score_batch(pairs, errors="mark"),
        )
        del scorer
    for mode in ("service", "stub"):
        if mode not in args.modes:
            continue
        from semgrad_guard.service.remote import RemoteScorer

        port = _free_port()
        process = _start_service(args, port, stub=mode == "stub")
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url, process, deadline)
            with RemoteScorer(url, timeout=300) as remote:
                run_all(
                    mode,
                    lambda pairs: [remote.score(*pairs[0])],
                    lambda pairs: remote.score_batch(pairs, errors="mark"),
                )
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
    table = _table(results)
    print(table)  # noqa: T201
    if args.out is not None:
        figures = {
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "cpu_count": os.cpu_count(),
            "results": [r.model_dump() for r in results],
        }
        args.out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
