"""The scorer against a plain reference: full logits, autograd to the hidden states and to W_out."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from semgrad_guard import Score, SemGradScorer

PAIRS = [
    ("What is the capital of France?", "Paris"),
    (
        "Which gas do plants absorb from the air during photosynthesis?",
        "Carbon dioxide, mostly through the stomata.",
    ),
]


def reference(scorer: SemGradScorer, prompt: str, answer: str) -> dict[str, float]:
    """SemGrad, HybridGrad and friends from one full forward pass, written independently of the scorer."""
    model, tokenizer, profile = scorer.model, scorer.tokenizer, scorer.profile
    messages = [{"role": "user", "content": prompt}]
    x = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    x = list(x["input_ids"])
    y = tokenizer(answer, add_special_tokens=False)["input_ids"] + [
        tokenizer.convert_tokens_to_ids("<|im_end|>")
    ]
    ids = torch.tensor([x + y])
    inputs = model.get_input_embeddings()(ids).detach()
    out = model(inputs_embeds=inputs, output_hidden_states=True)
    log_probs = out.logits[0, len(x) - 1 : len(x) + len(y) - 1].float().log_softmax(-1)
    token_log_probs = log_probs[torch.arange(len(y)), torch.tensor(y)]
    entropy = -(log_probs.exp() * log_probs).sum(-1).detach()
    loss = -(entropy * token_log_probs).sum() / len(y)
    weight = model.get_output_embeddings().weight
    (ce_grad,) = torch.autograd.grad(-token_log_probs.mean(), weight, retain_graph=True)
    layers = list(profile.layers)
    grads = torch.autograd.grad(loss, [out.hidden_states[layer] for layer in layers] + [weight])
    position = len(x) + profile.offset
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
    }


def assert_matches(score: Score, expected: dict[str, float]) -> None:
    for field, value in expected.items():
        assert getattr(score, field) == pytest.approx(value, rel=1e-5), field


@pytest.mark.parametrize("tied", [True, False])
def test_tiny_model_matches_reference(make_tiny: Callable[..., SemGradScorer], tied: bool) -> None:
    scorer = make_tiny(tied=tied)
    for prompt, answer in PAIRS:
        assert_matches(scorer.score(prompt, answer), reference(scorer, prompt, answer))


@pytest.mark.slow
def test_embedded_model_matches_reference(embedded: SemGradScorer) -> None:
    for prompt, answer in PAIRS:
        assert_matches(embedded.score(prompt, answer), reference(embedded, prompt, answer))


def test_tied_model_excludes_input_embedding_path(make_tiny: Callable[..., SemGradScorer]) -> None:
    """With tied weights, autograd from non-detached inputs adds the input path; the scorer must not."""
    scorer = make_tiny(tied=True)
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
