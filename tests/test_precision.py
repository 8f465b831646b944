"""Half-precision models (the GPU defaults, emulated on the CPU) keep their scores close to float32.

Statistics are computed in float32 from the hooked head input, and a float16 loss is scaled before the
backward; the tolerances are the measured drift of ``benchmarks/precision.py`` with a margin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from semgrad_guard import Score, SemGradScorer
from semgrad_guard.model_parts import num_layers
from semgrad_guard.statistics import gradient_statistics
from tests._tolerances import BFLOAT16, FLOAT16

PAIRS = [
    ("What is the capital of France?", "Paris"),
    ("Which gas do plants absorb from the air?", "Carbon dioxide, mostly through the stomata."),
    ("Who wrote Romeo and Juliet?", "Charles Dickens wrote it in 1850."),
]
FIELDS = ["semgrad", "hybridgrad", "param_grad", "exgrad", "mean_entropy", "nll"]
HALF = {"bfloat16": (torch.bfloat16, BFLOAT16), "float16": (torch.float16, FLOAT16)}


def assert_close(got: list[Score], want: list[Score], rel: float) -> None:
    for a, b in zip(got, want, strict=True):
        assert a.n_answer_tokens == b.n_answer_tokens
        for field in FIELDS:
            assert getattr(a, field) == pytest.approx(getattr(b, field), rel=rel), field


@pytest.mark.parametrize("dtype", list(HALF))
def test_tiny_half_model_close_to_float32(make_tiny: Callable[..., SemGradScorer], dtype: str) -> None:
    torch_dtype, rel = HALF[dtype]
    reference = make_tiny().score_batch(PAIRS)
    half = make_tiny(dtype=torch_dtype)  # the same seed: the same weights, rounded
    assert half.model.dtype == torch_dtype
    assert_close(half.score_batch(PAIRS), reference, rel)
    assert_close([half.score(p, a) for p, a in PAIRS], reference, rel)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", list(HALF))
def test_embedded_half_model_close_to_float32(embedded: SemGradScorer, dtype: str) -> None:
    rel = HALF[dtype][1]
    half = SemGradScorer(device="cpu", dtype=dtype)  # type: ignore[arg-type]
    reference = embedded.score_batch(PAIRS)
    assert_close(half.score_batch(PAIRS), reference, rel)
    assert_close([half.score(p, a) for p, a in PAIRS], reference, rel)


def zero_share(scorer: SemGradScorer) -> float:
    pairs = [scorer._encode(p, a) for p, a in PAIRS]
    stats = gradient_statistics(scorer.model, pairs, scorer.profile.layers, num_layers(scorer.model))
    return float(torch.cat([s.hidden_grad_vectors.flatten() for s in stats]).eq(0).double().mean())


@pytest.mark.slow
def test_float16_gradients_do_not_underflow(embedded: SemGradScorer) -> None:
    """Unscaled, 6.6e-4 of the embedded model's float16 hidden-state gradient entries flush to zero; scaled,
    3.9e-5 stay zero whatever the scale (zeros of the float16 forward, not of the backward's range)."""
    half: Any = SemGradScorer(device="cpu", dtype="float16")
    assert zero_share(embedded) == 0.0
    assert zero_share(half) < 2e-4
