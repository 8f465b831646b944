"""One pass per distinct pair: a pair scored again (by another adapter, another thread) reuses the pass."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from semgrad_guard import BatchingConfig, SemGradScorer

PAIR = ("What is the capital of France?", "Paris")


def counting(scorer: SemGradScorer) -> list[int]:
    passes: list[int] = []
    run = scorer._batcher._run

    def spy(pairs: list[Any]) -> list[Any]:
        passes.append(len(pairs))
        return run(pairs)

    scorer._batcher._run = spy
    return passes


def test_same_pair_scored_once_and_marked_reused(make_tiny: Callable[..., SemGradScorer]) -> None:
    scorer = make_tiny()
    passes = counting(scorer)
    first = scorer.score(*PAIR)
    again = scorer.score(*PAIR)
    other = scorer.score(PAIR[0], "Lyon")
    assert passes == [1, 1]
    assert not first.reused and again.reused and not other.reused
    assert again.model_copy(update={"reused": False}) == first


def test_concurrent_callers_share_one_pass(make_tiny: Callable[..., SemGradScorer]) -> None:
    scorer = make_tiny(batching=BatchingConfig(max_wait_ms=50))
    passes = counting(scorer)
    with ThreadPoolExecutor(max_workers=6) as pool:
        scores = list(pool.map(lambda _: scorer.score(*PAIR), range(6)))
    assert sum(passes) == 1
    assert sum(not s.reused for s in scores) == 1 and len({s.semgrad for s in scores}) == 1


def test_a_failed_pass_is_not_reused(make_tiny: Callable[..., SemGradScorer]) -> None:
    scorer = make_tiny()
    run = scorer._batcher._run
    calls: list[int] = []

    def flaky(pairs: list[Any]) -> list[Any]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("device lost")
        return run(pairs)

    scorer._batcher._run = flaky
    with pytest.raises(RuntimeError, match="device lost"):
        scorer.score(*PAIR)
    assert scorer.score(*PAIR).reused is False and len(calls) == 2


def test_reuse_can_be_turned_off(make_tiny: Callable[..., SemGradScorer]) -> None:
    scorer = make_tiny(reuse_size=0)
    passes = counting(scorer)
    scorer.score(*PAIR)
    assert scorer.score(*PAIR).reused is False and passes == [1, 1]
