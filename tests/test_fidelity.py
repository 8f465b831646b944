"""The scorer against a plain reference written independently of it: full logits, autograd everywhere.

The reference finds its own gradient position (the assistant header's ``<|im_start|>``) and its own layer set
(the last half of the hidden states, ``L - L//2 .. L-1``), so a scorer that read a wrong profile fails here.
In float64 the two agree to 1e-9; float32 is held to its measured drift from float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from semgrad_guard import Score, SemGradScorer
from tests._tolerances import EXACT, FLOAT32

PAIRS = [
    ("What is the capital of France?", "Paris"),
    (
        "Which gas do plants absorb from the air during photosynthesis?",
        "Carbon dioxide, mostly through the stomata.",
    ),
]


def reference(model: Any, tokenizer: Any, prompt: str, answer: str) -> dict[str, float]:
    """SemGrad, HybridGrad and friends from one full forward pass with autograd to h_l and to W_out."""
    x = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    x = list(x)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    y = [*tokenizer(answer, add_special_tokens=False)["input_ids"], end]
    position = max(i for i, t in enumerate(x) if t == tokenizer.convert_tokens_to_ids("<|im_start|>"))
    depth = model.config.num_hidden_layers
    layers = list(range(depth - depth // 2, depth))
    weight = model.get_output_embeddings().weight
    was_trainable = weight.requires_grad
    weight.requires_grad_(True)  # a loaded model is frozen; the input embeddings stay detached below
    try:
        inputs = model.get_input_embeddings()(torch.tensor([x + y])).detach().requires_grad_(True)
        out = model(inputs_embeds=inputs, output_hidden_states=True)
        log_probs = out.logits[0, len(x) - 1 : len(x) + len(y) - 1].log_softmax(-1)
        token_log_probs = log_probs[torch.arange(len(y)), torch.tensor(y)]
        entropy = -(log_probs.exp() * log_probs).sum(-1).detach()
        loss = -(entropy * token_log_probs).sum() / len(y)
        (ce_grad,) = torch.autograd.grad(-token_log_probs.mean(), weight, retain_graph=True)
        grads = torch.autograd.grad(loss, [out.hidden_states[layer] for layer in layers] + [weight])
    finally:
        weight.requires_grad_(was_trainable)
    semgrad = torch.stack([g[0, position].abs().mean() for g in grads[:-1]]).mean().item()
    param_grad = grads[-1].abs().mean().item()
    alpha = math.exp(-entropy.mean().item())
    return {
        "semgrad": semgrad,
        "param_grad": param_grad,
        "exgrad": ce_grad.abs().mean().item(),
        "hybridgrad": alpha * param_grad + (1 - alpha) * semgrad,
        "mean_entropy": entropy.mean().item(),
        "nll": -token_log_probs.sum().item(),
        "max_token_nll": -token_log_probs.min().item(),
        "position": position,
        "n_answer_tokens": len(y),
    }


def assert_matches(score: Score, expected: dict[str, float], rel: float) -> None:
    for field, value in expected.items():
        assert getattr(score, field) == pytest.approx(value, rel=rel), field


@pytest.mark.parametrize("tied", [True, False])
def test_tiny_model_matches_reference_float64(make_tiny: Callable[..., SemGradScorer], tied: bool) -> None:
    scorer = make_tiny(tied=tied, dtype=torch.float64)
    for prompt, answer in PAIRS:
        expected = reference(scorer.model, scorer.tokenizer, prompt, answer)
        assert_matches(scorer.score(prompt, answer), expected, EXACT)


@pytest.mark.slow
def test_embedded_model_matches_reference_float64(embedded64: SemGradScorer) -> None:
    for prompt, answer in PAIRS:
        expected = reference(embedded64.model, embedded64.tokenizer, prompt, answer)
        assert_matches(embedded64.score(prompt, answer), expected, EXACT)


@pytest.mark.slow
def test_embedded_model_float32_within_measured_drift(
    embedded: SemGradScorer, embedded64: SemGradScorer
) -> None:
    for prompt, answer in PAIRS:
        expected = reference(embedded64.model, embedded64.tokenizer, prompt, answer)
        assert_matches(embedded.score(prompt, answer), expected, FLOAT32)


def test_reference_catches_a_wrong_position(make_tiny: Callable[..., SemGradScorer]) -> None:
    """The float64 check can fail: one token off moves SemGrad by far more than the tolerance."""
    from semgrad_guard.profiles import ModelProfile

    scorer = make_tiny(dtype=torch.float64, profile=ModelProfile(name="off", offset=-3))
    expected = reference(scorer.model, scorer.tokenizer, *PAIRS[0])
    assert scorer.score(*PAIRS[0]).semgrad != pytest.approx(expected["semgrad"], rel=1e-3)


def test_tied_model_excludes_input_embedding_path(make_tiny: Callable[..., SemGradScorer]) -> None:
    """With tied weights, autograd from non-detached inputs adds the input path; the scorer must not."""
    scorer = make_tiny(tied=True, dtype=torch.float64)
    model: Any = scorer.model
    prompt, answer = PAIRS[0]
    ids = scorer.tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_dict=True
    )["input_ids"]
    y = scorer.tokenizer(answer, add_special_tokens=False)["input_ids"] + [2]
    out = model(torch.tensor([list(ids) + y]))
    log_probs = out.logits[0, len(ids) - 1 : -1].log_softmax(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1).detach()
    loss = -(entropy * log_probs[torch.arange(len(y)), torch.tensor(y)]).sum() / len(y)
    both_paths = torch.autograd.grad(loss, model.get_output_embeddings().weight)[0].abs().mean().item()
    assert scorer.score(prompt, answer).param_grad != pytest.approx(both_paths, rel=1e-3)
