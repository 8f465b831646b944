"""`SemGradScorer`: one configured model that scores (prompt, answer) pairs, thread-safe and shareable."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from semgrad_guard.calibration import CalibrationBundle, load_calibration
from semgrad_guard.errors import (
    InputTooLongError,
    InvalidInputError,
    NonFiniteScoreError,
    ProfileMismatchError,
    SemGradError,
)
from semgrad_guard.loading import LoadedModel, load_model, resolve_device, resolve_dtype
from semgrad_guard.profiles import ModelProfile, resolve_profile
from semgrad_guard.prompts import ChatFormat, Prompt
from semgrad_guard.results import Score, ScoredGeneration
from semgrad_guard.sps import auto_profile
from semgrad_guard.statistics import EncodedPair, gradient_statistics, num_layers

__all__ = ["ErrorMode", "ScorerConfig", "SemGradScorer"]

ErrorMode = Literal["raise", "mark"]
"""``"raise"``: bad input raises a typed error. ``"mark"``: it comes back as a Score with ``valid=False``."""


class ScorerConfig(BaseModel):
    """Settings of a :class:`SemGradScorer` that do not name the model itself."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device: str = Field(default="auto", description="'auto' (cuda, mps, cpu), or a torch device string.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = Field(default=8, ge=1, description="Pairs per forward/backward pass in score_batch.")
    max_length: int | None = Field(default=None, ge=2, description="Token limit; None = the model's context.")
    trust_remote_code: bool = False


class SemGradScorer:
    """Scores answers with SemGrad and HybridGrad from one forward and one backward pass of a local LM.

    Args:
        model: ``None`` for the embedded SmolLM2-135M-Instruct; a Hugging Face model id or folder; a GGUF
            file path; or an already-loaded ``(model, tokenizer)`` pair whose weights are shared, not copied.
        device: ``"auto"`` or a torch device (ignored for a loaded pair, which stays where it is).
        dtype: ``"auto"`` (float32 on CPU, bfloat16/float16 on GPU) or an explicit dtype name.
        profile: where to take the gradient: a :class:`ModelProfile`, a path to one saved as JSON,
            ``None`` for the built-in profile of the model's family (template rule otherwise), or
            ``"auto"`` to compute it with SPS (:mod:`semgrad_guard.sps`) once and cache it per model.
        batch_size: pairs per pass in :meth:`score_batch`.
        max_length: refuse pairs longer than this many tokens (default: the model's context length).
        trust_remote_code: let transformers run code shipped with the model (off by default).
        load_kwargs: extra keyword arguments for ``from_pretrained`` (revision, attn_implementation, ...).
        name: the model name reported in scores (default: derived from ``model``).
        calibration: a :class:`CalibrationBundle`, a path to one, or ``"default"`` (the shipped bundle of
            the embedded model); fills ``risk``, ``confidence`` and ``low_confidence`` of every Score.

    The model loads on first use (or on :meth:`load`). One lock serialises passes through the model, so a
    scorer can be shared by threads; :meth:`ascore` runs in a worker thread and never blocks the event loop.

    Example:
        >>> scorer = SemGradScorer()
        >>> score = scorer.score("What is the capital of France?", "Paris")
        >>> score.semgrad > 0
        True
    """

    def __init__(
        self,
        model: str | Path | tuple[Any, Any] | None = None,
        *,
        device: str = "auto",
        dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto",
        profile: ModelProfile | Literal["auto"] | str | Path | None = None,
        batch_size: int = 8,
        max_length: int | None = None,
        trust_remote_code: bool = False,
        load_kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
        calibration: CalibrationBundle | str | Path | None = None,
    ) -> None:
        """Record the configuration; nothing is loaded until first use."""
        self.config = ScorerConfig(
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            max_length=max_length,
            trust_remote_code=trust_remote_code,
        )
        self._spec = model
        self._load_kwargs = dict(load_kwargs or {})
        self._name = name
        self._requested_profile: ModelProfile | Literal["auto"] | None = (
            "auto"
            if profile == "auto"
            else ModelProfile.load(profile)
            if isinstance(profile, (str, Path))
            else profile
        )
        self._lock = threading.RLock()
        self._loaded: LoadedModel | None = None
        self._format: ChatFormat | None = None
        self._profile: ModelProfile | None = None
        self._calibration_source = calibration
        self._calibration: CalibrationBundle | None = None

    # ----------------------------------------------------------------------------------------- loading
    def load(self) -> SemGradScorer:
        """Load the model now (otherwise it loads on first use); returns the scorer."""
        with self._lock:
            if self._loaded is None:
                self._loaded = self._load()
                self._format = ChatFormat(self._loaded.tokenizer)
                model, tokenizer, name = self._loaded.model, self._loaded.tokenizer, self._loaded.name
                if self._requested_profile == "auto":
                    profile = auto_profile(model, tokenizer, name)
                else:
                    profile = self._requested_profile or resolve_profile(model, tokenizer, name)
                self._profile = profile.resolved(num_layers(self._loaded.model))
                if self._calibration_source is not None:
                    self._calibration = load_calibration(self._calibration_source, self._loaded.name)
        return self

    def _load(self) -> LoadedModel:
        if isinstance(self._spec, tuple):
            model, tokenizer = self._spec
            name = self._name or str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
            return LoadedModel(model=model, tokenizer=tokenizer, name=name)
        device = resolve_device(self.config.device)
        loaded = load_model(
            self._spec,
            device=device,
            dtype=resolve_dtype(self.config.dtype, device),
            trust_remote_code=self.config.trust_remote_code,
            load_kwargs=self._load_kwargs,
        )
        return LoadedModel(loaded.model, loaded.tokenizer, self._name or loaded.name)

    @property
    def model(self) -> Any:
        """The causal LM (loads it if needed)."""
        return self._ready()[0].model

    @property
    def tokenizer(self) -> Any:
        """The tokenizer (loads it if needed)."""
        return self._ready()[0].tokenizer

    @property
    def model_name(self) -> str:
        """The model name reported in every Score."""
        return self._ready()[0].name

    @property
    def profile(self) -> ModelProfile:
        """The profile in use, with its layers written out."""
        return self._ready()[2]

    @property
    def calibration(self) -> CalibrationBundle | None:
        """The calibration applied to every Score, if any."""
        self._ready()
        return self._calibration

    @property
    def context_length(self) -> int:
        """The longest prompt + answer, in tokens, this scorer accepts."""
        model = self.model
        limits = [getattr(model.config, "max_position_embeddings", None), self.config.max_length]
        return min((int(n) for n in limits if n), default=1 << 30)

    def _ready(self) -> tuple[LoadedModel, ChatFormat, ModelProfile]:
        self.load()
        assert self._loaded is not None and self._format is not None and self._profile is not None
        return self._loaded, self._format, self._profile

    # ----------------------------------------------------------------------------------------- scoring
    def score(self, prompt: Prompt, answer: str, *, errors: ErrorMode = "raise") -> Score:
        """Score one answer to one prompt. Higher scores = more likely wrong."""
        return self.score_batch([(prompt, answer)], errors=errors)[0]

    async def ascore(self, prompt: Prompt, answer: str, *, errors: ErrorMode = "raise") -> Score:
        """Async :meth:`score`: the pass runs in a worker thread, so the event loop stays free."""
        return await asyncio.to_thread(self.score, prompt, answer, errors=errors)

    async def ascore_batch(
        self, pairs: Sequence[tuple[Prompt, str]], *, errors: ErrorMode = "raise"
    ) -> list[Score]:
        """Async :meth:`score_batch`, run in a worker thread."""
        return await asyncio.to_thread(self.score_batch, pairs, errors=errors)

    def score_batch(
        self, pairs: Sequence[tuple[Prompt, str]], *, errors: ErrorMode = "raise", progress: bool = False
    ) -> list[Score]:
        """Score many pairs in padded batches of ``batch_size``; results equal one-by-one scoring.

        With ``errors="mark"`` a pair that cannot be scored comes back as an invalid Score in its place and
        the others are still scored; with ``"raise"`` the first bad pair raises before any pass runs.
        """
        loaded, _, _ = self._ready()
        results: list[Score | None] = [None] * len(pairs)
        encoded: list[tuple[int, EncodedPair]] = []
        for index, (prompt, answer) in enumerate(pairs):
            try:
                encoded.append((index, self._encode(prompt, answer)))
            except InvalidInputError as exc:
                if errors == "raise":
                    raise
                results[index] = Score.invalid(f"{exc.code}: {exc}", model=loaded.name)
        encoded.sort(key=lambda item: item[1].length)
        size = self.config.batch_size
        chunks = [encoded[start : start + size] for start in range(0, len(encoded), size)]
        for chunk in tqdm(chunks, desc="scoring", unit="batch", disable=not progress):
            for (index, _), score in zip(
                chunk, self._score_encoded([p for _, p in chunk], errors), strict=True
            ):
                results[index] = score
        return [score for score in results if score is not None]

    def generate_and_score(
        self,
        prompt: Prompt,
        *,
        max_new_tokens: int = 64,
        errors: ErrorMode = "raise",
        **generation_kwargs: Any,
    ) -> ScoredGeneration:
        """Generate an answer greedily with the scoring model, then score its own token ids.

        Extra keyword arguments go to ``model.generate`` (they may override greedy decoding).
        """
        loaded, chat, profile = self._ready()
        prompt_ids = chat.encode_prompt(prompt)
        answer_ids = self._generate_ids(prompt_ids, 1, max_new_tokens, generation_kwargs)[0]
        text = loaded.tokenizer.decode(answer_ids, skip_special_tokens=True)
        try:
            if not answer_ids:
                raise InvalidInputError("the model generated no tokens")
            pair = EncodedPair(prompt_ids, answer_ids, self._position(prompt_ids, profile))
            score = self._score_encoded([pair], "raise")[0]
        except SemGradError as exc:
            if errors == "raise":
                raise
            score = Score.invalid(f"{exc.code}: {exc}", model=loaded.name)
        return ScoredGeneration(text=text, score=score)

    def generate(
        self, prompt: Prompt, *, n: int = 1, max_new_tokens: int = 64, **generation_kwargs: Any
    ) -> list[str]:
        """Generate ``n`` answers with the scoring model (greedy unless ``do_sample=True`` is passed)."""
        loaded, chat, _ = self._ready()
        ids = self._generate_ids(chat.encode_prompt(prompt), n, max_new_tokens, generation_kwargs)
        return [loaded.tokenizer.decode(answer, skip_special_tokens=True) for answer in ids]

    # ---------------------------------------------------------------------------------------- internals
    def _generate_ids(
        self, prompt_ids: list[int], n: int, max_new_tokens: int, generation_kwargs: Mapping[str, Any]
    ) -> list[list[int]]:
        """Answer token ids of ``n`` generations, each cut after its first end-of-turn or eos token."""
        loaded, chat, _ = self._ready()
        self._check_length(len(prompt_ids) + max_new_tokens)
        model = loaded.model
        settings: dict[str, Any] = {
            "do_sample": False,
            "max_new_tokens": max_new_tokens,
            "num_return_sequences": n,
            **generation_kwargs,
        }
        if loaded.tokenizer.pad_token_id is None:
            settings.setdefault("pad_token_id", chat.end_of_turn_id)
        with self._lock, self._eval_mode(model), torch.no_grad():
            ids = torch.tensor([prompt_ids], device=model.get_input_embeddings().weight.device)
            output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **settings)
        stops = {chat.end_of_turn_id, loaded.tokenizer.eos_token_id}
        answers = []
        for row in output[:, len(prompt_ids) :].tolist():
            end = next((i + 1 for i, token in enumerate(row) if token in stops), len(row))
            answers.append([int(t) for t in row[:end]])
        return answers

    def _encode(self, prompt: Prompt, answer: str) -> EncodedPair:
        _, chat, profile = self._ready()
        answer_ids = chat.encode_answer(answer)
        prompt_ids = chat.encode_prompt(prompt)
        self._check_length(len(prompt_ids) + len(answer_ids))
        return EncodedPair(prompt_ids, answer_ids, self._position(prompt_ids, profile))

    def _check_length(self, length: int) -> None:
        if length > self.context_length:
            raise InputTooLongError(f"prompt + answer is {length} tokens; the limit is {self.context_length}")

    def _position(self, prompt_ids: list[int], profile: ModelProfile) -> int:
        position = len(prompt_ids) + profile.offset
        if position < 0:
            raise InvalidInputError(
                f"the prompt has {len(prompt_ids)} tokens, fewer than offset {profile.offset}"
            )
        if profile.anchor is not None:
            token = self.tokenizer.convert_ids_to_tokens(prompt_ids[position])
            if token != profile.anchor:
                raise ProfileMismatchError(
                    f"profile {profile.name!r} expects {profile.anchor!r} at offset {profile.offset}, but "
                    f"this prompt has {token!r} there: the template does not end the way the profile assumes"
                )
        return position

    def _score_encoded(self, pairs: list[EncodedPair], errors: ErrorMode) -> list[Score]:
        loaded, _, profile = self._ready()
        assert profile.layers is not None
        with self._lock, self._eval_mode(loaded.model):
            start = time.perf_counter()
            stats = gradient_statistics(loaded.model, pairs, profile.layers, num_layers(loaded.model))
            seconds = time.perf_counter() - start
        scores = []
        for pair, stat in zip(pairs, stats, strict=True):
            score = Score.from_statistics(stat, pair, model=loaded.name, profile=profile, seconds=seconds)
            if score.is_finite() and self._calibration is not None:
                score = self._calibration.apply(score)
            if not score.is_finite():
                error = NonFiniteScoreError("the pass produced NaN or infinite values")
                if errors == "raise":
                    raise error
                score = Score.invalid(f"{error.code}: {error}", model=loaded.name, seconds=seconds)
            scores.append(score)
        return scores

    @staticmethod
    @contextmanager
    def _eval_mode(model: Any) -> Iterator[None]:
        """Switch dropout off for the pass and put the caller's mode back afterwards, even on error."""
        was_training = bool(model.training)
        if was_training:
            model.eval()
        try:
            yield
        finally:
            if was_training:
                model.train()
