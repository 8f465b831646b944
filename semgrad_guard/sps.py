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
   (:mod:`semgrad_guard.directions`), saved next to the profile for ``semgrad_para``;
   :func:`fit_directions` fits them for any given profile.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from tqdm.auto import tqdm

from semgrad_guard.cache import cache_dir
from semgrad_guard.datasets import QAItem, load_qa, qa_prompt
from semgrad_guard.directions import (
    DEFAULT_DIRECTIONS,
    ParaphraseDirections,
    directions_file,
    paraphrase_differences,
    principal_directions,
    resolve_directions,
)
from semgrad_guard.profiles import ModelProfile
from semgrad_guard.prompts import ChatFormat, Prompt
from semgrad_guard.statistics import decoder_layers, num_layers

__all__ = [
    "DEFAULT_DATA",
    "PROBE_PROMPTS",
    "SPSResult",
    "auto_profile",
    "capture_hidden_states",
    "compute_sps",
    "encode_items",
    "fit_directions",
    "layer_bands",
    "load_default_items",
    "preservation_scores",
    "sps_table",
    "template_tail_length",
]

logger = logging.getLogger(__name__)

DEFAULT_DATA = "sps_default.jsonl"
"""The small set shipped in ``semgrad_guard/data``: SciQ and TruthfulQA dev questions with paraphrases."""

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


def load_default_items() -> list[QAItem]:
    """The shipped default set (works without the ``shared/data`` folder)."""
    with resources.as_file(resources.files("semgrad_guard") / "data" / DEFAULT_DATA) as path:
        return load_qa(path)


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


@contextmanager
def capture_hidden_states(model: Any, num_layers: int, store: dict[int, torch.Tensor]) -> Iterator[None]:
    """Record hidden states 0..num_layers-1 (embeddings, then decoder layer outputs); always unhook."""

    def keep(index: int) -> Callable[[torch.nn.Module, tuple[Any, ...], Any], None]:
        def hook(module: torch.nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            store[index] = output[0] if isinstance(output, tuple) else output

        return hook

    stack = decoder_layers(model, num_layers)
    handles = [model.get_input_embeddings().register_forward_hook(keep(0))]
    was_training = bool(model.training)
    try:
        handles += [stack[layer - 1].register_forward_hook(keep(layer)) for layer in range(1, num_layers)]
        model.eval()
        yield
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()


def _tail_states(
    model: Any, prompts: list[list[int]], offsets: list[int], num_layers: int, batch_size: int, progress: bool
) -> torch.Tensor:
    """Hidden states (prompts, offsets, layers, width) at ``length + offset`` of each right-padded prompt."""
    device = model.get_input_embeddings().weight.device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    result: torch.Tensor | None = None
    store: dict[int, torch.Tensor] = {}
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    with capture_hidden_states(model, num_layers, store), torch.inference_mode():
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


def _directions(
    states: torch.Tensor,
    source: list[int],
    k: int,
    profile: ModelProfile,
    *,
    name: str,
    data: str,
    n_questions: int,
) -> ParaphraseDirections:
    """Directions from hidden states (prompts, layers, width) already taken at the profile's place."""
    assert profile.layers is not None
    differences = paraphrase_differences(states, source)
    vectors, singular, energy = principal_directions(differences, k)
    return ParaphraseDirections(
        vectors=vectors,
        singular_values=singular,
        energy=energy,
        layers=tuple(profile.layers),
        offset=profile.offset,
        model=name,
        data=data,
        n_questions=n_questions,
        n_differences=len(differences),
    )


def fit_directions(
    model: Any,
    tokenizer: Any,
    profile: ModelProfile,
    items: Sequence[QAItem] | None = None,
    *,
    k: int = DEFAULT_DIRECTIONS,
    name: str = "model",
    data: str | None = None,
    max_paraphrases: int = 4,
    batch_size: int = 16,
    progress: bool = False,
) -> ParaphraseDirections:
    """Paraphrase directions at a given profile's position and layers: forward passes only, model unchanged.

    Per layer, the top-``k`` principal components (about zero) of the hidden-state differences paraphrase
    minus original question (:mod:`semgrad_guard.directions`). ``items`` default to the shipped set. When the
    profile names an anchor, every prompt must have it at the offset (``ValueError`` otherwise).
    """
    if items is None:
        items, data = load_default_items(), data or DEFAULT_DATA
    usable = [item for item in items if item.paraphrases]
    if not usable:
        raise ValueError("paraphrase directions need questions that have paraphrases")
    layer_count = num_layers(model)
    profile = profile.resolved(layer_count)
    assert profile.layers is not None
    prompts, source = encode_items(tokenizer, usable, max_paraphrases)
    if min(len(p) for p in prompts) < -profile.offset:
        raise ValueError(f"a prompt is shorter than offset {profile.offset}")
    if profile.anchor is not None:
        found = {tokenizer.convert_ids_to_tokens(p[profile.offset]) for p in prompts}
        if found != {profile.anchor}:
            raise ValueError(f"offset {profile.offset} lands on {sorted(found)}, not {profile.anchor!r}")
    states = _tail_states(model, prompts, [profile.offset], layer_count, batch_size, progress)
    return _directions(
        states[:, 0, list(profile.layers)],
        source,
        k,
        profile,
        name=name,
        data=data or "user items",
        n_questions=len(usable),
    )


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
    states = _tail_states(model, prompts, offsets, layer_count, batch_size, progress)
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
        result._directions = _directions(
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


def _cache_path(model: Any, tokenizer: Any, name: str) -> Path:
    """``cache_dir()/profiles/<name>-<hash>.json``; the hash covers the config and the chat template."""
    identity = "\n".join(
        [name, model.config.to_json_string(), str(getattr(tokenizer, "chat_template", "")), DEFAULT_DATA]
    )
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[-64:]
    return cache_dir() / "profiles" / f"{slug}-{digest}.json"


def auto_profile(model: Any, tokenizer: Any, name: str) -> ModelProfile:
    """The SPS profile of this model from the shipped set: computed once, then read from the user cache."""
    path = _cache_path(model, tokenizer, name)
    if path.is_file():
        return ModelProfile.load(path)
    logger.info("Computing the SPS profile of %s once; it is cached in %s", name, path)
    result = compute_sps(model, tokenizer, name=name, progress=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    result.save(partial, directions_path=directions_file(path))  # the directions file first, atomically
    partial.replace(path)  # atomic: a process scoring with the same model never reads half a file
    return ModelProfile.load(path)
