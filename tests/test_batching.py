"""Batched, threaded and async scoring give the same scores as one-by-one scoring.

Exactly (1e-9) in float64; in float32 only summation order differs, held to the measured drift.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from semgrad_guard import Score, SemGradScorer
from semgrad_guard.prompts import Prompt
from tests._tolerances import EXACT, FLOAT32

FIELDS = ["semgrad", "hybridgrad", "param_grad", "mean_entropy", "nll", "ln_nll", "max_token_nll"]

PAIRS: list[tuple[Prompt, str]] = [
    ("What is the capital of France?", "Paris"),
    ("Who proposed the theory of evolution by natural selection?", "Charles Darwin"),
    (
        "What do you call the process by which plants make food from sunlight?",
        "Photosynthesis, which happens in chloroplasts.",
    ),
    (
        [
            {"role": "system", "content": "Answer with one word. Use the context.\nContext: Mars is red."},
            {"role": "user", "content": "Which planet is red?"},
        ],
        "Mars",
    ),
    (
        [
            {"role": "user", "content": "Name a noble gas."},
            {"role": "assistant", "content": "Neon."},
            {"role": "user", "content": "Another one, please, that is used in balloons because it is light?"},
        ],
        "Helium",
    ),
    ("Is water wet?", "Yes"),
]


def assert_same(batched: list[Score], single: list[Score], rel: float = EXACT) -> None:
    for got, want in zip(batched, single, strict=True):
        assert got.position == want.position and got.n_answer_tokens == want.n_answer_tokens
        for field in FIELDS:
            assert getattr(got, field) == pytest.approx(getattr(want, field), rel=rel), field


@pytest.mark.slow
def test_batch_equals_one_by_one_on_embedded_model_float64(embedded64: SemGradScorer) -> None:
    single = [embedded64.score(p, a) for p, a in PAIRS]
    assert_same(embedded64.score_batch(PAIRS), single)
    assert len({s.n_prompt_tokens for s in single}) > 3  # lengths really differ, so padding is exercised


@pytest.mark.slow
def test_batch_float32_within_measured_drift(embedded: SemGradScorer) -> None:
    single = [embedded.score(p, a) for p, a in PAIRS]
    assert_same(embedded.score_batch(PAIRS), single, rel=2 * FLOAT32)


def test_small_batches_keep_input_order(make_tiny) -> None:  # type: ignore[no-untyped-def]
    scorer = make_tiny(batch_size=2, dtype=torch.float64)
    single = [scorer.score(p, a) for p, a in PAIRS]
    assert_same(scorer.score_batch(PAIRS), single)
    # Order is really checked: the pairs' scores differ by far more than the tolerance.
    assert len({round(s.semgrad or 0, 12) for s in single}) == len(PAIRS)


def test_threads_and_async_equal_sequential(make_tiny) -> None:  # type: ignore[no-untyped-def]
    scorer = make_tiny(dtype=torch.float64)
    single = [scorer.score(p, a) for p, a in PAIRS]
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(lambda pair: scorer.score(*pair), PAIRS))
    assert_same(threaded, single)

    async def gather() -> list[Score]:
        return list(await asyncio.gather(*(scorer.ascore(p, a) for p, a in PAIRS)))

    assert_same(asyncio.run(gather()), single)
    assert_same(asyncio.run(scorer.ascore_batch(PAIRS)), single)


@pytest.mark.slow
def test_generate_and_score_scores_its_own_tokens(embedded64: SemGradScorer) -> None:
    embedded = embedded64
    prompt = "What is the capital of France?"
    generated = embedded.generate_and_score(prompt, max_new_tokens=24)
    assert generated.text and generated.score.valid
    assert generated.score.n_answer_tokens is not None and 1 <= generated.score.n_answer_tokens <= 24
    ids = embedded.tokenizer(generated.text, add_special_tokens=False)["input_ids"]
    assert (
        len(ids) + 1 == generated.score.n_answer_tokens
    )  # the text re-tokenizes to the same ids + <|im_end|>
    assert_same([embedded.score(prompt, generated.text)], [generated.score])
