"""The parts of a transformers causal LM the pass touches, and how it touches them without changing them.

Finding the decoder layers, the one hook manager (:func:`recording`), eval mode and frozen parameters put back
exactly as they were, the model's key/value caches, and a float32 output projection for half-precision
weights. :mod:`semgrad_guard.statistics` (the pass) and :mod:`semgrad_guard.sps` use these.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from semgrad_guard.errors import SemGradError
from semgrad_guard.pairs import PrefixCache

__all__ = [
    "cache_argument",
    "decoder_layers",
    "eval_mode",
    "frozen_parameters",
    "length_dependent_rope",
    "num_layers",
    "output_cache",
    "prefix_from_cache",
    "recording",
    "wide_dtype",
]

# Weight elements upcast at a time when a half-precision output projection is recomputed wide.
_WIDE_HEAD_CHUNK = 1 << 22
# RoPE variants whose frequencies depend on the length of the sequence a forward sees: a prompt cache made
# at one length would not match a graph run at another, so these models take the naive pass.
_LENGTH_DEPENDENT_ROPE = frozenset({"dynamic", "longrope"})


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
def recording(
    layers: dict[int, torch.nn.Module],
    store: dict[Any, Any],
    *,
    head: torch.nn.Module | None = None,
    cut: int | None = None,
) -> Iterator[None]:
    """Record the modules' outputs in ``store`` (``head``'s input and output as ``"head"``); always unhook.

    The one hook manager of the package: the pass and SPS use it.

    Layer ``cut``'s output is replaced by a detached copy that requires grad, so the graph starts there; a
    half-precision ``head`` has its logits recomputed in float32. Only this thread's forward is recorded: a
    generator sharing the weights in another thread is left alone.
    """
    owner = threading.get_ident()

    def keep(key: Any) -> Callable[[torch.nn.Module, tuple[Any, ...], Any], Any]:
        def hook(module: torch.nn.Module, inputs: tuple[Any, ...], output: Any) -> Any:
            if threading.get_ident() != owner:
                return None
            if key == "head":
                if needs_wide_head(module, inputs[0]):
                    bias = getattr(module, "bias", None)
                    output = _WideHead.apply(inputs[0], module.weight, bias)  # type: ignore[no-untyped-call]
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

    handles = [] if head is None else [head.register_forward_hook(keep("head"))]
    try:
        handles += [module.register_forward_hook(keep(index)) for index, module in layers.items()]
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Dropout off for a pass; afterwards each submodule gets its own mode back, even on error."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


def needs_wide_head(head: torch.nn.Module, hidden: torch.Tensor) -> bool:
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


@contextmanager
def frozen_parameters(model: Any) -> Iterator[None]:
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


def length_dependent_rope(model: Any) -> bool:
    """Whether the model's RoPE scaling depends on the sequence length a forward sees."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    found: list[Any] = []
    for name in ("rope_parameters", "rope_scaling"):
        value = getattr(config, name, None)
        if isinstance(value, dict):
            found += [value, *(v for v in value.values() if isinstance(v, dict))]
    return any(str(params.get("rope_type", params.get("type"))) in _LENGTH_DEPENDENT_ROPE for params in found)


def cache_argument(model: Any) -> str:
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
