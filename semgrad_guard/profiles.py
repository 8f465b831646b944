"""Model profiles: where in the prompt, and at which layers, SemGrad takes its gradient.

A profile holds an offset counted back from the end of the prompt (``-4`` is the fourth token from the end)
and the hidden-state layers to average over (``None`` means the last half, ``L - L//2 .. L-1``, as in the
paper). ``anchor`` is the token the position is meant to land on; the scorer checks it on every prompt, so a
template that moves the position into the question is caught instead of silently scored. ``directions`` names
an optional file of paraphrase directions at that position and those layers (:mod:`semgrad_guard.directions`),
from which the scorer computes ``semgrad_para``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["BUILTIN_PROFILES", "ModelProfile", "resolve_profile", "template_rule_profile"]

logger = logging.getLogger(__name__)

ProfileSource = Literal["paper", "provisional", "template-rule", "sps", "user"]


class ModelProfile(BaseModel):
    """Where to take SemGrad's gradient for one model: a prompt offset and a set of layers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Family or model the profile was made for.")
    offset: int = Field(
        lt=0, description="Position counted back from the end of the prompt (-1 = last token)."
    )
    layers: tuple[int, ...] | None = Field(
        default=None, description="Hidden-state indices 0..L-1 (0 = embeddings); None = the last half."
    )
    anchor: str | None = Field(default=None, description="Token the position must land on, if any.")
    source: ProfileSource = "user"
    directions: str | None = Field(
        default=None,
        description="Paraphrase directions file (.safetensors) for semgrad_para: a path, or a name next to "
        "the profile JSON or among the built-in files. None: no semgrad_para.",
    )

    @field_validator("layers")
    @classmethod
    def _layers_sorted_unique(cls, layers: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if layers is None:
            return None
        if not layers or min(layers) < 0:
            raise ValueError("layers must be a non-empty set of non-negative hidden-state indices")
        return tuple(sorted(set(layers)))

    def layer_indices(self, num_layers: int) -> tuple[int, ...]:
        """The hidden-state indices this profile scores for a model with ``num_layers`` decoder layers."""
        if self.layers is None:
            return tuple(range(num_layers - num_layers // 2, num_layers))
        if max(self.layers) >= num_layers:
            raise ValueError(
                f"profile {self.name!r} asks for hidden state {max(self.layers)}; this model has "
                f"0..{num_layers - 1} (the final-norm state is not scored)"
            )
        return self.layers

    def resolved(self, num_layers: int) -> ModelProfile:
        """This profile with its layer set written out for a model with ``num_layers`` layers."""
        return self.model_copy(update={"layers": self.layer_indices(num_layers)})

    def save(self, path: str | Path) -> None:
        """Write the profile as JSON."""
        Path(path).write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> ModelProfile:
        """Read a profile written by :meth:`save`, or the one inside a saved SPS result (``profile`` key).

        A ``directions`` file named relative to the JSON's folder (as saving writes it) becomes absolute.
        """
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        profile = cls.model_validate(data.get("profile", data))
        if profile.directions is not None and not Path(profile.directions).is_absolute():
            beside = Path(path).resolve().parent / profile.directions
            if beside.is_file():
                profile = profile.model_copy(update={"directions": str(beside)})
        return profile


def _model_type(config: Any) -> str:
    return str(getattr(config, "model_type", "") or "")


# (profile, test on (model name, model type, chat template)), tried in order.
BUILTIN_PROFILES: tuple[tuple[ModelProfile, Callable[[str, str, str], bool]], ...] = (
    (
        ModelProfile(
            name="smollm2",
            offset=-4,
            anchor="<|im_start|>",
            source="provisional",
            directions="smollm2-135m-instruct.directions.safetensors",
        ),
        lambda name, mtype, template: "smollm2" in name.lower() and "<|im_start|>" in template,
    ),
    (
        ModelProfile(name="llama-3", offset=-4, anchor="<|start_header_id|>", source="paper"),
        lambda name, mtype, template: mtype == "llama" and "<|start_header_id|>" in template,
    ),
    (
        ModelProfile(name="qwen", offset=-3, anchor="<|im_start|>", source="paper"),
        lambda name, mtype, template: mtype.startswith(("qwen2", "qwen3")) and "<|im_start|>" in template,
    ),
    (
        ModelProfile(name="mistral", offset=-2, anchor=None, source="paper"),
        lambda name, mtype, template: mtype == "mistral",
    ),
)


def template_rule_profile(tokenizer: Any, name: str) -> ModelProfile:
    """The fallback rule: the first token of the assistant header that the generation prompt adds.

    That is the analogue of the paper's Llama-3 and Qwen choices. A template that adds no tokens for the
    generation prompt gets the last prompt token, without an anchor.
    """
    from semgrad_guard.prompts import generation_prompt_ids

    header = generation_prompt_ids(tokenizer)
    if not header:
        return ModelProfile(name=name, offset=-1, source="template-rule")
    anchor = tokenizer.convert_ids_to_tokens(header[0])
    return ModelProfile(name=name, offset=-len(header), anchor=anchor, source="template-rule")


def resolve_profile(model: Any, tokenizer: Any, name: str) -> ModelProfile:
    """The built-in profile that matches this model, else the template rule (with a warning)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    mtype = _model_type(model.config)
    for profile, matches in BUILTIN_PROFILES:
        if matches(name, mtype, template):
            return profile
    profile = template_rule_profile(tokenizer, name)
    logger.warning(
        "No built-in SemGrad profile for %s (model_type=%r); using the template rule: offset %d (%s). "
        "Pass profile= to choose another.",
        name,
        mtype,
        profile.offset,
        profile.anchor or "last prompt token",
    )
    return profile
