"""The fast pass (cached prompt, graph from the gradient position on) equals the naive full-graph pass.

Exactly (1e-9) in float64; in float32 they differ only by summation order, held to the measured drift.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import torch

from semgrad_guard import SemGradScorer
from semgrad_guard.model_parts import num_layers, output_cache, prefix_from_cache
from semgrad_guard.pairs import EncodedPair
from semgrad_guard.statistics import PassStatistics, gradient_statistics
from tests._models import tiny_lm
from tests._tolerances import EXACT, FLOAT32


def rag_prompt(facts: int) -> str:
    """A retrieval-style prompt: many context sentences, then the question."""
    context = " ".join(f"Fact {i}: the river {i} flows north into lake {i % 7}." for i in range(facts))
    return f"Context: {context}\nQuestion: where does river 5 flow?"


PAIRS = [
    ("What is the capital of France?", "Paris"),
    ("Which gas do plants absorb from the air?", "Carbon dioxide, mostly through the stomata."),
    (rag_prompt(10), "North, into lake 5."),  # about 200 tokens: fits the tiny models' 256
]
LONG = (rag_prompt(60), "North, into lake 5.")  # about 1000 tokens, for the real model


def assert_same(fast: list[PassStatistics], naive: list[PassStatistics], rtol: float = EXACT) -> None:
    """Gradients to ``rtol`` relative; token NLLs and entropies to ``rtol`` nats absolute (relative error
    means little for a NLL near 0; float32 logits of size ~20 differ by ~1e-5 absolute between matmul shapes).
    """
    assert len(fast) == len(naive)
    for a, b in zip(fast, naive, strict=True):
        torch.testing.assert_close(a.hidden_grad, b.hidden_grad, rtol=rtol, atol=0)
        for field in ("token_nll", "token_entropy"):
            torch.testing.assert_close(getattr(a, field), getattr(b, field), rtol=0, atol=rtol)
        assert a.output_grad == pytest.approx(b.output_grad, rel=rtol)
        assert a.output_grad_ce == pytest.approx(b.output_grad_ce, rel=rtol)


def both(scorer: SemGradScorer, pairs: list[EncodedPair], layers: Any = None, rtol: float = EXACT) -> None:
    model, layers = scorer.model, layers or scorer.profile.layers
    with torch.no_grad():  # also checks that a caller's no_grad does not leak into the pass
        fast = gradient_statistics(model, pairs, layers, num_layers(model), "fast")
    naive = gradient_statistics(model, pairs, layers, num_layers(model), "naive")
    assert_same(fast, naive, rtol)


@pytest.mark.parametrize("tied", [True, False])
def test_tiny_model_single_and_batched(make_tiny: Callable[..., SemGradScorer], tied: bool) -> None:
    scorer = make_tiny(tied=tied, dtype=torch.float64)
    pairs = [scorer._encode(prompt, answer) for prompt, answer in PAIRS]
    assert pairs[-1].length > 150  # a longer prompt, so most of it sits in the cache
    for pair in pairs:
        both(scorer, [pair])
    both(scorer, pairs)  # different prompt lengths: left-padded cache, right-padded graph


def test_tiny_model_lowest_layer_embeddings(make_tiny: Callable[..., SemGradScorer]) -> None:
    scorer = make_tiny(tied=False, dtype=torch.float64)
    pairs = [scorer._encode(prompt, answer) for prompt, answer in PAIRS[:2]]
    both(scorer, pairs, layers=(0, 2, 3))  # the graph starts at the input embeddings


@pytest.mark.slow
def test_embedded_model_batched_float64(embedded64: SemGradScorer) -> None:
    pairs = [embedded64._encode(prompt, answer) for prompt, answer in [*PAIRS, LONG]]
    assert pairs[-1].length > 900
    both(embedded64, pairs[:3])  # prompts of 20 to 200 tokens: left-padded cache, right-padded graph
    both(embedded64, pairs[3:])  # alone: a float64 naive batch padded to 1000 tokens needs ~9 GB


@pytest.mark.slow
def test_embedded_model_float32_within_measured_drift(embedded: SemGradScorer) -> None:
    pairs = [embedded._encode(prompt, answer) for prompt, answer in [*PAIRS, LONG]]
    both(embedded, pairs, rtol=2 * FLOAT32)


@pytest.mark.slow
def test_generation_cache_is_reused_exactly(embedded64: SemGradScorer) -> None:
    embedded = embedded64
    pair = embedded._encode(LONG[0], "North.")
    model = embedded.model
    ids = torch.tensor([pair.prompt_ids + pair.answer_ids])
    with torch.no_grad():
        cache = output_cache(model(input_ids=ids, use_cache=True))
    prefix = prefix_from_cache(cache, pair.start)
    assert prefix is not None and prefix.length == pair.start
    layers = embedded.profile.layers
    reused = gradient_statistics(model, [replace(pair, prefix=prefix)], layers, num_layers(model))
    naive = gradient_statistics(model, [pair], layers, num_layers(model), "naive")
    assert_same(reused, naive)


@pytest.mark.slow
@pytest.mark.parametrize("max_new_tokens", [3, 16])  # cut mid-answer (no end-of-turn), and whole
def test_generate_and_score_equals_score_on_its_text(embedded64: SemGradScorer, max_new_tokens: int) -> None:
    generated = embedded64.generate_and_score(PAIRS[0][0], max_new_tokens=max_new_tokens)
    assert embedded64.score(PAIRS[0][0], generated.text).reused  # adapters scoring the text reuse the pass
    # A fresh pass of the text (same weights and profile, no reuse) is the reference for the cached prefix.
    fresh = SemGradScorer(
        (embedded64.model, embedded64.tokenizer), profile=embedded64.profile, reuse_size=0, calibration=None
    )
    rescored = fresh.score(PAIRS[0][0], generated.text)
    assert not rescored.reused
    assert generated.score.n_answer_tokens == rescored.n_answer_tokens
    for field in ("semgrad", "hybridgrad", "nll", "mean_entropy"):
        assert getattr(generated.score, field) == pytest.approx(getattr(rescored, field), rel=EXACT), field


def test_scorer_modes_agree(make_tiny: Callable[..., SemGradScorer]) -> None:
    fast = make_tiny(dtype=torch.float64)
    naive = make_tiny(pass_mode="naive", dtype=torch.float64)
    for (prompt, answer), a, b in zip(PAIRS, fast.score_batch(PAIRS), naive.score_batch(PAIRS), strict=True):
        assert a.semgrad == pytest.approx(b.semgrad, rel=EXACT), (prompt, answer)
        assert a.hybridgrad == pytest.approx(b.hybridgrad, rel=EXACT)


def test_sliding_window_cache_falls_back_to_naive(tokenizer: Any) -> None:
    model = tiny_lm(len(tokenizer), family="mistral", layers=2, sliding_window=8).double()
    scorer = SemGradScorer((model, tokenizer), profile=None)
    with torch.no_grad():
        cache = output_cache(scorer.model(input_ids=torch.tensor([[1, 2, 3]]), use_cache=True))
    assert prefix_from_cache(cache, 2) is None  # sliding layers: the fast path must not reuse this cache
    both(scorer, [scorer._encode(prompt, answer) for prompt, answer in PAIRS[:2]])


def test_batch_mixing_reused_and_computed_prompt_caches(make_tiny: Callable[..., SemGradScorer]) -> None:
    scorer = make_tiny(tied=False, dtype=torch.float64)
    model, layers = scorer.model, scorer.profile.layers
    pairs = [scorer._encode(prompt, answer) for prompt, answer in PAIRS]
    with torch.no_grad():
        cache = output_cache(model(input_ids=torch.tensor([pairs[2].prompt_ids]), use_cache=True))
    mixed = [pairs[0], replace(pairs[2], prefix=prefix_from_cache(cache, pairs[2].start)), pairs[1]]
    fast = gradient_statistics(model, mixed, layers, num_layers(model))
    assert_same(
        fast,
        gradient_statistics(model, pairs[:1] + pairs[2:] + pairs[1:2], layers, num_layers(model), "naive"),
    )


@pytest.mark.parametrize("rope_type", ["dynamic", "longrope"])
def test_length_dependent_rope_takes_the_naive_pass(tokenizer: Any, rope_type: str, monkeypatch: Any) -> None:
    """A prompt cache made at one length would carry other RoPE frequencies than the graph: go naive."""
    from semgrad_guard import statistics

    rope = {"rope_type": rope_type, "factor": 4.0, "rope_theta": 10000.0}
    if rope_type == "longrope":
        rope |= {"short_factor": [1.0] * 4, "long_factor": [4.0] * 4, "original_max_position_embeddings": 32}
    positions = 32 if rope_type == "dynamic" else 128
    model = tiny_lm(
        len(tokenizer), layers=2, max_position_embeddings=positions, rope_parameters=rope
    ).double()
    scorer = SemGradScorer((model, tokenizer), profile=None)
    monkeypatch.setattr(SemGradScorer, "context_length", property(lambda self: 1 << 20))
    pairs = [scorer._encode(prompt, answer) for prompt, answer in PAIRS[:2]]
    assert max(pair.length for pair in pairs) > 32  # past the original length, where the scaling acts
    fast_calls: list[int] = []
    monkeypatch.setattr(statistics, "_fast", lambda *args: fast_calls.append(1))
    naive = gradient_statistics(model, pairs, scorer.profile.layers, 2, "naive")
    assert_same(gradient_statistics(model, pairs, scorer.profile.layers, 2, "fast"), naive)
    assert not fast_calls
