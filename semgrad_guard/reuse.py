"""One pass per distinct pair: recent pairs' scores, pending or done, shared by every caller of a scorer.

Adapters often score the same (prompt, answer) twice: a query-engine wrapper and an event handler both
observing one LLM call, a guard and a callback handler on one chain. The scorer keys each pair by its exact
token ids (the model, profile and dtype are the scorer's own) and hands later callers the first caller's
future, so the pass runs once and the reuse is visible as ``Score.reused``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from typing import Generic, TypeVar

__all__ = ["PairKey", "ReuseCache"]

PairKey = tuple[tuple[int, ...], tuple[int, ...]]
"""A pair's prompt ids and answer ids."""
Result = TypeVar("Result")


class ReuseCache(Generic[Result]):
    """The futures of the last ``size`` distinct pairs; failures are forgotten so a retry runs again."""

    def __init__(self, size: int, mark: Callable[[Result], Result]) -> None:
        """Keep at most ``size`` pairs (0 keeps none); ``mark`` labels a result handed to a later caller."""
        self.size = size
        self._mark = mark
        self._items: OrderedDict[PairKey, Future[Result]] = OrderedDict()
        self._lock = threading.Lock()

    def claim(self, key: PairKey) -> tuple[Future[Result], bool]:
        """A view of the pair's result and ``True`` if another call claimed it; else a new future to fill."""
        future: Future[Result] = Future()
        if self.size == 0:
            return future, False
        with self._lock:
            known = self._items.get(key)
            if known is not None:
                self._items.move_to_end(key)
                _follow(known, future, self._mark)
                return future, True
            self._items[key] = future
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return future, False

    def fill(self, key: PairKey, claimed: Future[Result], source: Future[Result]) -> None:
        """Complete ``claimed`` with ``source``'s outcome when it arrives; a failure is not kept."""
        source.add_done_callback(lambda done: None if _ok(done) else self.forget(key, claimed))
        _follow(source, claimed, lambda result: result)

    def forget(self, key: PairKey, claimed: Future[Result]) -> None:
        """Drop ``key`` if it still maps to ``claimed`` (a refused or failed pass)."""
        with self._lock:
            if self._items.get(key) is claimed:
                del self._items[key]


def _ok(done: Future[Result]) -> bool:
    return not done.cancelled() and done.exception() is None


def _follow(source: Future[Result], target: Future[Result], mark: Callable[[Result], Result]) -> None:
    """Give ``target`` the outcome of ``source`` (its result passed through ``mark``) when it arrives.

    Every outcome is passed on, a cancellation too, so a caller sharing another's pass never waits forever.
    """

    def copy(done: Future[Result]) -> None:
        if target.done():
            return
        if done.cancelled():
            target.set_exception(CancelledError("the pass this call shared was cancelled"))
        elif _ok(done):
            target.set_result(mark(done.result()))
        else:
            target.set_exception(done.exception())

    source.add_done_callback(copy)
