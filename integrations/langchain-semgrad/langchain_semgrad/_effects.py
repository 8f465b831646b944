"""The I/O of `SemGradGuard`: the effects its one policy core yields, and the two drivers that perform them.

The core (``SemGradGuard._steps``) is a generator that makes every decision and yields an *effect* wherever
it needs I/O, then gets the effect's result back (or its error thrown in). :func:`drive` performs effects
with blocking calls for ``invoke``/``stream``, :func:`adrive` awaits them for ``ainvoke``/``astream``: that
is all the sync and async paths do differently.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, NamedTuple, TypeVar

from langchain_core.callbacks import (
    BaseCallbackHandler,
    BaseCallbackManager,
    adispatch_custom_event,
    dispatch_custom_event,
)
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda

from semgrad_guard import Scorer
from semgrad_guard.prompts import Prompt

END = object()
"""What a :class:`Next` gets back once the chunks are exhausted."""


class Invoke(NamedTuple):
    """Run ``runnable`` on ``input``: its output, or with ``stream`` its (async) iterator of chunks.

    ``capture``: a callback handler added (inherited) to this call's callbacks, to watch its child runs.
    """

    runnable: Runnable[Any, Any]
    input: Any
    stream: bool = False
    capture: BaseCallbackHandler | None = None


class ScoreAnswer(NamedTuple):
    """Score ``(prompt, text)``, failing after ``timeout`` seconds (``None``: no limit); gets the Score."""

    scorer: Scorer
    prompt: Prompt
    text: str
    timeout: float | None


class Next(NamedTuple):
    """The next chunk of an :class:`Invoke` with ``stream``, or :data:`END`."""

    chunks: Any


class Offload(NamedTuple):
    """A blocking call of the policy's own (review queue or handler): a worker thread on the async path."""

    function: Callable[[Any], Any]
    argument: Any


class Dispatch(NamedTuple):
    """Publish ``data`` as the custom event ``name``."""

    name: str
    data: dict[str, Any]


class Trace(NamedTuple):
    """Record ``data`` as a child run ``name`` carrying ``tags`` and ``metadata``: what tracers display."""

    name: str
    data: dict[str, Any]
    tags: list[str]
    metadata: dict[str, Any]


class Emit(NamedTuple):
    """Hand ``value`` to the caller: the output of ``invoke``, or one chunk of ``stream``."""

    value: Any


IOEffect = Invoke | ScoreAnswer | Next | Offload | Dispatch | Trace
"""The effects a driver performs (it passes :class:`Emit` values on to its caller instead)."""
T = TypeVar("T")
Steps = Generator[IOEffect | Emit, Any, T]
"""The core, or one part of it: yields effects, gets their results, returns a ``T``."""


class Run:
    """Steps one call of the core: each effect's result is sent back into it, or its error thrown in.

    The core catches what it handles (a scorer failure becomes a verdict); any other error goes on up,
    raised from the point where the core asked for the I/O that failed.
    """

    def __init__(self, steps: Steps[None]) -> None:
        self._steps = steps
        self.result: Any = None
        self._error: Exception | None = None

    def __iter__(self) -> Iterator[IOEffect | Emit]:
        while True:
            result, error, self.result, self._error = self.result, self._error, None, None
            try:
                effect = self._steps.send(result) if error is None else self._steps.throw(error)
            except StopIteration:
                return
            yield effect

    @contextmanager
    def catching(self) -> Iterator[None]:
        """Keep an effect's error for the core instead of raising it in the driver."""
        try:
            yield
        except Exception as exc:  # whatever failed, the core decides
            self._error = exc


# ------------------------------------------------------------------------------ sync driver: blocking I/O
def drive(steps: Steps[None], config: RunnableConfig) -> Iterator[Any]:
    for effect in (run := Run(steps)):
        if isinstance(effect, Emit):
            yield effect.value
            continue
        with run.catching():
            run.result = _perform(effect, config)


def _perform(effect: IOEffect, config: RunnableConfig) -> Any:
    if isinstance(effect, ScoreAnswer):
        if effect.timeout is None:
            return effect.scorer.score(effect.prompt, effect.text)
        job = _timeout_pool().submit(effect.scorer.score, effect.prompt, effect.text)
        try:
            return job.result(timeout=effect.timeout)
        except TimeoutError:
            raise _timed_out(effect.timeout) from None
    if isinstance(effect, Invoke) and effect.stream:
        return effect.runnable.stream(effect.input, _watched(config, effect.capture))
    if isinstance(effect, Invoke):
        return effect.runnable.invoke(effect.input, _watched(config, effect.capture))
    if isinstance(effect, Offload):
        return effect.function(effect.argument)
    if isinstance(effect, Next):
        return next(effect.chunks, END)
    if isinstance(effect, Trace):
        return _trace_step(effect).invoke(effect.data, _trace_config(effect, config))
    return dispatch_custom_event(effect.name, effect.data, config=config)


def _trace_step(effect: Trace) -> Runnable[Any, Any]:
    return RunnableLambda(_identity, name=effect.name)


def _identity(data: dict[str, Any]) -> dict[str, Any]:
    return data


def _trace_config(effect: Trace, config: RunnableConfig) -> RunnableConfig:
    tags = [*config.get("tags", []), *effect.tags]
    return {**config, "tags": tags, "metadata": {**config.get("metadata", {}), **effect.metadata}}


def _timed_out(timeout: float) -> TimeoutError:
    return TimeoutError(f"scoring took longer than scorer_timeout={timeout}s and was abandoned")


def _watched(config: RunnableConfig, handler: BaseCallbackHandler | None) -> RunnableConfig:
    """``config`` with ``handler`` added to its callbacks (inherited by every child run); a copy."""
    if handler is None:
        return config
    callbacks = config.get("callbacks")
    if isinstance(callbacks, BaseCallbackManager):
        manager = callbacks.copy()
        manager.add_handler(handler, inherit=True)
        return {**config, "callbacks": manager}
    return {**config, "callbacks": [*(callbacks or []), handler]}


@lru_cache(maxsize=1)
def _timeout_pool() -> ThreadPoolExecutor:
    """Worker threads for sync scoring with a timeout (a timed-out pass finishes in the background)."""
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="semgrad-guard")


# ----------------------------------------------------------------------------- async driver: awaited I/O
async def adrive(steps: Steps[None], config: RunnableConfig) -> AsyncIterator[Any]:
    for effect in (run := Run(steps)):
        if isinstance(effect, Emit):
            yield effect.value
            continue
        with run.catching():
            run.result = await _aperform(effect, config)


async def _aperform(effect: IOEffect, config: RunnableConfig) -> Any:
    if isinstance(effect, ScoreAnswer):  # the scorer's ascore keeps the pass off the event loop
        scoring = effect.scorer.ascore(effect.prompt, effect.text)
        try:
            return await asyncio.wait_for(scoring, effect.timeout)
        except TimeoutError:
            if effect.timeout is None:
                raise
            raise _timed_out(effect.timeout) from None
    if isinstance(effect, Invoke) and effect.stream:
        return effect.runnable.astream(effect.input, _watched(config, effect.capture))
    if isinstance(effect, Invoke):
        return await effect.runnable.ainvoke(effect.input, _watched(config, effect.capture))
    if isinstance(effect, Offload):
        return await asyncio.to_thread(effect.function, effect.argument)
    if isinstance(effect, Next):
        return await anext(effect.chunks, END)
    if isinstance(effect, Trace):
        return await _trace_step(effect).ainvoke(effect.data, _trace_config(effect, config))
    return await adispatch_custom_event(effect.name, effect.data, config=config)
