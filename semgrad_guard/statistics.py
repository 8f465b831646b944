"""The one expensive pass: a teacher-forced forward and one backward over a batch of (prompt, answer) pairs.

It fills a :class:`PassStatistics` per pair (token NLLs and entropies, the mean absolute gradient of the
entropy-weighted loss at the profile position for each scored layer, and the output-projection gradient);
every score in :mod:`semgrad_guard.estimators` is cheap arithmetic over these.

Two exact ways to run it give the same numbers (float64 tests hold them to 1e-9; float32 differs only by
summation order, see docs/method.md):

- ``"fast"`` (default): hidden states before the gradient position p cannot depend on h_l[p] (causal
  attention), so the prompt up to p runs once without autograd and only its key/value cache is kept (or
  the cache a generation already made is reused). The graph is built over positions >= p only, starting at
  the lowest scored layer, and logits are computed only where the loss needs them.
- ``"naive"``: one forward with autograd over the whole sequence; the reference the fast path is tested on.

Precision: the answer logits, the loss and every statistic are computed in at least float32 (float64 stays
float64), even when the model runs in bfloat16 or float16: the output projection is recomputed from its
hooked input in the wider dtype, and a float16 loss is scaled before the backward so that small hidden-state
gradients do not fall below float16's range, then unscaled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from semgrad_guard.model_parts import (
    cache_argument,
    decoder_layers,
    frozen_parameters,
    length_dependent_rope,
    output_cache,
    prefix_from_cache,
    recording,
    wide_dtype,
)
from semgrad_guard.pairs import EncodedPair, PassMode, PrefixCache

__all__ = ["PassStatistics", "gradient_statistics"]

# Elements of one vocabulary chunk of the output-weight gradient: small enough to stay in cache (a 16x
# speed-up on CPU over 16M-element chunks), and each chunk's float32 sum is exact to ~1e-8 relative.
_OUTPUT_GRAD_CHUNK = 1 << 20
# First loss scale for a float16 backward (powers of two scale exactly); divided by _SCALE_STEP on overflow.
_FLOAT16_LOSS_SCALE = 2.0**16
_SCALE_STEP = 2.0**8
_SCALE_TRIES = 3


@dataclass(frozen=True)
class PassStatistics:
    """What one forward/backward pass yields for one pair; all on the CPU in float64."""

    token_nll: torch.Tensor  # (R,) -log p(y_t | x, y_<t)
    token_entropy: torch.Tensor  # (R,) entropy of the next-token distribution at each answer step, nats
    hidden_grad: torch.Tensor  # (n_layers,) mean |d loss / d h_l[p]| for each scored layer
    output_grad: float  # mean |d loss / d W_out| through the output projection only
    output_grad_ce: float  # the same under plain mean cross-entropy (the ExGrad baseline)
    hidden_grad_vectors: torch.Tensor  # (n_layers, hidden) d loss / d h_l[p] for each scored layer


def _output_grad_mean(dlogits: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Mean |sum_t outer(dlogits_t, h_t)| over the (vocab x hidden) weight, as a 0-d tensor on the device.

    Computed in vocabulary chunks in at least float32; chunk sums stay on the device, so reading the result
    costs one synchronisation, not one per chunk.
    """
    wide = wide_dtype(torch.promote_types(dlogits.dtype, hidden.dtype))
    dlogits, hidden = dlogits.to(wide), hidden.to(wide)
    vocab, width = dlogits.shape[1], hidden.shape[1]
    step = max(1, _OUTPUT_GRAD_CHUNK // width)
    sums = torch.stack(
        [(dlogits[:, start : start + step].T @ hidden).abs().sum() for start in range(0, vocab, step)]
    )
    return sums.sum() / (vocab * width)


def gradient_statistics(
    model: Any,
    pairs: Sequence[EncodedPair],
    layers: Sequence[int],
    num_layers: int,
    mode: PassMode = "fast",
) -> list[PassStatistics]:
    """Run one forward and one backward over ``pairs``; return exact per-pair statistics.

    Each pair's loss depends only on its own hidden states, so summing the losses and differentiating once
    gives every pair its own gradient. Real tokens never attend to padding. Gradients are taken with respect
    to activations (``torch.autograd.grad``), so no ``.grad`` is left on the model's parameters, and the input
    embeddings are never a differentiated path, so the tied-embedding input path is excluded from the
    output-weight gradient as the method defines. Works inside a caller's ``inference_mode()`` or
    ``no_grad()``. ``mode="fast"`` falls back to ``"naive"`` for models whose cache is not a plain
    full-attention :class:`~transformers.DynamicCache` (sliding-window or recurrent layers) and for RoPE
    whose frequencies depend on the sequence length (dynamic NTK, longrope). Parameters that require grad
    are switched off for the pass and restored after it, so no graph is kept for weight gradients.
    """
    with torch.inference_mode(False), torch.enable_grad(), frozen_parameters(model):
        if mode == "fast" and not length_dependent_rope(model):
            prefixes = _prefixes(model, pairs)
            if prefixes is not None:
                return _fast(model, pairs, prefixes, layers, num_layers)
        return _naive(model, pairs, layers, num_layers)


def _prefixes(model: Any, pairs: Sequence[EncodedPair]) -> list[PrefixCache] | None:
    """Each pair's prompt cache up to its start: reused where given, else one left-padded no-grad pass."""
    todo = [pair for pair in pairs if pair.prefix is None or pair.prefix.length < pair.start]
    made: dict[int, PrefixCache] = {}
    if todo:
        device = model.get_input_embeddings().weight.device
        width = max(pair.start for pair in todo)
        if min(pair.start for pair in todo) == 0:
            return None  # a prompt too short to have anything before the gradient position
        ids = torch.zeros((len(todo), width), dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for row, pair in enumerate(todo):
            ids[row, width - pair.start :] = torch.tensor(pair.prompt_ids[: pair.start], device=device)
            mask[row, width - pair.start :] = 1
        with torch.no_grad():
            out = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                use_cache=True,
                logits_to_keep=1,
            )
        cache = output_cache(out)
        for row, pair in enumerate(todo):
            # Left padding: row's real tokens are the last pair.start positions of the cache.
            prefix = prefix_from_cache(cache, width, row)
            if prefix is None:
                return None
            pad = width - pair.start
            made[id(pair)] = PrefixCache(
                tuple((k[:, :, pad:], v[:, :, pad:]) for k, v in prefix.layers), pair.start
            )
    return [made.get(id(pair)) or pair.prefix for pair in pairs]  # type: ignore[misc]


def _fast(
    model: Any,
    pairs: Sequence[EncodedPair],
    prefixes: list[PrefixCache],
    layers: Sequence[int],
    num_layers: int,
) -> list[PassStatistics]:
    device = model.get_input_embeddings().weight.device
    starts = [pair.start for pair in pairs]
    width = max(starts)  # prompt cache, left-padded
    span = max(pair.length - start for pair, start in zip(pairs, starts, strict=True))  # graph, right-padded
    ids = torch.zeros((len(pairs), span), dtype=torch.long, device=device)
    mask = torch.zeros((len(pairs), width + span), dtype=torch.long, device=device)
    cache_data = []
    for index in range(len(prefixes[0].layers)):
        keys, values = [], []
        for prefix, start in zip(prefixes, starts, strict=True):
            key, value = prefix.layers[index]
            pad = (0, 0, width - start, 0)  # no copy where a row needs no padding
            keys.append(
                torch.nn.functional.pad(key[:, :, :start], pad) if width > start else key[:, :, :start]
            )
            values.append(
                torch.nn.functional.pad(value[:, :, :start], pad) if width > start else value[:, :, :start]
            )
        cache_data.append((torch.cat(keys), torch.cat(values)) if len(keys) > 1 else (keys[0], values[0]))
    for row, (pair, start) in enumerate(zip(pairs, starts, strict=True)):
        tokens = (pair.prompt_ids + pair.answer_ids)[start:]
        ids[row, : len(tokens)] = torch.tensor(tokens, device=device)
        mask[row, width - start : width + len(tokens)] = 1
    positions = torch.tensor(starts, device=device)[:, None] + torch.arange(span, device=device)
    # Graph position t predicts token start + t + 1: answer tokens come from P-1-start .. P+R-2-start.
    steps = [
        torch.arange(len(p.prompt_ids) - 1 - s, p.length - 1 - s, device=device)
        for p, s in zip(pairs, starts, strict=True)
    ]
    lowest = min(layers)
    with torch.no_grad():
        inputs = model.get_input_embeddings()(ids)
    if lowest == 0:
        inputs.requires_grad_(True)
    stack = decoder_layers(model, num_layers)
    store: dict[Any, Any] = {0: inputs}
    recorded = {layer: stack[layer - 1] for layer in layers if layer > 0}
    head = model.get_output_embeddings()
    with recording(recorded, store, head=head, cut=lowest if lowest > 0 else None):
        # The layers below the lowest scored one need no graph: their activations are never differentiated.
        out = model(
            inputs_embeds=inputs,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=torch.unique(torch.cat(steps)),
            **{cache_argument(model): DynamicCache(cache_data)},
        )
    rows = [pair.position - start for pair, start in zip(pairs, starts, strict=True)]
    return _statistics(out.logits, store, pairs, steps, rows, layers, span)


def _naive(
    model: Any, pairs: Sequence[EncodedPair], layers: Sequence[int], num_layers: int
) -> list[PassStatistics]:
    embed = model.get_input_embeddings()
    device = embed.weight.device
    width = max(pair.length for pair in pairs)
    ids = torch.zeros((len(pairs), width), dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for row, pair in enumerate(pairs):
        ids[row, : pair.length] = torch.tensor(pair.prompt_ids + pair.answer_ids, device=device)
        mask[row, : pair.length] = 1
    # Position t predicts token t + 1: answer tokens are predicted from P-1 .. P+R-2.
    steps = [torch.arange(len(p.prompt_ids) - 1, p.length - 1, device=device) for p in pairs]
    with torch.no_grad():
        inputs = embed(ids)
    inputs.requires_grad_(True)
    # Hidden state l (l >= 1) is the output of decoder layer l - 1; hidden state 0 is the input embedding.
    stack = decoder_layers(model, num_layers)
    store: dict[Any, Any] = {0: inputs}
    recorded = {layer: stack[layer - 1] for layer in layers if layer > 0}
    with recording(recorded, store, head=model.get_output_embeddings()):
        out = model(
            inputs_embeds=inputs,
            attention_mask=mask,
            use_cache=False,
            logits_to_keep=torch.unique(torch.cat(steps)),
        )
    return _statistics(out.logits, store, pairs, steps, [p.position for p in pairs], layers, width)


def _statistics(
    logits: torch.Tensor,
    store: dict[Any, Any],
    pairs: Sequence[EncodedPair],
    steps: list[torch.Tensor],
    positions: list[int],
    layers: Sequence[int],
    width: int,
) -> list[PassStatistics]:
    """Losses from the kept logits, one backward, and each pair's statistics at its graph position."""
    device = logits.device
    wide = wide_dtype(logits.dtype)
    keep = torch.unique(torch.cat(steps))
    row_of = torch.full((width,), -1, dtype=torch.long, device=device)
    row_of[keep] = torch.arange(len(keep), device=device)
    # Each pair's steps are a contiguous range inside the sorted union, so its kept rows are a slice (whose
    # backward is a cheap copy, where indexing by a tensor would scatter into the logits).
    kept = [slice(int(row_of[step[0]]), int(row_of[step[0]]) + len(step)) for step in steps]
    losses, ce_losses, nlls, entropies = [], [], [], []
    for row, pair in enumerate(pairs):
        log_probs = torch.log_softmax(logits[row, kept[row]].to(wide), dim=-1)
        targets = torch.tensor(pair.answer_ids, device=device)
        token_log_prob = log_probs.gather(1, targets[:, None]).squeeze(1)
        entropy = -(log_probs.exp() * log_probs).sum(-1).detach()
        losses.append(-(entropy * token_log_prob).sum() / len(pair.answer_ids))
        ce_losses.append(-token_log_prob.mean())
        nlls.append(-token_log_prob.detach())
        entropies.append(entropy)
    hidden_states = [store[layer] for layer in layers]
    head_input, head_output = store["head"]
    # The cross-entropy gradient at the logits only walks the short softmax graph; keep it for the main call.
    (ce_dlogits,) = torch.autograd.grad(torch.stack(ce_losses).sum(), [head_output], retain_graph=True)
    grads = _scaled_grad(torch.stack(losses).sum(), [*hidden_states, head_output])

    results = []
    for row, position in enumerate(positions):
        vectors = torch.stack([g[row, position] for g in grads[:-1]])
        answer_hidden = head_input[row, kept[row]].detach()
        output_grads = torch.stack(
            [
                _output_grad_mean(grads[-1][row, kept[row]], answer_hidden),
                _output_grad_mean(ce_dlogits[row, kept[row]], answer_hidden),
            ]
        ).cpu()
        results.append(
            PassStatistics(
                token_nll=nlls[row].cpu().double(),
                token_entropy=entropies[row].cpu().double(),
                hidden_grad=vectors.abs().mean(-1).cpu().double(),
                output_grad=float(output_grads[0]),
                output_grad_ce=float(output_grads[1]),
                hidden_grad_vectors=vectors.cpu().double(),
            )
        )
    return results


def _scaled_grad(loss: torch.Tensor, targets: list[torch.Tensor]) -> list[torch.Tensor]:
    """``d loss / d targets`` in at least float32; a float16 graph gets a scaled loss, unscaled after.

    Hidden-state gradients of a float16 model fall below float16's normal range (about half of them in a
    135M model) or to zero; a power-of-two scale lifts them and dividing by it afterwards is exact. On
    overflow the scale shrinks and the backward runs again (the graph is kept for that).
    """
    half = any(target.dtype == torch.float16 for target in targets)
    scale = _FLOAT16_LOSS_SCALE if half else 1.0
    for attempt in range(_SCALE_TRIES if half else 1):
        last = attempt == _SCALE_TRIES - 1 or not half
        grads = torch.autograd.grad(loss * scale if half else loss, targets, retain_graph=not last)
        wide = [grad.to(wide_dtype(grad.dtype)) / scale for grad in grads]
        if last or all(bool(torch.isfinite(grad).all()) for grad in grads):
            return wide
        scale /= _SCALE_STEP
    raise AssertionError("unreachable")  # pragma: no cover
