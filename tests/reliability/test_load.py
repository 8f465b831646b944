"""Bounded load: many threads and asyncio tasks through one shared scorer and one guard at once. Every call
gets its own pair's result (equal to scoring it alone, within the float32 tolerance or exactly in float64),
none is lost or run twice, nothing deadlocks, and a full queue answers with a typed busy error."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
import torch
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_semgrad import GuardResult, SemGradGuard

from semgrad_guard import BatchingConfig, Score, ScorerBusyError, SemGradError, SemGradScorer
from tests._tolerances import EXACT, FLOAT32
from tests.test_reuse import counting

T = TypeVar("T")
DEADLOCK_S = 300  # far past any run on a loaded CI core: a call still waiting then is stuck, not slow
PAIRS = [
    (
        f"Question {i}: what is {i} times {i + 3}?" + " Think." * (i % 5),
        f"{i * (i + 3)}" + ", surely" * (i % 3),
    )
    for i in range(24)
]
TOLERANCE = {torch.float64: EXACT, torch.float32: 2 * FLOAT32}  # two float32 passes of one pair: twice


def concurrently(calls: list[Callable[[], T]], tasks: list[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run ``calls`` on 16 threads while ``tasks`` run as asyncio tasks on one more; results in order."""

    async def gather() -> list[T]:
        return list(await asyncio.gather(*(task() for task in tasks)))

    with ThreadPoolExecutor(max_workers=17) as pool:
        from_tasks = pool.submit(asyncio.run, gather())
        from_calls = [pool.submit(call) for call in calls]
        return [f.result(timeout=DEADLOCK_S) for f in from_calls] + from_tasks.result(timeout=DEADLOCK_S)


def assert_same(got: Score, want: Score, rel: float) -> None:
    assert (got.n_prompt_tokens, got.n_answer_tokens) == (want.n_prompt_tokens, want.n_answer_tokens)
    for field in ("semgrad", "hybridgrad", "param_grad", "nll", "mean_entropy"):
        assert getattr(got, field) == pytest.approx(getattr(want, field), rel=rel, abs=1e-12), field


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_threads_and_tasks_share_one_scorer_and_lose_nothing(
    tiny_pair: Callable[..., Any], dtype: torch.dtype
) -> None:
    pair = tiny_pair(dtype)
    alone = {p: SemGradScorer(pair, reuse_size=0).score(*p) for p in PAIRS}
    shared = SemGradScorer(pair, batching=BatchingConfig(max_wait_ms=5))
    rows = counting(shared)

    requests = [PAIRS[i % len(PAIRS)] for i in range(3 * len(PAIRS))]  # each pair asked for three times
    calls: list[Callable[[], list[Score]]] = [
        (lambda p=p: [shared.score(*p)]) if i % 2 else (lambda p=p: shared.score_batch([p, PAIRS[0]]))
        for i, p in enumerate(requests[::2])
    ]
    tasks: list[Callable[[], Awaitable[list[Score]]]] = [
        (lambda p=p: shared.ascore_batch([p])) for p in requests[1::2]
    ]
    asked = [[p] if i % 2 else [p, PAIRS[0]] for i, p in enumerate(requests[::2])] + [
        [p] for p in requests[1::2]
    ]
    answered = concurrently(calls, tasks)

    assert [len(scores) for scores in answered] == [len(pairs) for pairs in asked], "no call lost a pair"
    for pairs, scores in zip(asked, answered, strict=True):
        for p, score in zip(pairs, scores, strict=True):
            assert_same(score, alone[p], TOLERANCE[dtype])
    fresh = [score for scores in answered for score in scores if not score.reused]
    assert sum(rows) == len(fresh) == len(PAIRS), "each distinct pair ran in exactly one pass"


class Book(BaseChatModel):
    """Answers each question from a fixed book, whichever thread asks."""

    answers: dict[str, str]

    @property
    def _llm_type(self) -> str:
        return "book"

    def _generate(
        self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage(self.answers[messages[-1].text]))])


def test_threads_and_tasks_through_one_guard_get_their_own_answers(tiny_pair: Callable[..., Any]) -> None:
    pair = tiny_pair(torch.float64)
    book = Book(answers=dict(PAIRS))
    alone = {q: SemGradScorer(pair, reuse_size=0).score(q, a) for q, a in PAIRS}
    middle = sorted(score.nll or 0.0 for score in alone.values())[len(PAIRS) // 2]  # half pass, half not
    guard = SemGradGuard(
        book, policy="annotate", threshold=middle, threshold_field="nll", scorer=SemGradScorer(pair)
    )
    questions = [q for q, _ in PAIRS] * 2
    outputs = concurrently(
        [lambda q=q: guard.invoke(q) for q in questions], [lambda q=q: guard.ainvoke(q) for q in questions]
    )

    assert len(outputs) == 2 * len(questions)
    for question, output in zip(questions * 2, outputs, strict=True):
        assert output.content == book.answers[question], "every caller gets its own answer"
        result = GuardResult.model_validate(output.response_metadata["semgrad"])
        assert result.scored_prompt == [{"role": "user", "content": question}]
        assert result.score is not None and result.scorer_error is None
        assert_same(result.score, alone[question], EXACT)
        assert result.route == ("annotate" if (alone[question].nll or 0.0) > middle else "pass")


@pytest.fixture
def stalled(tiny_pair: Callable[..., Any]) -> Iterator[tuple[SemGradScorer, threading.Event]]:
    """A float64 scorer with room for 2 queued pairs (0.5 s wait for room) whose passes wait for an event."""
    scorer = SemGradScorer(
        tiny_pair(torch.float64),
        batch_size=1,
        batching=BatchingConfig(max_queue=2, queue_timeout_s=0.5, max_wait_ms=0),
    ).load()
    release = threading.Event()
    run = scorer._batcher._run
    scorer._batcher._run = lambda pairs: (release.wait(DEADLOCK_S), run(pairs))[1]
    yield scorer, release
    release.set()


def test_a_full_queue_answers_busy_instead_of_hanging(
    stalled: tuple[SemGradScorer, threading.Event], tiny_pair: Callable[..., Any]
) -> None:
    scorer, release = stalled
    outcomes: dict[int, Score | SemGradError] = {}
    refused = threading.Semaphore(0)

    def call(i: int) -> None:
        try:
            outcomes[i] = scorer.score(*PAIRS[i])
        except ScorerBusyError as exc:
            outcomes[i] = exc
            refused.release()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    # While the pass is held, at most one running pair and two queued ones are admitted: the others are
    # refused once no room came within the queue timeout. The guard, asked meanwhile, follows its policy.
    for _ in range(12 - 3):
        assert refused.acquire(timeout=DEADLOCK_S), "a caller of a full queue waited forever"
    guard = SemGradGuard(
        Book(answers=dict(PAIRS)), policy="annotate", on_scorer_error="fail_open", scorer=scorer
    )
    output = guard.invoke(PAIRS[20][0])
    result = GuardResult.model_validate(output.response_metadata["semgrad"])
    assert output.content == PAIRS[20][1] and result.flagged and result.route == "pass"
    assert result.scorer_error is not None and result.scorer_error.startswith("ScorerBusyError")
    assert result.scorer_error.endswith("(fail_open)")

    release.set()
    for thread in threads:
        thread.join(DEADLOCK_S)
    assert sorted(outcomes) == list(range(12)), "every caller got an answer"
    scored = {i: s for i, s in outcomes.items() if isinstance(s, Score)}
    assert len(scored) == 3 and len(outcomes) - len(scored) == 9
    alone = SemGradScorer(tiny_pair(torch.float64), reuse_size=0)
    for i, score in scored.items():
        assert_same(score, alone.score(*PAIRS[i]), EXACT)


def test_a_caller_sharing_a_refused_pairs_pass_gets_a_typed_error(
    stalled: tuple[SemGradScorer, threading.Event],
) -> None:
    """Two callers ask for one pair while the queue is full: the one that queued it is refused, and the one
    that waited on its pass must learn why (busy), not get an untyped error."""
    scorer, _ = stalled
    for p in PAIRS[:3]:  # one running, two queued: the queue is full
        threading.Thread(target=scorer.score, args=p, daemon=True).start()
    deadline = time.monotonic() + DEADLOCK_S
    while not scorer._batcher._queue.full():  # on a loaded machine the three take a while to get there
        assert time.monotonic() < deadline, "the three pairs never filled the queue"
        time.sleep(0.01)
    claimed = threading.Event()
    claim = scorer._reuse.claim
    scorer._reuse.claim = lambda key: (claim(key), claimed.set())[0]
    first: list[BaseException] = []

    def owner() -> None:
        try:
            scorer.score(*PAIRS[5])
        except BaseException as exc:
            first.append(exc)

    waiting_for_room = threading.Thread(target=owner)
    waiting_for_room.start()
    assert claimed.wait(DEADLOCK_S)
    scorer._reuse.claim = claim
    follower = scorer.score_batch([PAIRS[5]], errors="mark")  # reuses the claimed pass, then learns its fate
    waiting_for_room.join(DEADLOCK_S)
    assert isinstance(first[0], ScorerBusyError)
    assert not follower[0].valid and (follower[0].invalid_reason or "").startswith("busy")
