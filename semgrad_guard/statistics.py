"""The one expensive pass: a teacher-forced forward and one backward over a batch of (prompt, answer) pairs.

It fills a :class:`PassStatistics` per pair (token NLLs and entropies, the mean absolute gradient of the
entropy-weighted loss at the profile position for each scored layer, and the output-projection gradient);
every score in :mod:`semgrad_guard.estimators` is cheap arithmetic over these.

Two exact ways to run it give the same numbers (tests hold them to 1e-5):

- ``"fast"`` (default): hidden states before the gradient position p cannot depend on h_l[p] (causal
  attention), so the prompt up to p runs once without autograd and only its key/value cache is kept (or
  the cache a generation already made is reused). The graph is built over positions >= p only, starting at
  the lowest scored layer, and logits are computed only where the loss needs them.
- ``"naive"``: one forward with autograd over the whole sequence; the reference the fast path is tested on.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from semgrad_guard.errors import SemGradError

__all__ = [
    "EncodedPair",
    "PassMode",
    "PassStatistics",
    "PrefixCache",
    "decoder_layers",
    "gradient_statistics",
    "num_layers",
    "output_cache",
    "prefix_from_cache",
]

PassMode = Literal["fast", "naive"]
"""How the pass runs; both are exact (see the module docstring)."""

# Elements of one vocabulary chunk of the output-weight gradient: small enough to stay in cache (a 16x
# speed-up on CPU over 16M-element chunks), and each chunk's float32 sum is exact to ~1e-8 relative.
_OUTPUT_GRAD_CHUNK = 1 << 20


@dataclass(frozen=True)
class PrefixCache:
    """Key/value states of one prompt's first ``length`` tokens, one ``(key, value)`` per layer.

    Each tensor is ``(1, kv_heads, length, head_dim)``; made by a generation that already read the prompt.
    """

    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    length: int


@dataclass(frozen=True)
class EncodedPair:
    """Token ids of one pair, the absolute prompt position of the gradient, and any reusable prompt cache."""

    prompt_ids: list[int]
    answer_ids: list[int]
    position: int
    prefix: PrefixCache | None = None

    @property
    def start(self) -> int:
        """First position whose hidden states the loss differentiates: p, or the last prompt token."""
        return min(self.position, len(self.prompt_ids) - 1)

    @property
    def length(self) -> int:
        """Total tokens, prompt plus answer."""
        return len(self.prompt_ids) + len(self.answer_ids)


@dataclass(frozen=True)
class PassStatistics:
    """What one forward/backward pass yields for one pair; all on the CPU in float64."""

    token_nll: torch.Tensor  # (R,) -log p(y_t | x, y_<t)
    token_entropy: torch.Tensor  # (R,) entropy of the next-token distribution at each answer step, nats
    hidden_grad: torch.Tensor  # (n_layers,) mean |d loss / d h_l[p]| for each scored layer
    output_grad: float  # mean |d loss / d W_out| through the output projection only
    output_grad_ce: float  # the same under plain mean cross-entropy (the ExGrad baseline)
    hidden_grad_vectors: torch.Tensor  # (n_layers, hidden) d loss / d h_l[p] for each scored layer


def num_layers(model: Any) -> int:
    """Decoder layers of a causal LM (of its text model, for multimodal configs)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(config.num_hidden_layers)


def decoder_layers(model: Any, num_layers: int) -> torch.nn.ModuleList:
    """The model's stack of decoder layers: the module list as long as ``num_hidden_layers``."""
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == num_layers:
            return module
    raise SemGradError(f"cannot find the {num_layers} decoder layers of {type(model).__name__}")


@contextmanager
def _recording(
    head: torch.nn.Module,
    layers: dict[int, torch.nn.Module],
    store: dict[Any, Any],
    cut: int | None = None,
) -> Iterator[None]:
    """Record the output projection's input and output and the given layers' outputs; always unhook.

    Layer ``cut``'s output is replaced by a detached copy that requires grad, so the graph starts there.
    Only this thread's forward is recorded: a generator sharing the weights in another thread is left alone.
    """
    owner = threading.get_ident()

    def keep(key: Any) -> Callable[[torch.nn.Module, tuple[Any, ...], Any], Any]:
        def hook(module: torch.nn.Module, inputs: tuple[Any, ...], output: Any) -> Any:
            if threading.get_ident() != owner:
                return None
            if key == "head":
                store[key] = (inputs[0], output)
                return None
            hidden = output[0] if isinstance(output, tuple) else output
            if key == cut:
                hidden = hidden.detach().requires_grad_(True)
                output = (hidden, *output[1:]) if isinstance(output, tuple) else hidden
            store[key] = hidden
            return output if key == cut else None

        return hook

    handles = [head.register_forward_hook(keep("head"))]
    try:
        handles += [module.register_forward_hook(keep(index)) for index, module in layers.items()]
        yield
    finally:
        for handle in handles:
            handle.remove()


def _output_grad_mean(dlogits: torch.Tensor, hidden: torch.Tensor) -> float:
    """Mean |sum_t outer(dlogits_t, h_t)| over the (vocab x hidden) weight, computed in vocabulary chunks."""
    dlogits, hidden = dlogits.float(), hidden.float()
    vocab, width = dlogits.shape[1], hidden.shape[1]
    step = max(1, _OUTPUT_GRAD_CHUNK // width)
    total = sum(
        float((dlogits[:, start : start + step].T @ hidden).abs().sum()) for start in range(0, vocab, step)
    )
    return total / (vocab * width)


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
    full-attention :class:`~transformers.DynamicCache` (sliding-window or recurrent layers).
    """
    with torch.inference_mode(False), torch.enable_grad():
        if mode == "fast":
            prefixes = _prefixes(model, pairs)
            if prefixes is not None:
                return _fast(model, pairs, prefixes, layers, num_layers)
        return _naive(model, pairs, layers, num_layers)


def _cache_argument(model: Any) -> str:
    """The keyword this transformers version takes a cache under (``cache`` since 5.x)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_cache(output: Any) -> Any:
    """The key/value cache of a forward or ``generate`` output, under either transformers spelling."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def prefix_from_cache(cache: Any, length: int, row: int = 0) -> PrefixCache | None:
    """Row ``row``'s first ``length`` key/value states of a plain full-attention cache, else ``None``."""
    cache_layers = getattr(cache, "layers", None)
    if not isinstance(cache, DynamicCache) or not cache_layers:
        return None
    if any(type(layer) is not DynamicLayer or layer.keys is None for layer in cache_layers):
        return None
    return PrefixCache(
        layers=tuple(
            (layer.keys[row : row + 1, :, :length], layer.values[row : row + 1, :, :length])
            for layer in cache_layers
        ),
        length=length,
    )


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
    with _recording(model.get_output_embeddings(), recorded, store, cut=lowest if lowest > 0 else None):
        # The layers below the lowest scored one need no graph: their activations are never differentiated.
        out = model(
            inputs_embeds=inputs,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=torch.unique(torch.cat(steps)),
            **{_cache_argument(model): DynamicCache(cache_data)},
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
    with _recording(
        model.get_output_embeddings(), {layer: stack[layer - 1] for layer in layers if layer > 0}, store
    ):
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
    keep = torch.unique(torch.cat(steps))
    row_of = torch.full((width,), -1, dtype=torch.long, device=device)
    row_of[keep] = torch.arange(len(keep), device=device)
    # Each pair's steps are a contiguous range inside the sorted union, so its kept rows are a slice (whose
    # backward is a cheap copy, where indexing by a tensor would scatter into the logits).
    kept = [slice(int(row_of[step[0]]), int(row_of[step[0]]) + len(step)) for step in steps]
    losses, ce_losses, nlls, entropies = [], [], [], []
    for row, pair in enumerate(pairs):
        log_probs = torch.log_softmax(logits[row, kept[row]].float(), dim=-1)
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
    grads = torch.autograd.grad(torch.stack(losses).sum(), [*hidden_states, head_output])

    results = []
    for row, position in enumerate(positions):
        hidden_grad = torch.stack([g[row, position].abs().float().mean() for g in grads[:-1]])
        answer_hidden = head_input[row, kept[row]].detach()
        results.append(
            PassStatistics(
                token_nll=nlls[row].double().cpu(),
                token_entropy=entropies[row].double().cpu(),
                hidden_grad=hidden_grad.double().cpu(),
                output_grad=_output_grad_mean(grads[-1][row, kept[row]], answer_hidden),
                output_grad_ce=_output_grad_mean(ce_dlogits[row, kept[row]], answer_hidden),
                hidden_grad_vectors=torch.stack([g[row, position] for g in grads[:-1]]).double().cpu(),
            )
        )
    return results
