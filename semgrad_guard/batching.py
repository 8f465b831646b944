"""Micro-batching for a shared scorer: requests from many threads and tasks share forward/backward passes.

Callers put work on a bounded queue and wait on futures; one worker thread gathers what is queued (up to a
row and token budget, waiting at most ``max_wait_ms`` for more), sorts it by length so padding stays small,
and runs it. A full queue pushes back on callers; an out-of-memory pass is retried as two halves.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from semgrad_guard.errors import ScorerBusyError, ScorerOutOfMemoryError

__all__ = ["BatchingConfig", "MicroBatcher"]


class BatchingConfig(BaseModel):
    """How a scorer gathers concurrent requests into passes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_batch_tokens: int = Field(
        default=16384, ge=1, description="Most padded tokens (pairs x longest pair) in one pass."
    )
    max_wait_ms: float = Field(
        default=2.0, ge=0, description="How long a pass waits for more requests once one is queued."
    )
    max_queue: int = Field(default=1024, ge=1, description="Queued pairs before callers are held back.")
    queue_timeout_s: float | None = Field(
        default=None, ge=0, description="How long a caller waits for room; None = as long as it takes."
    )


class Sized(Protocol):
    """A piece of work whose cost grows with its token length."""

    @property
    def length(self) -> int: ...


Item = TypeVar("Item", bound=Sized)
Result = TypeVar("Result")

_IDLE_EXIT_S = 10.0  # an idle worker thread exits; the next submit starts another


class MicroBatcher(Generic[Item, Result]):
    """Runs ``run(items) -> results`` (same order) on one worker thread over micro-batches of requests."""

    def __init__(
        self, run: Callable[[list[Item]], list[Result]], config: BatchingConfig, max_batch_size: int
    ) -> None:
        """Nothing starts until the first :meth:`submit`; a pass holds at most ``max_batch_size`` items."""
        self._run = run
        self.config = config
        self.max_batch_size = max_batch_size
        self._queue: queue.Queue[tuple[Item, Future[Result]]] = queue.Queue(config.max_queue)
        self._worker: threading.Thread | None = None
        self._start = threading.Lock()

    def submit(self, items: Sequence[Item]) -> list[Future[Result]]:
        """Queue ``items``; a future per item. Blocks while the queue is full (see ``queue_timeout_s``)."""
        futures: list[Future[Result]] = []
        for item in items:
            future: Future[Result] = Future()
            self._ensure_worker()
            while not self._put(item, future, futures):
                pass
            futures.append(future)
        self._ensure_worker()  # after the last put: a worker that just went idle may have missed it
        return futures

    def _put(self, item: Item, future: Future[Result], mine: list[Future[Result]]) -> bool:
        """Queue one item; ``False`` to try again.

        A batch larger than the queue is admitted in parts: while this caller's own earlier items are still
        waiting or running, waiting for room is not a refusal.
        """
        try:
            self._queue.put((item, future), timeout=self.config.queue_timeout_s)
        except queue.Full:
            if any(not queued.done() for queued in mine):
                return False
            raise ScorerBusyError(
                f"{self.config.max_queue} pairs are already waiting and no room came within "
                f"{self.config.queue_timeout_s} s"
            ) from None
        return True

    def _ensure_worker(self) -> None:
        with self._start:
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, name="semgrad-batcher", daemon=True)
                self._worker.start()

    def _serve(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=_IDLE_EXIT_S)
            except queue.Empty:
                with self._start:
                    if self._queue.empty():
                        self._worker = None
                        return
                continue
            for batch in self._batches(self._gather(first)):
                self._execute(batch)

    def _gather(self, first: tuple[Item, Future[Result]]) -> list[tuple[Item, Future[Result]]]:
        """``first``, and whatever else arrives within one pass's budget and the wait."""
        gathered = [first]
        tokens, deadline = gathered[0][0].length, time.monotonic() + self.config.max_wait_ms / 1000
        while len(gathered) < self.max_batch_size and tokens < self.config.max_batch_tokens:
            try:
                gathered.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
            tokens += gathered[-1][0].length
        return [(item, future) for item, future in gathered if future.set_running_or_notify_cancel()]

    def _batches(
        self, requests: list[tuple[Item, Future[Result]]]
    ) -> list[list[tuple[Item, Future[Result]]]]:
        """Split by length-sorted order into passes within the row and padded-token budgets."""
        batches: list[list[tuple[Item, Future[Result]]]] = []
        for request in sorted(requests, key=lambda r: r[0].length):
            current = batches[-1] if batches else None
            if (
                current is None
                or len(current) >= self.max_batch_size
                or (len(current) + 1) * request[0].length > self.config.max_batch_tokens
            ):
                batches.append([request])
            else:
                current.append(request)
        return batches

    def _execute(self, batch: list[tuple[Item, Future[Result]]]) -> None:
        """Run one pass; on out-of-memory run the halves; never let an error escape the worker.

        The halves run after the ``except`` block is left: inside it, the traceback still holds the failed
        pass's frames and so its activations, and the retry would run out of memory again.
        """
        import torch

        out_of_memory: str | None = None
        try:
            results = self._run([item for item, _ in batch])
        except torch.OutOfMemoryError as exc:
            out_of_memory = str(exc)  # the message only: the exception and its frames are freed below
        except Exception as exc:  # the caller gets the error; the worker keeps serving
            for _, future in batch:
                future.set_exception(exc)
            return
        if out_of_memory is None:
            for (_, future), result in zip(batch, results, strict=True):
                future.set_result(result)
            return
        if len(batch) == 1:
            batch[0][1].set_exception(
                ScorerOutOfMemoryError(
                    f"one pair of {batch[0][0].length} tokens does not fit: {out_of_memory}"
                )
            )
            return
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        middle = len(batch) // 2
        self._execute(batch[:middle])
        self._execute(batch[middle:])
