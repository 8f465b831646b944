import asyncio
import time

import pytest
from llama_index.core.evaluation import BatchEvalRunner, EvaluationResult
from llama_index.evaluation.semgrad import SemGradEvaluator

from semgrad_guard import SemGradScorer

# The same pair scored in passes of other shapes differs by float32 summation order: up to 1e-3
# relative between two float32 runs (measured drift, docs/method.md "Precision").
FLOAT32_DRIFT = 1e-3

pytestmark = pytest.mark.slow

QUERIES = [
    "When was Harbor Lane Library founded?",
    "What is the cafe at Harbor Lane Library called?",
    "Who wrote Romeo and Juliet?",
    "How many books can a member borrow?",
]
ANSWERS = ["In 1921.", "The Quiet Cup.", "", "Twelve books."]
CONTEXTS = [
    ["Harbor Lane Library was founded in 1921 by the sea captain Edith Marlow."],
    ["The Harbor Lane Library cafe is called The Quiet Cup."],
    ["William Shakespeare wrote the play Romeo and Juliet around 1595."],
    ["Members of Harbor Lane Library may borrow up to 12 books at a time."],
]


@pytest.fixture(scope="module")
def sequential(li_scorer: SemGradScorer) -> list[EvaluationResult]:
    """One evaluate() call after another: the reference for the concurrent runs."""
    evaluator = SemGradEvaluator(scorer=li_scorer, threshold=1e-3, threshold_field="semgrad")
    return [
        evaluator.evaluate(query=q, response=a, contexts=c)
        for q, a, c in zip(QUERIES, ANSWERS, CONTEXTS, strict=True)
    ]


def _same(a: EvaluationResult, b: EvaluationResult) -> None:
    assert a.invalid_result == b.invalid_result and a.invalid_reason == b.invalid_reason
    assert a.passing == b.passing and a.response == b.response
    if a.score is None or b.score is None:
        assert a.score is b.score
    else:
        # Concurrent evaluations share padded passes (micro-batching): equal to batched-scoring precision.
        assert a.score == pytest.approx(b.score, rel=FLOAT32_DRIFT, abs=0.0)


def test_batch_eval_runner_with_workers_equals_sequential(
    li_scorer: SemGradScorer, sequential: list[EvaluationResult]
) -> None:
    # A scorer over the same loaded model without reuse, so the batch runs its own passes (with reuse
    # every pair would come from the sequential run's cache and the loop check below would test nothing).
    fresh = SemGradScorer((li_scorer.model, li_scorer.tokenizer), profile=li_scorer.profile, reuse_size=0)
    evaluator = SemGradEvaluator(scorer=fresh, threshold=1e-3, threshold_field="semgrad")
    runner = BatchEvalRunner({"semgrad": evaluator}, workers=4)

    async def run() -> tuple[dict[str, list[EvaluationResult]], int]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:  # counts while the runner works: proves the loop is not blocked
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        tick_task = asyncio.create_task(ticker())
        results = await runner.aevaluate_response_strs(
            queries=QUERIES, response_strs=ANSWERS, contexts_list=CONTEXTS
        )
        done.set()
        await tick_task
        return results, ticks

    start = time.perf_counter()
    results, ticks = asyncio.run(run())
    elapsed = time.perf_counter() - start
    batched = results["semgrad"]
    assert len(batched) == len(sequential)
    for a, b in zip(batched, sequential, strict=True):
        _same(a, b)
    assert sum(r.invalid_result for r in batched) == 1  # the empty answer
    assert ticks >= elapsed / 0.01 * 0.3  # the loop kept ticking during the passes


def test_concurrent_aevaluate_share_one_scorer(
    li_scorer: SemGradScorer, sequential: list[EvaluationResult]
) -> None:
    evaluator = SemGradEvaluator(scorer=li_scorer, threshold=1e-3, threshold_field="semgrad")

    async def run() -> list[EvaluationResult]:
        calls = (
            evaluator.aevaluate(query=q, response=a, contexts=c)
            for q, a, c in zip(QUERIES, ANSWERS, CONTEXTS, strict=True)
        )
        return list(await asyncio.gather(*calls))

    for result, reference in zip(asyncio.run(run()), sequential, strict=True):
        _same(result, reference)
