"""Random-weight models with the published shapes of deployed models: what a score costs, not what it says.

A :class:`ShapePreset` holds the architecture numbers of one published ``config.json`` (width, heads,
key/value heads, feed-forward width, vocabulary, RoPE, tied head or not, context length).
:func:`random_model` builds a transformers model with exactly those numbers and random weights, optionally
with fewer decoder layers, so the cost of the SemGrad pass at 7-8B width can be measured on a machine that
could not hold (or download) the real weights. Scores of random weights mean nothing; their cost is the
point.

The scorer needs a tokenizer: the embedded SmolLM2 tokenizer is reused, and the built vocabulary is
``max(preset vocabulary, len(tokenizer))`` so every token id it makes is valid (only Mistral's 32768-token
vocabulary grows, to 49152). The preset's own numbers are never changed by a build: a depth or vocabulary
override applies to the built config only.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from semgrad_guard.profiles import ModelProfile
from semgrad_guard.scorer import SemGradScorer

__all__ = ["PRESETS", "ShapePreset", "random_model", "random_scorer", "shallower", "shape_config"]

ModelType = Literal["llama", "qwen2", "mistral"]


class ShapePreset(BaseModel):
    """The architecture of one published model, as its ``config.json`` gives it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    source: str = Field(description="The Hugging Face repository whose config.json these numbers are.")
    model_type: ModelType
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    rope_theta: float
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int
    tie_word_embeddings: bool
    rms_norm_eps: float
    profile_offset: int = Field(
        lt=0, description="The family's built-in SemGrad position (profiles.py): sets the graph's length."
    )

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    def layer_parameters(self) -> int:
        """Parameters of one decoder layer (projections, Qwen2's q/k/v biases, the two norms)."""
        kv = self.num_key_value_heads * self.head_dim
        attention = 2 * self.hidden_size * self.hidden_size + 2 * self.hidden_size * kv
        if self.model_type == "qwen2":
            attention += self.hidden_size + 2 * kv
        return attention + 3 * self.hidden_size * self.intermediate_size + 2 * self.hidden_size

    def parameters(self, layers: int | None = None, vocab_size: int | None = None) -> int:
        """Parameters of the model at ``layers`` depth (default: published) and vocabulary."""
        vocab = vocab_size or self.vocab_size
        embeddings = vocab * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        depth = self.num_hidden_layers if layers is None else layers
        return embeddings + depth * self.layer_parameters() + self.hidden_size


_LLAMA3_ROPE = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3",
}

PRESETS: dict[str, ShapePreset] = {
    preset.name: preset
    for preset in (
        ShapePreset(
            name="qwen2.5-7b",
            source="Qwen/Qwen2.5-7B-Instruct",
            model_type="qwen2",
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            vocab_size=152064,
            rope_theta=1_000_000.0,
            max_position_embeddings=32768,
            tie_word_embeddings=False,
            rms_norm_eps=1e-6,
            profile_offset=-3,
        ),
        ShapePreset(
            name="llama-3.1-8b",
            source="meta-llama/Llama-3.1-8B-Instruct",
            model_type="llama",
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            rope_theta=500_000.0,
            rope_scaling=_LLAMA3_ROPE,
            max_position_embeddings=131072,
            tie_word_embeddings=False,
            rms_norm_eps=1e-5,
            profile_offset=-4,
        ),
        ShapePreset(
            name="mistral-7b",
            source="mistralai/Mistral-7B-Instruct-v0.3",
            model_type="mistral",
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=32768,
            rope_theta=1_000_000.0,
            max_position_embeddings=32768,
            tie_word_embeddings=False,
            rms_norm_eps=1e-5,
            profile_offset=-2,
        ),
        ShapePreset(
            name="qwen2.5-1.5b",
            source="Qwen/Qwen2.5-1.5B-Instruct",
            model_type="qwen2",
            hidden_size=1536,
            intermediate_size=8960,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            vocab_size=151936,
            rope_theta=1_000_000.0,
            max_position_embeddings=32768,
            tie_word_embeddings=True,
            rms_norm_eps=1e-6,
            profile_offset=-3,
        ),
        ShapePreset(
            name="smollm2-135m",
            source="HuggingFaceTB/SmolLM2-135M-Instruct",
            model_type="llama",
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            vocab_size=49152,
            rope_theta=100_000.0,
            max_position_embeddings=8192,
            tie_word_embeddings=True,
            rms_norm_eps=1e-5,
            profile_offset=-4,
        ),
    )
}


def preset(name: str | ShapePreset) -> ShapePreset:
    """A preset by name (or the preset itself)."""
    if isinstance(name, ShapePreset):
        return name
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown shape {name!r}; presets: {', '.join(PRESETS)}") from None


def shape_config(
    shape: str | ShapePreset, *, layers: int | None = None, vocab_size: int | None = None
) -> Any:
    """The transformers config of ``shape``, with ``layers`` decoder layers and ``vocab_size`` if given."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    spec = preset(shape)
    kind = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[spec.model_type]
    settings: dict[str, Any] = {
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_hidden_layers if layers is None else layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "vocab_size": vocab_size or spec.vocab_size,
        "max_position_embeddings": spec.max_position_embeddings,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_theta": spec.rope_theta,
        "hidden_act": "silu",
    }
    if spec.rope_scaling is not None:
        settings["rope_scaling"] = dict(spec.rope_scaling)
    if spec.model_type == "mistral":
        settings["sliding_window"] = None  # v0.3 (like v0.2) attends over the whole context
    if spec.model_type == "qwen2":
        settings["use_sliding_window"] = False
    if spec.model_type == "llama":
        settings["attention_bias"] = False
        settings["mlp_bias"] = False
    config = kind(**settings)
    config._name_or_path = f"random:{spec.name}"
    return config


def random_model(
    shape: str | ShapePreset,
    *,
    layers: int | None = None,
    vocab_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> Any:
    """A causal LM with ``shape``'s architecture and random weights (N(0, 0.02), norms 1), eval mode, frozen.

    Weights are drawn in place in ``dtype`` on ``device`` (transformers' own initialisation is skipped: it
    is slow at 7B width and the distribution does not matter for cost). ``device="meta"`` builds the model
    without any weight memory: its shapes and parameter count, instantly.
    """
    from transformers import AutoModelForCausalLM

    config = shape_config(shape, layers=layers, vocab_size=vocab_size)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)  # type: ignore[no-untyped-call]
    if torch.device(device).type == "meta":
        return model.eval().requires_grad_(False)
    model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".bias"):
                parameter.zero_()
            elif parameter.dim() == 1:  # RMSNorm scales
                parameter.fill_(1.0)
            else:
                parameter.normal_(0.0, 0.02, generator=generator)
        model.tie_weights()
        # Buffers (RoPE's inverse frequencies) are computed at construction, which the meta device skipped:
        # a module built for real from the same config supplies them.
        owners = {name.rpartition(".")[0] for name, _ in model.named_buffers()}
        for owner in owners:
            module = model.get_submodule(owner)
            fresh = type(module)(module.config)
            for name, buffer in fresh.named_buffers(recurse=False):
                getattr(module, name).copy_(buffer)
    model.eval()
    model.requires_grad_(False)
    return model


@functools.cache
def embedded_tokenizer() -> Any:
    """The embedded SmolLM2 tokenizer (and chat template), loaded once."""
    return SemGradScorer(device="cpu").tokenizer


def shape_profile(shape: str | ShapePreset) -> ModelProfile:
    """The family's gradient position (no anchor: the tokenizer is SmolLM2's), the last half of the layers."""
    spec = preset(shape)
    return ModelProfile(name=f"{spec.name}-shape", offset=spec.profile_offset, source="user")


def random_scorer(
    shape: str | ShapePreset,
    *,
    layers: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    tokenizer: Any = None,
    **scorer_kwargs: Any,
) -> SemGradScorer:
    """A loaded :class:`SemGradScorer` over :func:`random_model` and the embedded tokenizer."""
    spec = preset(shape)
    tokenizer = tokenizer if tokenizer is not None else embedded_tokenizer()
    vocab = max(spec.vocab_size, len(tokenizer))
    model = random_model(spec, layers=layers, vocab_size=vocab, dtype=dtype, device=device, seed=seed)
    return SemGradScorer(
        (model, tokenizer), name=f"random:{spec.name}", profile=shape_profile(spec), **scorer_kwargs
    ).load()


def shallower(model: Any, layers: int) -> Any:
    """A view of ``model`` that runs only its first ``layers`` decoder layers, sharing every weight.

    Several depths of one shape can then be measured side by side (interleaved, so that a busy machine's
    changing speed hits them alike) without holding several copies of the embeddings and head.
    """
    inner = model.get_decoder()
    stack = inner.layers
    if not 1 <= layers <= len(stack):
        raise ValueError(f"layers must be 1..{len(stack)}, got {layers}")
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = list(config.layer_types)[:layers]
    view_inner = copy.copy(inner)
    view_inner._modules = dict(inner._modules)
    view_inner.layers = torch.nn.ModuleList(list(stack)[:layers])
    view_inner.config = config
    view = copy.copy(model)
    view._modules = dict(model._modules)
    name = next(key for key, module in model._modules.items() if module is inner)
    view._modules[name] = view_inner
    view.config = config
    return view
