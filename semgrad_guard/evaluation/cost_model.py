"""What a SemGrad score costs at a model's full depth, from measurements at reduced depth and its shapes.

Two parts:

- **Time** grows linearly with depth at a fixed prompt and answer: ``t(L) = a + b * L``, where ``a`` is what
  does not depend on the decoder layers (embeddings, the output projection, the loss and the two
  output-weight gradient means over the vocabulary x hidden matrix) and ``b`` is one decoder layer's share
  (its no-grad prefix forward, its graph forward over the tail and, in the scored half, its backward). The
  default profile scores the last half of the layers, so the scored layers grow as ``L / 2`` and stay linear
  in ``L`` for even depths. :func:`fit_depths` fits ``a`` and ``b`` from two or more measured depths.
- **Memory** is written as a formula in the model's shapes. :func:`graph_bytes` is what autograd keeps for
  the backward, counted tensor by tensor (it matches the saved-tensor count of the pass exactly, see
  tests/test_shapes.py); :func:`kv_cache_bytes` is the prompt's key/value cache; the rest of the peak (logits
  and their gradients, one layer's transient activations) is measured as a residual and fitted the same way.

Shapes used below: ``H`` hidden size, ``I`` feed-forward width, ``A = heads * head_dim`` (the query width,
``H`` in every preset), ``K = kv_heads * head_dim`` (the key/value width), ``n`` heads, ``V`` vocabulary,
``s`` bytes per element of the model's dtype. RMSNorm computes in float32 whatever the dtype, so its saved
inputs are 4 bytes an element; logits and statistics are float32 (or wider) too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from semgrad_guard.evaluation.shapes import ShapePreset

__all__ = [
    "LAYER_WORKING_SET",
    "LOGIT_TENSORS",
    "NAIVE_WORKING_SET",
    "DepthFit",
    "fast_pass_flops",
    "fit_depths",
    "graph_bytes",
    "graph_layer_bytes",
    "kv_cache_bytes",
    "layer_matrices",
    "peak_bytes",
    "scored_layers",
    "weight_bytes",
]

Mode = Literal["fast", "naive"]


@dataclass(frozen=True)
class DepthFit:
    """``value(L) = a + b * L``, least squares over the measured depths, with its largest residual."""

    a: float
    b: float
    depths: tuple[int, ...]
    max_residual: float

    def __call__(self, layers: float) -> float:
        """The fitted value at ``layers`` decoder layers."""
        return self.a + self.b * layers


def fit_depths(depths: Sequence[int], values: Sequence[float]) -> DepthFit:
    """Least-squares line through ``(depth, value)``; needs two or more distinct depths."""
    if len(depths) != len(values) or len(set(depths)) < 2:
        raise ValueError("need values at two or more distinct depths")
    n = len(depths)
    mean_x, mean_y = sum(depths) / n, sum(values) / n
    sxx = sum((x - mean_x) ** 2 for x in depths)
    b = sum((x - mean_x) * (y - mean_y) for x, y in zip(depths, values, strict=True)) / sxx
    a = mean_y - b * mean_x
    residual = max(abs(y - (a + b * x)) for x, y in zip(depths, values, strict=True))
    return DepthFit(a=a, b=b, depths=tuple(depths), max_residual=residual)


def scored_layers(layers: int) -> int:
    """Decoder layers the fast pass differentiates under the default profile (the last half): ``L // 2``."""
    return layers // 2


def weight_bytes(shape: ShapePreset, layers: int | None = None, vocab: int | None = None, s: int = 4) -> int:
    """Bytes of the weights at ``layers`` depth (default: published), ``vocab``, ``s`` bytes an element."""
    return shape.parameters(layers, vocab) * s


def kv_cache_bytes(shape: ShapePreset, layers: int, tokens: int, batch: int = 1, s: int = 4) -> int:
    """One copy of the key/value cache: ``2 * K * s`` bytes per layer per cached token."""
    kv = shape.num_key_value_heads * shape.head_dim
    return 2 * kv * s * layers * tokens * batch


def graph_layer_bytes(shape: ShapePreset, mode: Mode, s: int = 4) -> tuple[int, int]:
    """What one differentiated decoder layer keeps: (bytes per graph position, bytes per attended position).

    Per graph position: the MLP's gate, up and activated gate (``3 I s``), the two RMSNorm inputs in float32
    and their scales (``2 * 4 H + 8``), the query and the attention output (``2 A s``) and the attention's
    log-sum-exp (``4 n``); the naive pass also keeps its keys and values (``2 K s``). Per attended position
    (fast pass only: its graph attends to the cached prompt through a mask, so SDPA gets keys and values
    expanded to every query head and keeps them): ``2 A s``, plus the mask's row of ``s`` per graph position
    (added by :func:`graph_bytes`).
    """
    width = shape.num_attention_heads * shape.head_dim
    kv = shape.num_key_value_heads * shape.head_dim
    per_position = 3 * shape.intermediate_size * s + 2 * 4 * shape.hidden_size + 8 + 2 * width * s
    per_position += 4 * shape.num_attention_heads
    if mode == "naive":
        return per_position + 2 * kv * s, 0
    return per_position, 2 * width * s


def graph_bytes(
    shape: ShapePreset,
    mode: Mode,
    *,
    layers: int,
    prompt: int,
    answer: int,
    batch: int = 1,
    vocab: int | None = None,
    s: int = 4,
) -> int:
    """Bytes of every tensor autograd keeps for the pass's backward (weights excluded), for ``batch`` pairs.

    Fast pass: the graph covers the tail, ``T = |offset| + answer`` positions, through the scored half of the
    layers, which attend to all ``prompt + answer`` positions. Naive pass: all ``prompt + answer`` positions
    through every layer (the input embeddings are a graph leaf). Both add the final norm and the rotary
    tables over the graph's positions and the two float32 ``answer x V`` tensors of the log-softmax (with
    the targets' indices, 12 bytes per answer token, and 8 per kept logit row for the whole batch).
    """
    per_position, per_attended = graph_layer_bytes(shape, mode, s)
    total = prompt + answer
    if mode == "fast":
        positions = -shape.profile_offset + answer
        graph_layers = scored_layers(layers)
        attended = total  # the cached prompt before the gradient position plus the graph's own positions
        per_layer = positions * per_position + attended * (per_attended + positions * s)
    else:
        positions, graph_layers = total, layers
        per_layer = positions * per_position
    common = positions * (4 * shape.hidden_size + 4) + 2 * positions * shape.head_dim * s
    logits = 2 * answer * (vocab or shape.vocab_size) * 4 + 12 * answer  # and the targets' indices
    return batch * (graph_layers * per_layer + common + logits) + 8 * answer  # the kept rows' indices


def layer_matrices(shape: ShapePreset) -> int:
    """Weight-matrix elements of one decoder layer (what its matmuls multiply by; no norms or biases)."""
    query = shape.num_attention_heads * shape.head_dim
    kv = shape.num_key_value_heads * shape.head_dim
    return 2 * shape.hidden_size * (query + kv) + 3 * shape.hidden_size * shape.intermediate_size


# Float32 answer x V tensors alive at the peak besides the two the graph keeps (the kept logits, the
# entropy's terms, the logit gradients of both losses). In the committed CPU runs
# (benchmarks/results/shapes/, report.md) the fast pass's peak leaves room for 4.2-6.5 of them where the
# logits dominate (answers of 128 tokens, batches of 4); the top of that range is taken, so the model errs
# high. One setting's measured peak moves by up to about 50 MiB between runs (the depth 2 and 8 memory runs
# of qwen2.5-1.5b and qwen2.5-1.5b-memory measure the same settings), so no closer fit is meaningful.
LOGIT_TENSORS = 6.5
# One decoder layer's working set without a graph, in elements of (I + H) per token: what the prompt phase
# of the fast pass (and a plain forward) holds besides the cache (the MLP's gate, up and product, the
# residual stream, matmul scratch). The plain forward's peaks in the same runs put it at 3.4-6.6.
LAYER_WORKING_SET = 5
# The naive pass's backward working set beyond what autograd keeps, in elements of I per position: with
# LOGIT_TENSORS it over-counts (the naive pass's memory runs are modelled 3% low to 44% high).
NAIVE_WORKING_SET = 4


def peak_bytes(
    shape: ShapePreset,
    mode: Mode,
    *,
    layers: int,
    prompt: int,
    answer: int,
    batch: int = 1,
    vocab: int | None = None,
    s: int = 4,
) -> int:
    """Modelled peak memory a pass adds on top of the weights, in bytes.

    Fast pass: the larger of its two phases. The graph phase holds the prompt's key/value cache twice (the
    prefix copy and the cache the graph forward extends), what autograd keeps (:func:`graph_bytes`) and
    :data:`LOGIT_TENSORS` further float32 ``answer x V`` tensors. The prompt phase holds one cache and one
    layer's no-grad working set over the prompt (:data:`LAYER_WORKING_SET`). Naive pass: what autograd
    keeps, the logit tensors and its backward's working set (:data:`NAIVE_WORKING_SET`).
    """
    v = vocab or shape.vocab_size
    logits = batch * LOGIT_TENSORS * answer * v * 4
    kept = graph_bytes(shape, mode, layers=layers, prompt=prompt, answer=answer, batch=batch, vocab=v, s=s)
    if mode == "naive":
        working = batch * (prompt + answer) * NAIVE_WORKING_SET * shape.intermediate_size * s
        return int(kept + logits + working)
    cache = kv_cache_bytes(shape, layers, prompt, batch, s)
    working = batch * prompt * LAYER_WORKING_SET * (shape.intermediate_size + shape.hidden_size) * s
    return int(max(2 * cache + kept + logits, cache + working))


def fast_pass_flops(
    shape: ShapePreset, *, layers: int, prompt: int, answer: int, vocab: int | None = None
) -> float:
    """Matmul FLOPs of one fast pass (as ``speed._Shapes.fast_pass``, from the preset instead of a model)."""
    width = shape.num_attention_heads * shape.head_dim
    vocab = vocab or shape.vocab_size
    weights = layer_matrices(shape)
    start = prompt + shape.profile_offset
    tail = prompt + answer - start
    upper = scored_layers(layers)

    def attention(tokens: int, before: int, depth: float) -> float:
        return depth * 4 * width * tokens * (before + (tokens + 1) / 2)

    def forward(tokens: int, before: int, depth: float) -> float:
        return depth * 2 * weights * tokens + attention(tokens, before, depth)

    head = 2 * vocab * shape.hidden_size * answer
    return (
        forward(start, 0, layers)
        + forward(tail, start, layers)
        + forward(tail, start, upper)
        + attention(tail, start, upper)
        + 4 * head
    )


def mib(value: float) -> float:
    """Bytes to MiB."""
    return value / 2**20


def relative_error(predicted: float, measured: float) -> float:
    """``predicted / measured - 1``; NaN when nothing was measured."""
    return predicted / measured - 1 if measured else math.nan
