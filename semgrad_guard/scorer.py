"""`SemGradScorer`: one configured model that scores (prompt, answer) pairs, thread-safe and shareable."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from semgrad_guard.batching import BatchingConfig, MicroBatcher
from semgrad_guard.calibration import CalibrationBundle, load_calibration
from semgrad_guard.errors import (
    InputTooLongError,
    InvalidInputError,
    NonFiniteScoreError,
    ProfileMismatchError,
    SemGradError,
)
from semgrad_guard.loading import DTypeName, LoadedModel, load_model, resolve_device, resolve_dtype
from semgrad_guard.pairs import EncodedPair, PassMode
from semgrad_guard.profiles import ModelProfile, resolve_profile
from semgrad_guard.prompts import MAX_CHARS_PER_TOKEN, ChatFormat, Prompt
from semgrad_guard.results import Score, ScoredGeneration
from semgrad_guard.reuse import PairKey, ReuseCache

if TYPE_CHECKING:
    import torch

__all__ = ["ErrorMode", "ScorerConfig", "SemGradScorer"]

ErrorMode = Literal["raise", "mark"]
"""``"raise"``: bad input raises a typed error. ``"mark"``: it comes back as a Score with ``valid=False``."""


class ScorerConfig(BaseModel):
    """Settings of a :class:`SemGradScorer` that do not name the model itself."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device: str = Field(default="auto", description="'auto' (cuda, mps, cpu), or a torch device string.")
    dtype: DTypeName = "auto"
    batch_size: int = Field(default=8, ge=1, description="Most pairs in one forward/backward pass.")
    max_length: int | None = Field(default=None, ge=2, description="Token limit; None = the model's context.")
    trust_remote_code: bool = False
    pass_mode: PassMode = Field(
        default="fast", description="'fast' (cached prompt, graph from p on) or 'naive'; both exact."
    )
    batching: BatchingConfig = Field(
        default_factory=BatchingConfig, description="How concurrent requests are gathered into passes."
    )
    reuse_size: int = Field(
        default=256, ge=0, description="Recent distinct pairs whose score later calls reuse (0: none)."
    )


class SemGradScorer:
    """Scores answers with SemGrad and HybridGrad from one forward and one backward pass of a local LM.

    Args:
        model: ``None`` for the embedded SmolLM2-135M-Instruct; a named model (``"qwen2.5-coder-1.5b"``,
            docs/models.md); a Hugging Face model id or folder; a GGUF file path; or an already-loaded
            ``(model, tokenizer)`` pair whose weights are shared, not copied.
        device: ``"auto"`` or a torch device (ignored for a loaded pair, which stays where it is).
        dtype: ``"auto"`` (bfloat16, or float16 without it, on a CUDA GPU; float32 on CPU and MPS, but
            bfloat16 for a named model such as ``"qwen2.5-coder-1.5b"`` on a CPU with avx512_bf16) or an
            explicit dtype name. Statistics are computed in at least float32 whatever the model's dtype;
            ``"float64"`` makes the whole pass exact to rounding (docs/method.md, "Precision").
        profile: where to take the gradient: a :class:`ModelProfile`, a path to one saved as JSON,
            ``None`` for the built-in profile of the model's family (template rule otherwise), or
            ``"auto"`` to compute it with SPS (:mod:`semgrad_guard.sps`) once and cache it per model.
            A profile that names paraphrase directions also fills ``Score.semgrad_para``.
        batch_size: the most pairs in one forward/backward pass.
        max_length: refuse pairs longer than this many tokens (default: the model's context length).
        trust_remote_code: let transformers run code shipped with the model (off by default).
        pass_mode: ``"fast"`` (default) reads the prompt before the gradient position once without autograd
            and builds the graph only from there on; ``"naive"`` differentiates the whole sequence. Both
            give the same scores up to float rounding (:mod:`semgrad_guard.statistics`).
        batching: how requests from many threads and tasks are gathered into shared passes (token budget,
            wait, queue bound): :class:`~semgrad_guard.batching.BatchingConfig`.
        reuse_size: how many recent distinct pairs (by exact token ids) keep their score, so a pair scored
            again (by another adapter watching the same call) reuses the pass: ``Score.reused`` is then
            ``True``. 0 runs a pass for every call.
        load_kwargs: extra keyword arguments for ``from_pretrained`` (revision, attn_implementation, ...).
        name: the model name reported in scores (default: derived from ``model``).
        calibration: ``"auto"`` (default: the bundle shipped for this model, if any), a
            :class:`CalibrationBundle`, a path to one, ``"default"`` (the embedded model's bundle), or
            ``None`` for raw scores only; fills ``risk``, ``confidence`` and ``low_confidence``.

    The model loads on first use (or on :meth:`load`). Scoring requests from every thread and task go to one
    worker thread that gathers them into shared passes; one lock keeps passes and generation apart, so a
    scorer can be shared freely, and :meth:`ascore` never blocks the event loop.

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
        dtype: DTypeName = "auto",
        profile: ModelProfile | Literal["auto"] | str | Path | None = None,
        batch_size: int = 8,
        max_length: int | None = None,
        trust_remote_code: bool = False,
        pass_mode: PassMode = "fast",
        batching: BatchingConfig | None = None,
        reuse_size: int = 256,
        load_kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
        calibration: CalibrationBundle | str | Path | None = "auto",
    ) -> None:
        """Record the configuration; nothing is loaded until first use."""
        self.config = ScorerConfig(
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            max_length=max_length,
            trust_remote_code=trust_remote_code,
            pass_mode=pass_mode,
            batching=batching or BatchingConfig(),
            reuse_size=reuse_size,
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
        self._ready_event = threading.Event()  # set last in load(): everything below is filled
        self._loaded: LoadedModel | None = None
        self._format: ChatFormat | None = None
        self._profile: ModelProfile | None = None
        self._directions: torch.Tensor | None = None
        self._calibration_source = calibration
        self._calibration: CalibrationBundle | None = None
        self._batcher = MicroBatcher(self._pass, self.config.batching, self.config.batch_size)
        self._reuse: ReuseCache[Score] = ReuseCache(
            self.config.reuse_size, lambda score: score.model_copy(update={"reused": True})
        )

    # ----------------------------------------------------------------------------------------- loading
    def load(self) -> SemGradScorer:
        """Load the model now (otherwise it loads on first use); returns the scorer.

        Once loaded, this returns at once without taking the scorer's lock: a pass holds that lock for its
        whole run, and a caller that only needs the loaded model must not wait behind it (so a full queue
        answers :class:`ScorerBusyError` after ``queue_timeout_s``, not after the running pass).
        """
        if self._ready_event.is_set():
            return self
        from semgrad_guard import directions, model_parts  # torch: imported when a model is loaded

        with self._lock:
            if self._ready_event.is_set():
                return self
            loaded = self._load()
            tokens = _context_length(loaded.model, self.config.max_length)
            self._format = ChatFormat(loaded.tokenizer, max_chars=tokens * MAX_CHARS_PER_TOKEN)
            model, tokenizer, name = loaded.model, loaded.tokenizer, loaded.name
            if self._requested_profile == "auto":
                from semgrad_guard.sps import auto_profile  # research tooling, only when asked for

                profile = auto_profile(model, tokenizer, name)
            else:
                profile = self._requested_profile or resolve_profile(model, tokenizer, name)
            self._profile = profile.resolved(model_parts.num_layers(model))
            hidden_size = int(model.get_input_embeddings().weight.shape[-1])
            self._directions = directions.profile_directions(self._profile, hidden_size)
            if self._calibration_source is not None:
                self._calibration = load_calibration(self._calibration_source, name)
            self._loaded = loaded
            self._ready_event.set()
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
            dtype=resolve_dtype(self.config.dtype, device, self._spec),
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
    def directions(self) -> torch.Tensor | None:
        """The profile's paraphrase directions (n_layers, k, hidden) behind ``semgrad_para``, if any."""
        self._ready()
        return self._directions

    @property
    def calibration(self) -> CalibrationBundle | None:
        """The calibration applied to every Score, if any."""
        self._ready()
        return self._calibration

    @property
    def context_length(self) -> int:
        """The longest prompt + answer, in tokens, this scorer accepts."""
        return _context_length(self.model, self.config.max_length)

    def _ready(self) -> tuple[LoadedModel, ChatFormat, ModelProfile]:
        self.load()
        assert self._loaded is not None and self._format is not None and self._profile is not None
        return self._loaded, self._format, self._profile

    # ----------------------------------------------------------------------------------------- scoring
    def score(self, prompt: Prompt, answer: str, *, errors: ErrorMode = "raise") -> Score:
        """Score one answer to one prompt. Higher scores = more likely wrong."""
        return self.score_batch([(prompt, answer)], errors=errors)[0]

    async def ascore(self, prompt: Prompt, answer: str, *, errors: ErrorMode = "raise") -> Score:
        """Async :meth:`score`: the event loop stays free while the pass runs."""
        return (await self.ascore_batch([(prompt, answer)], errors=errors))[0]

    async def ascore_batch(
        self, pairs: Sequence[tuple[Prompt, str]], *, errors: ErrorMode = "raise"
    ) -> list[Score]:
        """Async :meth:`score_batch`: concurrent tasks share passes through the micro-batcher."""
        slots = await asyncio.to_thread(self._submit, pairs, errors)
        waiting = [asyncio.wrap_future(slot) for slot in slots if isinstance(slot, Future)]
        await asyncio.gather(*waiting, return_exceptions=True)
        return [self._outcome(slot, errors) for slot in slots]

    def score_batch(
        self, pairs: Sequence[tuple[Prompt, str]], *, errors: ErrorMode = "raise", progress: bool = False
    ) -> list[Score]:
        """Score many pairs; results equal one-by-one scoring.

        Pairs are sorted by length and run in passes of at most ``batch_size`` pairs, shared with any other
        thread or task scoring at the same time (:mod:`semgrad_guard.batching`). With ``errors="mark"`` a
        pair that cannot be scored comes back as an invalid Score in its place and the others are still
        scored; with ``"raise"`` the first bad pair raises before any pass runs.
        """
        slots = self._submit(pairs, errors)
        return [
            self._outcome(slot, errors)
            for slot in tqdm(slots, desc="scoring", unit="pair", disable=not progress)
        ]

    def _submit(self, pairs: Sequence[tuple[Prompt, str]], errors: ErrorMode) -> list[Score | Future[Score]]:
        """Encode every pair (bad input raises or is marked first), then queue the new ones, shortest first.

        A pair whose exact token ids another call already scored (or is scoring) gets that call's future;
        its Score comes back with ``reused=True``.
        """
        loaded, _, _ = self._ready()
        slots: list[Score | Future[Score] | None] = [None] * len(pairs)
        encoded: list[tuple[int, EncodedPair]] = []
        for index, pair in enumerate(pairs):
            try:
                encoded.append((index, self._encode_pair(pair)))
            except InvalidInputError as exc:
                if errors == "raise":
                    raise
                slots[index] = Score.invalid(f"{exc.code}: {exc}", model=loaded.name)
        encoded.sort(key=lambda item: item[1].length)
        running = self._shared([encoding for _, encoding in encoded])
        for (index, _), future in zip(encoded, running, strict=True):
            slots[index] = future
        return [slot for slot in slots if slot is not None]

    def _shared(self, encoded: Sequence[EncodedPair]) -> list[Future[Score]]:
        """Futures of these pairs' Scores: pairs another call claimed reuse its pass, the rest are queued."""
        claims: list[Future[Score]] = []
        new: list[tuple[PairKey, Future[Score], EncodedPair]] = []
        for encoding in encoded:
            key = (tuple(encoding.prompt_ids), tuple(encoding.answer_ids))
            claimed, reused = self._reuse.claim(key)
            claims.append(claimed)
            if not reused:
                new.append((key, claimed, encoding))
        try:
            running = self._batcher.submit([pair for _, _, pair in new])
        except SemGradError as exc:
            for key, claimed, _ in new:  # callers sharing a refused pair get the same refusal
                self._reuse.forget(key, claimed)
                claimed.set_exception(exc)
            raise
        for (key, claimed, _), future in zip(new, running, strict=True):
            self._reuse.fill(key, claimed, future)
        return claims

    def _outcome(self, slot: Score | Future[Score], errors: ErrorMode) -> Score:
        """A finished pass's Score, checked and calibrated; its error raised or marked per ``errors``."""
        if isinstance(slot, Score):
            return slot
        try:
            score = slot.result()
            if not score.is_finite():
                raise NonFiniteScoreError("the pass produced NaN or infinite values")
        except SemGradError as exc:
            if errors == "raise":
                raise
            return Score.invalid(f"{exc.code}: {exc}", model=self.model_name)
        return score if self._calibration is None else self._calibration.apply(score)

    def generate_and_score(
        self,
        prompt: Prompt,
        *,
        max_new_tokens: int = 64,
        errors: ErrorMode = "raise",
        **generation_kwargs: Any,
    ) -> ScoredGeneration:
        """Generate an answer greedily with the scoring model, then score it exactly as :meth:`score` would.

        The generated text is encoded as any answer is (its tokens, then end-of-turn), so the result equals
        ``score(prompt, text)``; the score reuses the prompt's key/value cache that generation made, so only
        the positions from the gradient position on are run again. Extra keyword arguments go to
        ``model.generate`` (they may override greedy decoding).
        """
        from semgrad_guard import model_parts

        loaded, chat, profile = self._ready()
        prompt_ids = chat.encode_prompt(prompt)
        answers, cache = self._generate_ids(prompt_ids, 1, max_new_tokens, generation_kwargs)
        text = loaded.tokenizer.decode(answers[0], skip_special_tokens=True)
        try:
            # The text is scored as score() would score it: its own tokens plus end-of-turn (a generation
            # cut at max_new_tokens, or one that re-tokenizes differently, is scored the same way).
            answer_ids = chat.encode_answer(text)
            pair = EncodedPair(prompt_ids, answer_ids, self._position(prompt_ids, profile))
            self._check_length(pair.length)
            pair = replace(pair, prefix=model_parts.prefix_from_cache(cache, pair.start))
        except SemGradError as exc:
            if errors == "raise":
                raise
            return ScoredGeneration(text=text, score=Score.invalid(f"{exc.code}: {exc}", model=loaded.name))
        # Shared like any scored pair, so a later score(prompt, text) by an adapter reuses this pass.
        return ScoredGeneration(text=text, score=self._outcome(self._shared([pair])[0], errors))

    def generate(
        self, prompt: Prompt, *, n: int = 1, max_new_tokens: int = 64, **generation_kwargs: Any
    ) -> list[str]:
        """Generate ``n`` answers with the scoring model (greedy unless ``do_sample=True`` is passed)."""
        loaded, chat, _ = self._ready()
        ids, _ = self._generate_ids(chat.encode_prompt(prompt), n, max_new_tokens, generation_kwargs)
        return [loaded.tokenizer.decode(answer, skip_special_tokens=True) for answer in ids]

    # ---------------------------------------------------------------------------------------- internals
    def _generate_ids(
        self, prompt_ids: list[int], n: int, max_new_tokens: int, generation_kwargs: Mapping[str, Any]
    ) -> tuple[list[list[int]], Any]:
        """Answer ids of ``n`` generations, each cut after its first end-of-turn or eos, and the KV cache."""
        loaded, chat, _ = self._ready()
        self._check_length(len(prompt_ids) + max_new_tokens)
        model = loaded.model
        settings: dict[str, Any] = {
            "do_sample": False,
            "max_new_tokens": max_new_tokens,
            "num_return_sequences": n,
            **generation_kwargs,
            "return_dict_in_generate": True,
        }
        if loaded.tokenizer.pad_token_id is None:
            settings.setdefault("pad_token_id", chat.end_of_turn_id)
        import torch

        from semgrad_guard import model_parts

        with self._lock, model_parts.eval_mode(model), torch.no_grad():
            ids = torch.tensor([prompt_ids], device=model.get_input_embeddings().weight.device)
            output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **settings)
        stops = {chat.end_of_turn_id, loaded.tokenizer.eos_token_id}
        answers = []
        for row in output.sequences[:, len(prompt_ids) :].tolist():
            end = next((i + 1 for i, token in enumerate(row) if token in stops), len(row))
            answers.append([int(t) for t in row[:end]])
        return answers, model_parts.output_cache(output)

    def _encode_pair(self, pair: object) -> EncodedPair:
        """One caller's pair, encoded; anything that makes it unscorable is an :class:`InvalidInputError`.

        The checks in :mod:`semgrad_guard.prompts` name every known problem; a tokenizer failing on input
        they did not foresee is still the caller's input, so it is reported the same way (by type only:
        reasons never repeat the text).
        """
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise InvalidInputError(f"a pair must be (prompt, answer), got {type(pair).__name__}")
        try:
            return self._encode(pair[0], pair[1])
        except InvalidInputError:
            raise
        except (TypeError, ValueError, UnicodeError, RecursionError, IndexError, KeyError) as exc:
            raise InvalidInputError(f"the pair could not be tokenized ({type(exc).__name__})") from exc

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

    def _pass(self, pairs: list[EncodedPair]) -> list[Score]:
        """One forward/backward pass over ``pairs`` (on the batcher's thread); raw, uncalibrated Scores."""
        loaded, _, profile = self._ready()
        assert profile.layers is not None
        from semgrad_guard import model_parts, statistics

        with self._lock, model_parts.eval_mode(loaded.model):
            start = time.perf_counter()
            depth = model_parts.num_layers(loaded.model)
            stats = statistics.gradient_statistics(
                loaded.model, pairs, profile.layers, depth, self.config.pass_mode
            )
            seconds = time.perf_counter() - start
        return [
            Score.from_statistics(
                stat, pair, model=loaded.name, profile=profile, seconds=seconds, directions=self._directions
            )
            for pair, stat in zip(pairs, stats, strict=True)
        ]


def _context_length(model: Any, max_length: int | None) -> int:
    """The model's context or ``max_length``, whichever is smaller, in tokens."""
    limits = [getattr(model.config, "max_position_embeddings", None), max_length]
    return min((int(n) for n in limits if n), default=1 << 30)
