"""Tiny random causal LMs for tests: real architectures at toy width, built from a config in-process."""

from __future__ import annotations

from typing import Any

import torch

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2}


def tiny_lm(vocab_size: int, *, family: str = "llama", layers: int = 4, seed: int = 0, **config: Any) -> Any:
    """A seeded ``family`` ("llama" or "mistral") causal LM with ``layers`` decoder layers, in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    kinds = {"llama": (LlamaConfig, LlamaForCausalLM), "mistral": (MistralConfig, MistralForCausalLM)}
    config_type, model_type = kinds[family]
    torch.manual_seed(seed)
    settings = {**TINY, "vocab_size": vocab_size, "num_hidden_layers": layers, **config}
    return model_type(config_type(**settings)).eval()
