"""The one expensive pass: a teacher-forced forward and one backward over a batch of (prompt, answer) pairs.

It fills a :class:`PassStatistics` per pair (token NLLs and entropies, the mean absolute gradient of the
entropy-weighted loss at the profile position for each scored layer, and the output-projection gradient);
every score in :mod:`semgrad_guard.estimators` is cheap arithmetic over these.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from semgrad_guard.errors import SemGradError

__all__ = ["EncodedPair", "PassStatistics", "decoder_layers", "gradient_statistics", "num_layers"]

# Elements of one vocabulary chunk of the output-weight gradient (bounds the memory of that term).
_OUTPUT_GRAD_CHUNK = 1 << 24


@dataclass(frozen=True)
class EncodedPair:
    """Token ids of one pair and the absolute prompt position where the gradient is taken."""

    prompt_ids: list[int]
    answer_ids: list[int]
    position: int

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
    head: torch.nn.Module, layers: dict[int, torch.nn.Module], store: dict[Any, Any]
) -> Iterator[None]:
    """Record the output projection's input and output and the given layers' outputs; always unhook.

    Only this thread's forward is recorded: a generator sharing the weights in another thread is left alone.
    """
    owner = threading.get_ident()

    def keep(key: Any) -> Callable[[torch.nn.Module, tuple[Any, ...], Any], None]:
        def hook(module: torch.nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if threading.get_ident() == owner:
                store[key] = (inputs[0], output) if key == "head" else output

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
        (dlogits[:, start : start + step].T @ hidden).abs().sum(dtype=torch.float64).item()
        for start in range(0, vocab, step)
    )
    return total / (vocab * width)


def gradient_statistics(
    model: Any, pairs: Sequence[EncodedPair], layers: Sequence[int], num_layers: int
) -> list[PassStatistics]:
    """Run one padded forward and one backward over ``pairs``; return exact per-pair statistics.

    Each pair's loss depends only on its own hidden states, so summing the losses and differentiating once
    gives every pair its own gradient. Sequences are right-padded: real tokens never attend to padding.
    Gradients are taken with respect to activations (``torch.autograd.grad``), so no ``.grad`` is left on
    the model's parameters, and the input embeddings are a detached leaf, so the tied-embedding input path
    is excluded from the output-weight gradient as the method defines. Works inside a caller's
    ``torch.inference_mode()`` or ``no_grad()``.
    """
    with torch.inference_mode(False), torch.enable_grad():
        return _gradient_statistics(model, pairs, layers, num_layers)


def _gradient_statistics(
    model: Any, pairs: Sequence[EncodedPair], layers: Sequence[int], num_layers: int
) -> list[PassStatistics]:
    embed = model.get_input_embeddings()
    device = embed.weight.device
    width = max(pair.length for pair in pairs)
    ids = torch.zeros((len(pairs), width), dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for row, pair in enumerate(pairs):
        tokens = torch.tensor(pair.prompt_ids + pair.answer_ids, device=device)
        ids[row, : pair.length] = tokens
        mask[row, : pair.length] = 1
    # Position t predicts token t + 1: answer tokens are predicted from P-1 .. P+R-2.
    steps = [torch.arange(len(p.prompt_ids) - 1, p.length - 1, device=device) for p in pairs]
    keep = torch.unique(torch.cat(steps))
    row_of = torch.full((width,), -1, dtype=torch.long, device=device)
    row_of[keep] = torch.arange(len(keep), device=device)

    with torch.no_grad():
        inputs = embed(ids)
    inputs = inputs.detach().requires_grad_(True)
    # Hidden state l (l >= 1) is the output of decoder layer l - 1; hidden state 0 is the input embedding.
    stack = decoder_layers(model, num_layers)
    store: dict[Any, Any] = {0: inputs}
    with _recording(
        model.get_output_embeddings(), {layer: stack[layer - 1] for layer in layers if layer > 0}, store
    ):
        out = model(inputs_embeds=inputs, attention_mask=mask, use_cache=False, logits_to_keep=keep)
    losses, ce_losses, nlls, entropies = [], [], [], []
    for row, (pair, step) in enumerate(zip(pairs, steps, strict=True)):
        log_probs = torch.log_softmax(out.logits[row, row_of[step]].float(), dim=-1)
        targets = torch.tensor(pair.answer_ids, device=device)
        token_log_prob = log_probs.gather(1, targets[:, None]).squeeze(1)
        entropy = -(log_probs.exp() * log_probs).sum(-1).detach()
        losses.append(-(entropy * token_log_prob).sum() / len(pair.answer_ids))
        ce_losses.append(-token_log_prob.mean())
        nlls.append(-token_log_prob.detach())
        entropies.append(entropy)
    hidden_states = [store[layer][0] if isinstance(store[layer], tuple) else store[layer] for layer in layers]
    head_input, head_output = store["head"]
    # The cross-entropy gradient at the logits only walks the short softmax graph; keep it for the main call.
    (ce_dlogits,) = torch.autograd.grad(torch.stack(ce_losses).sum(), [head_output], retain_graph=True)
    grads = torch.autograd.grad(torch.stack(losses).sum(), [*hidden_states, head_output])

    results = []
    for row, (pair, step) in enumerate(zip(pairs, steps, strict=True)):
        hidden_grad = torch.stack([g[row, pair.position].abs().float().mean() for g in grads[:-1]])
        answer_hidden = head_input[row, row_of[step]]
        output_grad = _output_grad_mean(grads[-1][row, row_of[step]], answer_hidden)
        output_grad_ce = _output_grad_mean(ce_dlogits[row, row_of[step]], answer_hidden)
        results.append(
            PassStatistics(
                token_nll=nlls[row].double().cpu(),
                token_entropy=entropies[row].double().cpu(),
                hidden_grad=hidden_grad.double().cpu(),
                output_grad=output_grad,
                output_grad_ce=output_grad_ce,
            )
        )
    return results
