"""How far scores move with dtype, batch composition, pass mode and threads, against a float64 reference.

    semgrad-guard bench-precision [--model PATH]

Scores a fixed set of pairs (short QA, chat histories, a ~1000-token RAG prompt) with the model in float64,
the reference, then in float32, bfloat16 and float16, each one by one, as one batch, with the naive pass and
from four threads at once. Prints the largest relative deviation of each score from float64, between two
float32 computations of the same pair, and of half precision from float32; the share of hidden-state
gradient entries that are exactly zero; and HybridGrad's output-weight term with and without the tied
input-embedding path that the authors' code adds. docs/method.md ("Precision") quotes these tables.

transformers' RMSNorm computes in float32 even in a float64 model; :func:`float64_norms` makes it compute in
float64, so that the reference (and the exactness tests) measure the pass, not that norm.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import Any

import torch

from semgrad_guard import BatchingConfig, Score, SemGradScorer
from semgrad_guard.loading import DTypeName
from semgrad_guard.pairs import PassMode
from semgrad_guard.prompts import Prompt

__all__ = ["float64_norms", "precision_report"]

HALF_DTYPES: tuple[DTypeName, ...] = ("bfloat16", "float16")
FIELDS = ["semgrad", "hybridgrad", "param_grad", "exgrad", "mean_entropy", "nll", "max_token_nll"]


def rag_prompt(facts: int) -> str:
    """A retrieval-style prompt: many context sentences, then the question."""
    context = " ".join(f"Fact {i}: the river {i} flows north into lake {i % 7}." for i in range(facts))
    return f"Context: {context}\nQuestion: where does river 5 flow?"


PAIRS: list[tuple[Prompt, str]] = [
    ("What is the capital of France?", "Paris"),
    ("Who proposed the theory of evolution by natural selection?", "Charles Darwin"),
    ("Which gas do plants absorb from the air?", "Carbon dioxide, mostly through the stomata."),
    ("What is the chemical symbol for gold?", "Ag"),
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
            {"role": "user", "content": "Another one, that is used in balloons because it is light?"},
        ],
        "Helium",
    ),
    ("Is water wet?", "Yes"),
    (rag_prompt(60), "North, into lake 5."),
]


@contextmanager
def float64_norms() -> Iterator[None]:
    """Llama's, Mistral's and Qwen2's RMSNorm compute in float64 for float64 input; other dtypes unchanged.

    transformers rounds every norm's input to float32; in a float64 model that rounding flips where inputs
    differ in their last bits (another batch shape), moving scores by ~1e-7 instead of ~1e-15.
    """
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    from transformers.models.mistral.modeling_mistral import MistralRMSNorm
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

    def float64_aware(original: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def forward(self: Any, hidden: torch.Tensor) -> torch.Tensor:
            if hidden.dtype != torch.float64:
                return original(self, hidden)
            variance = hidden.pow(2).mean(-1, keepdim=True)
            normed: torch.Tensor = self.weight * (hidden * torch.rsqrt(variance + self.variance_epsilon))
            return normed

        return forward

    with ExitStack() as stack:
        for norm in (LlamaRMSNorm, MistralRMSNorm, Qwen2RMSNorm):
            original = norm.forward
            setattr(norm, "forward", float64_aware(original))  # noqa: B010 (a method, mypy refuses `=`)
            stack.callback(setattr, norm, "forward", original)
        yield


def runs(scorer: SemGradScorer, naive: SemGradScorer) -> dict[str, list[Score]]:
    """The same pairs scored one by one, as one batch, by the naive pass, and from four threads."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(lambda pair: scorer.score(*pair), PAIRS))
    return {
        "single": [scorer.score(p, a) for p, a in PAIRS],
        "batch": scorer.score_batch(PAIRS),
        "naive": naive.score_batch(PAIRS),
        "threads": threaded,
    }


def deviation(got: list[Score], want: list[Score], field: str) -> float:
    """Largest relative deviation of ``field`` over the pairs."""
    values = [(float(getattr(g, field)), float(getattr(w, field))) for g, w in zip(got, want, strict=True)]
    return max(abs(a - b) / max(abs(b), 1e-300) for a, b in values)


def table(rows: list[tuple[str, dict[str, float]]]) -> str:
    """A markdown table: one row per comparison, one column per score."""
    head = "| comparison | " + " | ".join(FIELDS) + " |\n|---|" + "---|" * len(FIELDS) + "\n"
    return head + "".join(
        f"| {name} | " + " | ".join(f"{values[f]:.1e}" for f in FIELDS) + " |\n" for name, values in rows
    )


def zero_share(scorer: SemGradScorer) -> float:
    """Share of exactly-zero entries in the hidden-state gradient vectors the pass returns."""
    from semgrad_guard.model_parts import num_layers
    from semgrad_guard.statistics import gradient_statistics

    pairs = [scorer._encode(p, a) for p, a in PAIRS]
    layers = scorer.profile.layer_indices(num_layers(scorer.model))
    stats = gradient_statistics(scorer.model, pairs, layers, num_layers(scorer.model))
    vectors = torch.cat([s.hidden_grad_vectors.flatten() for s in stats])
    return float((vectors == 0).double().mean())


def tied_ratio(scorer: SemGradScorer, prompt: str, answer: str) -> float:
    """Mean |dL/dW| through both uses of a tied weight, over the output path alone (float64 model)."""
    model: Any = scorer.model
    pair = scorer._encode(prompt, answer)
    ids = torch.tensor([pair.prompt_ids + pair.answer_ids])
    weight = model.get_output_embeddings().weight
    weight.requires_grad_(True)
    try:
        logits = model(ids).logits[0, len(pair.prompt_ids) - 1 : -1]
        log_probs = logits.log_softmax(-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1).detach()
        targets = torch.tensor(pair.answer_ids)
        loss = -(entropy * log_probs[torch.arange(len(targets)), targets]).mean()
        (both,) = torch.autograd.grad(loss, weight)
    finally:
        weight.requires_grad_(False)
    param_grad = scorer.score(prompt, answer).param_grad
    assert param_grad is not None
    return float(both.abs().mean()) / param_grad


def precision_report(model: str | None = None, emit: Callable[[str], None] = print) -> None:
    """Measure every table and ``emit`` each as markdown when it is done (minutes on a 2-core CPU)."""

    def scorer(dtype: DTypeName, mode: PassMode = "fast") -> SemGradScorer:
        # The naive pass keeps every layer's attention weights: a batch padded to the 1050-token prompt
        # would need ~19 GB in float64, so its passes are capped at 2048 padded tokens (the long one alone).
        batching = BatchingConfig(max_batch_tokens=2048 if mode == "naive" else 16384)
        return SemGradScorer(
            model,
            device="cpu",
            dtype=dtype,
            pass_mode=mode,
            batching=batching,
        ).load()

    with float64_norms():
        reference = runs(scorer("float64"), scorer("float64", "naive"))
        zeros = [("float64", zero_share(scorer("float64")))]
        tied = scorer("float64")
        ratios = [tied_ratio(tied, p, a) for p, a in PAIRS if isinstance(p, str)]
    truth = reference["single"]
    rows = [
        (f"float64 {mode} vs float64 single", deviation_row(reference[mode], truth)) for mode in reference
    ]
    float32 = runs(scorer("float32"), scorer("float32", "naive"))
    rows += [(f"float32 {mode} vs float64", deviation_row(float32[mode], truth)) for mode in float32]
    rows += [
        (f"float32 {mode} vs float32 single", deviation_row(float32[mode], float32["single"]))
        for mode in ("batch", "naive", "threads")
    ]
    emit("## Relative deviation (largest over pairs)\n\n" + table(rows))
    assert all(math.isfinite(r) for r in ratios)
    emit(
        "## Tied output weight: mean |dL/dW| through both paths over the output path alone (float64)\n\n"
        f"min {min(ratios):.2f}, median {sorted(ratios)[len(ratios) // 2]:.2f}, max {max(ratios):.2f} "
        f"over {len(ratios)} pairs\n"
    )
    zeros.append(("float32", zero_share(scorer("float32"))))
    half_rows = []
    for dtype in HALF_DTYPES:
        # One by one and batched: the naive pass and threads run the same code as in float32, and CPUs
        # emulate half-precision attention slowly (no fused kernel), so they are left to float32.
        half = SemGradScorer(model, device="cpu", dtype=dtype).load()
        single = [half.score(p, a) for p, a in PAIRS]
        half_rows.append((f"{dtype} single vs float32 single", deviation_row(single, float32["single"])))
        half_rows.append(
            (f"{dtype} batch vs float32 single", deviation_row(half.score_batch(PAIRS), float32["single"]))
        )
        zeros.append((dtype, zero_share(half)))
    emit("## Half precision (statistics in float32, float16 loss scaled)\n\n" + table(half_rows))
    emit(
        "## Hidden-state gradient entries that are exactly zero\n\n| dtype | share |\n|---|---|\n"
        + "\n".join(f"| {dtype} | {share:.2e} |" for dtype, share in zeros)
    )


def deviation_row(got: list[Score], want: list[Score]) -> dict[str, float]:
    """Largest relative deviation of every field."""
    return {field: deviation(got, want, field) for field in FIELDS}
