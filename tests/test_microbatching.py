"""Micro-batching: shared passes for concurrent callers, back-pressure, out-of-memory splitting."""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import torch

from semgrad_guard import (
    BatchingConfig,
    Score,
    ScorerBusyError,
    ScorerOutOfMemoryError,
    SemGradScorer,
)
from semgrad_guard import batching as batching_module
from semgrad_guard.batching import MicroBatcher
from tests._tolerances import EXACT

PAIRS = [(f"What is {i} plus {i}?", f"{2 * i}, I think, since {i} and {i} make {2 * i}.") for i in range(16)]


@dataclass(frozen=True)
class Job:
    length: int


def recording_scorer(
    make_tiny: Callable[..., SemGradScorer], **kwargs: object
) -> tuple[SemGradScorer, list[int]]:
    """A tiny scorer whose passes record how many pairs each one held (no reuse: every call runs)."""
    scorer = make_tiny(reuse_size=0, **kwargs)
    sizes: list[int] = []
    run = scorer._batcher._run

    def spy(pairs: list) -> list:  # type: ignore[type-arg]
        sizes.append(len(pairs))
        return run(pairs)

    scorer._batcher._run = spy
    return scorer, sizes


def test_concurrent_callers_share_passes_and_get_their_own_scores(
    make_tiny: Callable[..., SemGradScorer],
) -> None:
    scorer, sizes = recording_scorer(make_tiny, batching=BatchingConfig(max_wait_ms=50), dtype=torch.float64)
    alone = [scorer.score(p, a) for p, a in PAIRS]
    assert sizes == [1] * len(PAIRS)
    sizes.clear()
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(lambda pair: scorer.score(*pair), PAIRS))
    assert max(sizes) > 1 and sum(sizes) == len(PAIRS)
    for got, want in zip(together, alone, strict=True):
        assert got.n_prompt_tokens == want.n_prompt_tokens
        assert got.semgrad == pytest.approx(want.semgrad, rel=EXACT)


def test_async_tasks_share_passes(make_tiny: Callable[..., SemGradScorer]) -> None:
    scorer, sizes = recording_scorer(make_tiny, batching=BatchingConfig(max_wait_ms=50), dtype=torch.float64)
    alone = [scorer.score(p, a) for p, a in PAIRS]
    sizes.clear()

    async def many() -> list[Score]:
        return list(await asyncio.gather(*(scorer.ascore(p, a) for p, a in PAIRS)))

    together = asyncio.run(many())
    assert max(sizes) > 1
    assert [s.semgrad for s in together] == pytest.approx([s.semgrad for s in alone], rel=EXACT)


def test_passes_respect_row_and_token_budgets() -> None:
    seen: list[list[int]] = []
    release = threading.Event()

    def run(jobs: list[Job]) -> list[int]:
        release.wait(5)
        seen.append([job.length for job in jobs])
        return [job.length for job in jobs]

    batcher = MicroBatcher(run, BatchingConfig(max_batch_tokens=100, max_wait_ms=20), max_batch_size=3)
    first = batcher.submit([Job(5)])  # occupies the worker while the rest queue up
    rest = batcher.submit([Job(n) for n in (40, 10, 30, 20, 10)])
    release.set()
    assert [f.result(5) for f in first + rest] == [5, 40, 10, 30, 20, 10]
    for lengths in seen:
        assert len(lengths) <= 3 and len(lengths) * max(lengths) <= 100
        assert lengths == sorted(lengths)  # sorted by length so padding stays small


def test_full_queue_pushes_back() -> None:
    release = threading.Event()
    batcher = MicroBatcher(
        lambda jobs: [release.wait(5) for _ in jobs],
        BatchingConfig(max_queue=2, queue_timeout_s=0.05, max_wait_ms=0),
        max_batch_size=1,
    )
    running = batcher.submit([Job(1)])
    time.sleep(0.05)  # the worker has taken it and is blocked in the pass
    batcher.submit([Job(1), Job(1)])  # fills the queue
    with pytest.raises(ScorerBusyError):
        batcher.submit([Job(1)])
    release.set()
    assert running[0].result(5) is True


def test_a_full_queue_refuses_while_a_pass_holds_the_scorer(make_tiny: Callable[..., SemGradScorer]) -> None:
    """A caller of a loaded scorer waits only for queue room, never for the running pass (which holds the
    scorer's lock), so ``queue_timeout_s`` is what it waits before ScorerBusyError."""
    scorer = make_tiny(
        batch_size=1, batching=BatchingConfig(max_queue=1, queue_timeout_s=0.05, max_wait_ms=0)
    ).load()
    inside, release = threading.Event(), threading.Event()

    def hold(*_: object) -> None:  # runs inside the pass, with the scorer's lock held
        inside.set()
        release.wait(10)

    handle = scorer.model.get_input_embeddings().register_forward_hook(hold)
    try:
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(scorer.score, "Hi?", "held inside its pass")
            assert inside.wait(10)
            queued = pool.submit(scorer.score, "Hi?", "waits in the queue")
            for _ in range(1000):  # until the queued call is on the queue (never, if it waits on the pass)
                if scorer._batcher._queue.full():
                    break
                time.sleep(0.01)
            assert scorer._batcher._queue.full() and inside.is_set() and not release.is_set()
            with pytest.raises(ScorerBusyError):
                scorer.score("Hi?", "one too many")
            release.set()
            assert running.result(10).valid and queued.result(10).valid
    finally:
        release.set()
        handle.remove()


def test_out_of_memory_splits_the_pass() -> None:
    sizes: list[int] = []

    def run(jobs: list[Job]) -> list[int]:
        sizes.append(len(jobs))
        if len(jobs) > 2 or any(job.length > 99 for job in jobs):
            raise torch.OutOfMemoryError("pretend the device is full")
        return [job.length * 10 for job in jobs]

    gate = threading.Event()
    batcher = MicroBatcher(
        lambda jobs: (gate.wait(5), run(jobs))[1], BatchingConfig(max_wait_ms=20), max_batch_size=8
    )
    blocker = batcher.submit([Job(1)])
    futures = batcher.submit([Job(n) for n in range(2, 8)] + [Job(100)])
    gate.set()
    assert blocker[0].result(5) == 10
    assert [f.result(5) for f in futures[:-1]] == [n * 10 for n in range(2, 8)]
    with pytest.raises(ScorerOutOfMemoryError):
        futures[-1].result(5)
    assert max(sizes) > 2  # it did try bigger passes first


def test_halves_run_after_the_failed_pass_is_freed() -> None:
    """A pass that runs out of memory holds its activations in its frame; the retry must not overlap them."""
    alive: list[weakref.ref[torch.Tensor]] = []
    overlaps: list[bool] = []

    def run(jobs: list[Job]) -> list[int]:
        overlaps.append(any(ref() is not None for ref in alive))
        activations = torch.empty(1 << 20)  # what a real pass keeps alive until its frame is gone
        alive.append(weakref.ref(activations))
        if len(jobs) > 1:
            raise torch.OutOfMemoryError("pretend the device is full")
        return [jobs[0].length]

    batcher = MicroBatcher(run, BatchingConfig(max_wait_ms=50), max_batch_size=4)
    futures = batcher.submit([Job(n) for n in range(1, 5)])
    assert [f.result(5) for f in futures] == [1, 2, 3, 4]
    assert len(overlaps) == 7 and not any(overlaps)  # 4 -> 2 + 2 -> 1 + 1 + 1 + 1, never two at once


def test_scorer_marks_a_pair_that_never_fits(make_tiny: Callable[..., SemGradScorer]) -> None:
    scorer = make_tiny()

    def no_room(pairs: list) -> list:  # type: ignore[type-arg]
        raise torch.OutOfMemoryError("pretend")

    scorer._batcher._run = no_room
    marked = scorer.score("Hi?", "Hello", errors="mark")
    assert not marked.valid and marked.invalid_reason is not None
    assert marked.invalid_reason.startswith("out_of_memory")
    with pytest.raises(ScorerOutOfMemoryError):
        scorer.score("Hi?", "Hello")


def test_worker_survives_errors_and_idles_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batching_module, "_IDLE_EXIT_S", 0.05)

    def run(jobs: list[Job]) -> list[int]:
        if any(job.length == 0 for job in jobs):
            raise ValueError("bad job")
        return [job.length for job in jobs]

    batcher = MicroBatcher(run, BatchingConfig(max_wait_ms=0), max_batch_size=1)
    with pytest.raises(ValueError, match="bad job"):
        batcher.submit([Job(0)])[0].result(5)
    assert batcher.submit([Job(3)])[0].result(5) == 3
    time.sleep(0.3)
    assert batcher._worker is None  # the idle worker exited ...
    assert batcher.submit([Job(4)])[0].result(5) == 4  # ... and a new one serves the next request
