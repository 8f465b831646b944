"""Random-weight models with published shapes: the numbers are the published ones, a shape scores on CPU, the
cost model's memory formula is what autograd keeps. Speed is measured by benchmarks, never asserted here."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from semgrad_guard.evaluation import cost_model
from semgrad_guard.evaluation.shapes import (
    PRESETS,
    random_model,
    random_scorer,
    shallower,
    shape_config,
)
from semgrad_guard.evaluation.speed import _SavedBytes, _Shapes
from semgrad_guard.model_parts import num_layers
from semgrad_guard.pairs import EncodedPair
from semgrad_guard.statistics import gradient_statistics

# Each model's config.json on the Hugging Face Hub, and its published parameter count.
PUBLISHED: dict[str, dict[str, Any]] = {
    "qwen2.5-7b": {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "rope_theta": 1_000_000.0,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": False,
        "parameters": 7_615_616_512,
    },
    "llama-3.1-8b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "rope_theta": 500_000.0,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": False,
        "parameters": 8_030_261_248,
    },
    "mistral-7b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 32768,
        "rope_theta": 1_000_000.0,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": False,
        "parameters": 7_248_023_552,
    },
    "qwen2.5-1.5b": {
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "rope_theta": 1_000_000.0,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": True,
        "parameters": 1_543_714_304,
    },
    "smollm2-135m": {
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "vocab_size": 49152,
        "rope_theta": 100_000.0,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": True,
        "parameters": 134_515_008,
    },
}
WIDTH_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "tie_word_embeddings",
)


def test_every_published_shape_has_a_preset() -> None:
    assert set(PRESETS) == set(PUBLISHED)
    for name, numbers in PUBLISHED.items():
        spec = PRESETS[name]
        for field, value in numbers.items():
            if field != "parameters":
                assert getattr(spec, field) == value, (name, field)
        assert spec.parameters() == numbers["parameters"], name


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_reduced_depth_keeps_the_published_width(name: str) -> None:
    """A 1-layer build (and a grown vocabulary) changes the depth and vocabulary only, never the preset."""
    numbers = PUBLISHED[name]
    vocab = max(numbers["vocab_size"], 49152)
    config = shape_config(name, layers=1, vocab_size=vocab)
    for field in WIDTH_FIELDS:
        assert getattr(config, field) == numbers[field], field
    assert config.rope_parameters["rope_theta"] == numbers["rope_theta"]
    assert config.num_hidden_layers == 1 and config.vocab_size == vocab
    model = random_model(name, layers=1, vocab_size=vocab, device="meta")  # shapes only, no memory
    assert num_layers(model) == 1
    assert model.get_input_embeddings().weight.shape == (vocab, numbers["hidden_size"])
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tied == numbers["tie_word_embeddings"]
    assert sum(p.numel() for p in model.parameters()) == PRESETS[name].parameters(1, vocab)
    assert PRESETS[name].num_hidden_layers == numbers["num_hidden_layers"]
    assert PRESETS[name].vocab_size == numbers["vocab_size"]


def test_full_depth_builds_have_the_published_parameter_count() -> None:
    for name, numbers in PUBLISHED.items():
        model = random_model(name, device="meta")
        assert sum(p.numel() for p in model.parameters()) == numbers["parameters"], name


def test_llama_rope_scaling_and_mistral_full_attention_are_kept() -> None:
    llama = shape_config("llama-3.1-8b", layers=1)
    assert llama.rope_parameters["rope_type"] == "llama3" and llama.rope_parameters["factor"] == 8.0
    assert shape_config("mistral-7b", layers=1).sliding_window is None


@pytest.fixture(scope="module")
def smol(tokenizer: Any) -> Any:
    """The SmolLM2-135M shape at full width and vocabulary, 2 decoder layers, random weights."""
    return random_scorer("smollm2-135m", layers=2, tokenizer=tokenizer)


def test_a_full_width_shape_scores_on_cpu(smol: Any) -> None:
    score = smol.score("What is the capital of France?", "Paris, on the Seine.")
    assert score.valid and math.isfinite(score.semgrad) and score.semgrad > 0
    assert smol.profile.layers == (1,) and smol.profile.offset == PRESETS["smollm2-135m"].profile_offset
    pair = smol._encode("What is the capital of France?", "Paris, on the Seine.")
    fast, naive = (gradient_statistics(smol.model, [pair], (1,), 2, mode)[0] for mode in ("fast", "naive"))
    assert torch.allclose(fast.hidden_grad, naive.hidden_grad, rtol=1e-4)


def test_shallower_shares_weights_and_runs_the_first_layers(smol: Any) -> None:
    model = smol.model
    view = shallower(model, 1)
    assert num_layers(view) == 1 and num_layers(model) == 2
    assert view.get_output_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    ids = torch.tensor([smol._encode("Name a river.", "The Nile.").prompt_ids])
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[1]
        expected = model.lm_head(model.get_decoder().norm(hidden))
        assert torch.allclose(view(input_ids=ids).logits, expected, atol=1e-5)
    with pytest.raises(ValueError, match="layers"):
        shallower(model, 3)


@pytest.mark.parametrize(
    ("mode", "dtype", "layers", "batch"),
    [("fast", torch.float32, 4, 2), ("naive", torch.float32, 2, 1), ("fast", torch.bfloat16, 2, 1)],
)
def test_graph_bytes_is_what_autograd_keeps(mode: Any, dtype: torch.dtype, layers: int, batch: int) -> None:
    """The memory formula counts every tensor the pass saves for backward, to the byte."""
    spec = PRESETS["smollm2-135m"]
    model = random_model(spec, layers=layers, dtype=dtype, vocab_size=4096)  # a small head: a fast test
    prompt, answer = [1, *range(100, 131)], list(range(200, 209))
    pair = EncodedPair(prompt, answer, len(prompt) + spec.profile_offset)
    scored = tuple(range(layers - layers // 2, layers))
    counter = _SavedBytes(model)
    counter.count(lambda: gradient_statistics(model, [pair] * batch, scored, layers, mode))()
    expected = cost_model.graph_bytes(
        spec,
        mode,
        layers=layers,
        prompt=len(prompt),
        answer=len(answer),
        batch=batch,
        vocab=4096,
        s=dtype.itemsize,
    )
    assert counter.total == expected


def test_fit_depths_recovers_a_line_and_needs_two_depths() -> None:
    fit = cost_model.fit_depths([2, 4, 8], [3.0 + 0.5 * d for d in (2, 4, 8)])
    assert fit.a == pytest.approx(3.0) and fit.b == pytest.approx(0.5) and fit(28) == pytest.approx(17.0)
    assert fit.max_residual == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        cost_model.fit_depths([4, 4], [1.0, 2.0])


def test_preset_flops_agree_with_the_model_count(smol: Any) -> None:
    spec = PRESETS["smollm2-135m"]
    shapes = _Shapes(smol.model)
    start = 300 + spec.profile_offset
    assert cost_model.fast_pass_flops(spec, layers=2, prompt=300, answer=32) == pytest.approx(
        shapes.fast_pass(300, start, 32, 1)
    )


def test_kv_cache_and_weight_bytes() -> None:
    spec = PRESETS["llama-3.1-8b"]
    # 8 KV heads x 128 x (key + value) x 2 bytes: 4 KiB per layer per token in bfloat16.
    assert cost_model.kv_cache_bytes(spec, layers=1, tokens=1, s=2) == 4096
    assert cost_model.weight_bytes(spec, s=2) == 2 * 8_030_261_248
