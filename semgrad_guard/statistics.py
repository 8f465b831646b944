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
# Weight elements upcast at a time when a half-precision output projection is recomputed wide.
_WIDE_HEAD_CHUNK = 1 << 22
# First loss scale for a float16 backward (powers of two scale exactly); divided by _SCALE_STEP on overflow.
_FLOAT16_LOSS_SCALE = 2.0**16
_SCALE_STEP = 2.0**8
_SCALE_TRIES = 3
# RoPE variants whose frequencies depend on the length of the sequence a forward sees: a prompt cache made
# at one length would not match a graph run at another, so these models take the naive pass.
_LENGTH_DEPENDENT_ROPE = frozenset({"dynamic", "longrope"})


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


def wide_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics are computed in: ``dtype`` promoted to at least float32, never demoted."""
    return torch.promote_types(dtype, torch.float32)


def decoder_layers(model: Any, num_layers: int) -> torch.nn.ModuleList:
    """The model's stack of decoder layers: ``get_decoder().layers``, else the module list that long."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    stack = getattr(decoder, "layers", None)
    if isinstance(stack, torch.nn.ModuleList) and len(stack) == num_layers:
        return stack
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
                if _needs_wide_head(head, inputs[0]):
                    bias = getattr(head, "bias", None)
                    output = _WideHead.apply(inputs[0], head.weight, bias)  # type: ignore[no-untyped-call]
                    store[key] = (inputs[0], output)
                    return output
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


def _needs_wide_head(head: torch.nn.Module, hidden: torch.Tensor) -> bool:
    """Whether the output projection runs below float32 (its logits are then recomputed wide)."""
    weight = getattr(head, "weight", None)
    return isinstance(weight, torch.Tensor) and wide_dtype(hidden.dtype) != hidden.dtype


class _WideHead(torch.autograd.Function):
    """``hidden @ weight.T + bias`` in float32 for half-precision weights, upcasting the weight in chunks.

    Rounding logits of size ~20 to bfloat16 moves a token's NLL by up to a nat; this keeps them exact to
    float32 while holding no float32 copy of the weight (the backward upcasts the same chunks again).
    """

    @staticmethod
    def forward(
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.hidden_dtype = hidden.dtype
        wide = hidden.to(wide_dtype(hidden.dtype))
        logits = torch.cat([wide @ rows.to(wide.dtype).T for _, rows in _row_chunks(weight)], dim=-1)
        return logits if bias is None else logits + bias.to(logits.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (weight,) = ctx.saved_tensors
        hidden_grad = torch.zeros((*grad.shape[:-1], weight.shape[1]), dtype=grad.dtype, device=grad.device)
        for start, rows in _row_chunks(weight):
            hidden_grad += grad[..., start : start + len(rows)] @ rows.to(grad.dtype)
        return hidden_grad.to(ctx.hidden_dtype), None, None


def _row_chunks(weight: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """Consecutive row blocks of ``weight`` of about ``_WIDE_HEAD_CHUNK`` elements, with their first row."""
    step = max(1, _WIDE_HEAD_CHUNK // weight.shape[1])
    for start in range(0, weight.shape[0], step):
        yield start, weight[start : start + step]


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
    with torch.inference_mode(False), torch.enable_grad(), _frozen_parameters(model):
        if mode == "fast" and not _length_dependent_rope(model):
            prefixes = _prefixes(model, pairs)
            if prefixes is not None:
                return _fast(model, pairs, prefixes, layers, num_layers)
        return _naive(model, pairs, layers, num_layers)


@contextmanager
def _frozen_parameters(model: Any) -> Iterator[None]:
    """Parameters that require grad stop requiring it for the pass and get it back afterwards, even on error.

    Activations then keep only what their own gradients need. A model the scorer loaded itself is frozen at
    load time, so this changes nothing there; a shared model is put back exactly as it was.
    """
    thawed = [parameter for parameter in model.parameters() if parameter.requires_grad]
    for parameter in thawed:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in thawed:
            parameter.requires_grad_(True)


def _length_dependent_rope(model: Any) -> bool:
    """Whether the model's RoPE scaling depends on the sequence length a forward sees."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    found: list[Any] = []
    for name in ("rope_parameters", "rope_scaling"):
        value = getattr(config, name, None)
        if isinstance(value, dict):
            found += [value, *(v for v in value.values() if isinstance(v, dict))]
    return any(str(params.get("rope_type", params.get("type"))) in _LENGTH_DEPENDENT_ROPE for params in found)


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
