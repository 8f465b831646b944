"""The Semantic Preservation Score (SPS): which prompt position and layers keep a question's meaning.

SemGrad takes its gradient at one prompt position (counted back from the end of the prompt) averaged over a
band of layers. The paper chose that place per model family with SPS; this module computes SPS for any
causal LM from questions and their paraphrases, with forward passes only:

1. Every question and each of its paraphrases goes through the paper's QA prompt and the chat template.
2. At each candidate offset (the template tail after the question and the last few question tokens, all
   counted from the end, so they line up across prompts of any length) and each hidden-state layer, the
   hidden vectors of all prompts are mean-centred and compared by cosine similarity.
3. ``SPS = mean over paraphrases of [cos(paraphrase, its own question) - mean cos(paraphrase, other
   questions)]``. Centring removes the direction every prompt shares (the anisotropy that makes all deep
   states look alike), and the contrast with other questions means a state that is merely similar for
   every prompt scores 0, not 1. Paraphrase-to-question retrieval accuracy is kept beside it.
4. A layer band's SPS is the mean over its layers; the (offset, band) with the highest SPS is the profile.
5. The same hidden states give the paraphrase directions at the chosen place
   (:mod:`semgrad_guard.sps.directions`), saved next to the profile for ``semgrad_para``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from semgrad_guard.directions import (
    DEFAULT_DIRECTIONS,
    ParaphraseDirections,
    directions_file,
    resolve_directions,
)
from semgrad_guard.evaluation.datasets import QAItem
from semgrad_guard.model_parts import num_layers
from semgrad_guard.profiles import ModelProfile
from semgrad_guard.prompts import ChatFormat, Prompt
from semgrad_guard.sps.directions import directions_from_states
from semgrad_guard.sps.states import DEFAULT_DATA, encode_items, load_default_items, tail_states

__all__ = [
    "PROBE_PROMPTS",
    "SPSResult",
    "compute_sps",
    "layer_bands",
    "preservation_scores",
    "sps_table",
    "template_tail_length",
]

logger = logging.getLogger(__name__)

_SENTINEL = "SEMGRAD SPS PROBE"

PROBE_PROMPTS: dict[str, Prompt] = {
    "plain": "Q?",
    "system message": [
        {"role": "system", "content": "You are a careful assistant."},
        {"role": "user", "content": "Q?"},
    ],
    "RAG context in the user turn": "Context:\nDoc 1: Paris is in France.\nDoc 2: Rome is in Italy.\n\nQ?",
    "multi-turn history": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Q?"},
    ],
}
"""Prompt shapes a profile must survive; the chosen offset must land on the same token in each."""


class SPSResult(BaseModel):
    """SPS of every candidate (offset, layer), the chosen profile, and the evidence that chose it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    profile: ModelProfile = Field(description="The chosen offset and layer band, source='sps'.")
    model: str
    data: str = Field(description="Where the questions came from.")
    n_questions: int
    n_prompts: int = Field(description="Questions plus paraphrases run through the model.")
    num_layers: int = Field(description="Scored hidden states 0..num_layers-1 (0 = input embeddings).")
    offsets: list[int]
    tokens: list[str] = Field(description="Token at each offset in the first prompt.")
    template: list[bool] = Field(description="Whether the offset is a template token (same in all prompts).")
    sps: list[list[float]] = Field(description="[offset][layer] within- minus between-question similarity.")
    retrieval: list[list[float]] = Field(description="[offset][layer] paraphrase->question top-1 accuracy.")
    bands: list[tuple[int, int]] = Field(description="Candidate layer bands, (first, last) inclusive.")
    band_sps: list[list[float]] = Field(description="[offset][band] mean SPS over the band's layers.")
    probes: dict[str, str] = Field(description="Token at the chosen offset for each prompt shape.")
    warnings: list[str] = Field(default_factory=list)
    seconds: float
    _directions: ParaphraseDirections | None = PrivateAttr(default=None)

    @property
    def directions(self) -> ParaphraseDirections | None:
        """The paraphrase directions at the chosen profile (computed, or read from the file it names)."""
        if self._directions is None and self.profile.directions is not None:
            self._directions = ParaphraseDirections.load(resolve_directions(self.profile.directions))
        return self._directions

    def save(self, path: str | Path, *, directions_path: str | Path | None = None) -> None:
        """Write the result as JSON; ``ModelProfile.load`` and ``SemGradScorer(profile=path)`` read it.

        Paraphrase directions computed with it go to ``directions_path`` (default: beside the JSON,
        ``<name>.directions.safetensors``), and the saved profile names that file.
        """
        path = Path(path)
        result = self
        if self._directions is not None:
            target = Path(directions_path) if directions_path else directions_file(path)
            self._directions.save(target)
            beside = target.resolve().parent == path.resolve().parent
            reference = target.name if beside else str(target.resolve())
            result = self.model_copy(
                update={"profile": self.profile.model_copy(update={"directions": reference})}
            )
        path.write_text(result.model_dump_json(indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> SPSResult:
        """Read a result written by :meth:`save` (its profile as :meth:`ModelProfile.load` reads it)."""
        result = cls.model_validate_json(Path(path).read_text(encoding="utf-8"))
        return result.model_copy(update={"profile": ModelProfile.load(path)})


def layer_bands(num_layers: int, width: int | None = None) -> list[tuple[int, int]]:
    """Half-overlapping windows of ``width`` layers (default: half the stack, as the paper averages).

    The last window always ends at the deepest scored state, so the paper's "last half" is a candidate.
    """
    width = max(1, min(num_layers, width or num_layers // 2))
    stride = max(1, width // 2)
    starts = list(range(0, num_layers - width + 1, stride))
    if starts[-1] != num_layers - width:
        starts.append(num_layers - width)
    return [(start, start + width - 1) for start in starts]


def template_tail_length(tokenizer: Any) -> int:
    """Tokens the chat template puts after the user's text (end of turn plus the assistant header)."""
    chat = ChatFormat(tokenizer)
    ids = chat.encode_prompt(_SENTINEL)
    marker = chat.encode_prompt(_SENTINEL + " X")
    common = 0
    while common < min(len(ids), len(marker)) and ids[-1 - common] == marker[-1 - common]:
        common += 1
    return common


def preservation_scores(vectors: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SPS and retrieval accuracy for hidden vectors of shape (prompts, ..., width).

    ``source[i]`` is the row of prompt i's original question (a question is its own source). Vectors are
    centred over prompts and compared by cosine; SPS is the mean over paraphrases of the similarity to their
    own question minus the mean similarity to the other questions. Returns two tensors of shape ``...``.
    """
    x = vectors.double()
    x = x - x.mean(0, keepdim=True)
    norms = x.norm(dim=-1, keepdim=True)
    # A state that is the same for every prompt (a template token's embedding) centres to rounding noise.
    scale = vectors.double().norm(dim=-1, keepdim=True).mean(0, keepdim=True)
    x = torch.where(norms > 1e-6 * scale, x / norms.clamp_min(1e-300), torch.zeros_like(x))
    questions = torch.unique(source)
    paraphrase = torch.nonzero(source != torch.arange(len(source))).squeeze(1)
    sims = torch.einsum("p...d,q...d->pq...", x[paraphrase], x[questions])  # (paraphrases, questions, ...)
    own = (source[paraphrase][:, None] == questions[None, :]).double()
    own = own.reshape(*own.shape, *([1] * (sims.dim() - 2)))
    within = (sims * own).sum(1)
    between = (sims * (1 - own)).sum(1) / max(len(questions) - 1, 1)
    best = sims.argmax(1)
    hit = (questions[best] == source[paraphrase].reshape(-1, *([1] * (best.dim() - 1)))).double()
    return (within - between).mean(0), hit.mean(0)


def _probe_tokens(tokenizer: Any, offset: int) -> dict[str, str]:
    chat = ChatFormat(tokenizer)
    found = {}
    for shape, prompt in PROBE_PROMPTS.items():
        ids = chat.encode_prompt(prompt)
        found[shape] = tokenizer.convert_ids_to_tokens(ids[offset]) if len(ids) >= -offset else "<none>"
    return found


def compute_sps(
    model: Any,
    tokenizer: Any,
    items: Sequence[QAItem] | None = None,
    *,
    name: str = "model",
    data: str | None = None,
    offsets: Sequence[int] | None = None,
    question_tokens: int = 2,
    band_width: int | None = None,
    max_paraphrases: int = 4,
    batch_size: int = 16,
    progress: bool = False,
    directions: int = DEFAULT_DIRECTIONS,
) -> SPSResult:
    """Compute SPS for every (offset, layer) and choose the profile: forward passes only, model unchanged.

    Args:
        model: a loaded causal LM (its weights are not changed; hooks are removed, its mode restored).
        tokenizer: its tokenizer, with the chat template the scorer will use.
        items: questions with at least one paraphrase each (default: the shipped set).
        name: the model name written into the profile.
        data: a description of where ``items`` came from (default: the shipped set's name).
        offsets: candidate positions counted from the end of the prompt (default: the template tail plus
            ``question_tokens`` question tokens).
        question_tokens: how many of the last question tokens are candidates when ``offsets`` is not given.
        band_width: layers per candidate band (default: half the stack, as SemGrad averages).
        max_paraphrases: paraphrases used per question.
        batch_size: prompts per forward pass.
        progress: show a progress bar.
        directions: paraphrase directions kept per layer at the chosen place (0: none); written next to the
            JSON by :meth:`SPSResult.save` and named by the saved profile, for ``semgrad_para``.
    """
    start = time.perf_counter()
    if items is None:
        items, data = load_default_items(), data or DEFAULT_DATA
    usable = [item for item in items if item.paraphrases]
    if len(usable) < 2:
        raise ValueError("SPS needs at least two questions that have paraphrases")
    tail = template_tail_length(tokenizer)
    if offsets is None:
        offsets = range(-(tail + question_tokens), 0)
    offsets = sorted(set(offsets))
    if not offsets or max(offsets) >= 0:
        raise ValueError("offsets must be negative positions counted from the end of the prompt")

    prompts, source = encode_items(tokenizer, usable, max_paraphrases)
    if min(len(p) for p in prompts) < -offsets[0]:
        raise ValueError(f"a prompt is shorter than offset {offsets[0]}")

    layer_count = num_layers(model)
    states = tail_states(model, prompts, offsets, layer_count, batch_size, progress)
    sps, retrieval = preservation_scores(states, torch.tensor(source))  # (offsets, layers) each

    bands = layer_bands(layer_count, band_width)
    band_sps = torch.stack([sps[:, first : last + 1].mean(1) for first, last in bands], dim=1)
    best = int(band_sps.argmax())
    pick, band = divmod(best, len(bands))
    offset = offsets[pick]

    tokens = [tokenizer.convert_ids_to_tokens(prompts[0][offset]) for offset in offsets]
    template = [offset >= -tail and len({p[offset] for p in prompts}) == 1 for offset in offsets]
    anchor = tokens[pick] if template[pick] else None
    profile = ModelProfile(
        name=name,
        offset=offset,
        layers=tuple(range(bands[band][0], bands[band][1] + 1)),
        anchor=anchor,
        source="sps",
    )
    probes = _probe_tokens(tokenizer, offset)
    warnings = _warnings(profile, tokens[pick], probes)
    for warning in warnings:
        logger.warning("SPS profile for %s: %s", name, warning)
    result = SPSResult(
        profile=profile,
        model=name,
        data=data or "user items",
        n_questions=len(usable),
        n_prompts=len(prompts),
        num_layers=layer_count,
        offsets=list(offsets),
        tokens=tokens,
        template=template,
        sps=sps.tolist(),
        retrieval=retrieval.tolist(),
        bands=bands,
        band_sps=band_sps.tolist(),
        probes=probes,
        warnings=warnings,
        seconds=time.perf_counter() - start,
    )
    if directions:
        result._directions = directions_from_states(
            states[:, pick, list(profile.layers or ())],
            source,
            directions,
            profile,
            name=name,
            data=result.data,
            n_questions=len(usable),
        )
    return result


def _warnings(profile: ModelProfile, token: str, probes: dict[str, str]) -> list[str]:
    """Say when the chosen position is not a template token, or moves under another prompt shape."""
    warnings = []
    if profile.anchor is None:
        warnings.append(
            f"offset {profile.offset} ({token!r}) is a question token, not a template token: no anchor can "
            "be checked, and with context placed after the question the position lands in that context"
        )
    moved = {shape: seen for shape, seen in probes.items() if seen != token}
    if moved:
        warnings.append(
            f"offset {profile.offset} lands on {token!r} in the QA prompt but on "
            + ", ".join(f"{seen!r} with a {shape}" for shape, seen in moved.items())
            + ": this template ends differently for those prompts, so the profile cannot hold for them"
        )
    return warnings


def sps_table(result: SPSResult) -> str:
    """A markdown table of band SPS per candidate offset; the chosen candidate is in bold."""
    bands = [f"layers {first}-{last}" for first, last in result.bands]
    lines = [
        "| offset | token | kind | " + " | ".join(bands) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in bands) + " |",
    ]
    chosen = (result.profile.offset, result.profile.layers)
    for offset, token, template, values in zip(
        result.offsets, result.tokens, result.template, result.band_sps, strict=True
    ):
        cells = [
            f"**{value:.3f}**" if chosen == (offset, tuple(range(first, last + 1))) else f"{value:.3f}"
            for value, (first, last) in zip(values, result.bands, strict=True)
        ]
        kind = "template" if template else "question"
        lines.append(f"| {offset} | `{token}` | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
