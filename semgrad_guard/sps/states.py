"""The hidden states SPS reads: every prompt's states at offsets counted from its end, forward passes only."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

import torch
from tqdm.auto import tqdm

from semgrad_guard.evaluation.datasets import QAItem, load_qa, qa_prompt
from semgrad_guard.model_parts import decoder_layers, eval_mode, recording
from semgrad_guard.prompts import ChatFormat

__all__ = ["DEFAULT_DATA", "encode_items", "load_default_items", "tail_states"]

DEFAULT_DATA = "sps_default.jsonl"
"""The small set shipped in ``semgrad_guard/data``: SciQ and TruthfulQA dev questions with paraphrases."""


def load_default_items() -> list[QAItem]:
    """The shipped default set (works without the ``shared/data`` folder)."""
    with resources.as_file(resources.files("semgrad_guard") / "data" / DEFAULT_DATA) as path:
        return load_qa(path)


def encode_items(
    tokenizer: Any, items: Sequence[QAItem], max_paraphrases: int = 4
) -> tuple[list[list[int]], list[int]]:
    """Production prompts of every question and its paraphrases, and each prompt's source row.

    ``source[i]`` is the row of prompt i's original question (a question is its own source).
    """
    chat = ChatFormat(tokenizer)
    prompts: list[list[int]] = []
    source: list[int] = []
    for item in items:
        first = len(prompts)
        for text in [item.question, *item.paraphrases[:max_paraphrases]]:
            prompts.append(chat.encode_prompt(qa_prompt(text)))
            source.append(first)
    return prompts, source


def tail_states(
    model: Any, prompts: list[list[int]], offsets: list[int], num_layers: int, batch_size: int, progress: bool
) -> torch.Tensor:
    """Hidden states (prompts, offsets, layers, width) at ``length + offset`` of each right-padded prompt."""
    device = model.get_input_embeddings().weight.device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    result: torch.Tensor | None = None
    store: dict[int, torch.Tensor] = {}
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    stack = decoder_layers(model, num_layers)
    layers = {0: model.get_input_embeddings(), **{layer: stack[layer - 1] for layer in range(1, num_layers)}}
    with eval_mode(model), recording(layers, store), torch.inference_mode():
        for batch in tqdm(batches, desc="SPS forward passes", unit="batch", disable=not progress):
            lengths = torch.tensor([len(prompts[i]) for i in batch], device=device)
            ids = torch.zeros((len(batch), int(lengths.max())), dtype=torch.long, device=device)
            for row, index in enumerate(batch):
                ids[row, : lengths[row]] = torch.tensor(prompts[index], device=device)
            mask = (torch.arange(ids.shape[1], device=device)[None, :] < lengths[:, None]).long()
            model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)
            positions = lengths[:, None] + torch.tensor(offsets, device=device)[None, :]
            rows = torch.arange(len(batch), device=device)[:, None]
            states = torch.stack([store[layer][rows, positions] for layer in range(num_layers)], dim=2)
            if result is None:
                result = torch.empty((len(prompts), *states.shape[1:]), dtype=torch.float32)
            result[batch] = states.float().cpu()
    assert result is not None
    return result
