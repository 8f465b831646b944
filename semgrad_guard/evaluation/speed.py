"""The speed benchmark: what a score costs, against a plain forward pass, generation and sampling.

``semgrad-guard bench-speed --out DIR`` measures, on the scorer's model and device:

- latency (median of repeats) of the naive and fast passes and of the floor (one plain forward over prompt +
  answer without autograd) for several prompt lengths, with the peak memory each one adds;
- self-scoring: the fast pass reusing a generation's prompt cache, as a fraction of that generation's time;
- throughput of one shared scorer for several concurrent callers;
- the cost of K sampled answers (the sampling baselines) next to one score;
- a FLOP estimate of the fast pass over the machine's measured matmul rate, the floor no code can beat.

``SpeedConfig(shape=..., layers=...)`` (``--shape``) runs the same tables on a random-weight model with a
published architecture (:mod:`semgrad_guard.evaluation.shapes`) instead of a downloaded one.
:func:`run_shape_speed` (``--shape NAME --depths ...``) measures one shape at several reduced depths (and,
where memory allows, at its published depth), fits the depth cost model of
:mod:`semgrad_guard.evaluation.cost_model` and reports its error against the full-depth measurement.
``python -m semgrad_guard.evaluation.speed FOLDER... --out report.md`` recomputes the modelled columns of
stored shape runs and writes docs/performance.md's 7-8B tables (:func:`shapes_report`), loading no model.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from tqdm.auto import tqdm

from semgrad_guard.evaluation import cost_model
from semgrad_guard.evaluation.datasets import QAItem, qa_prompt
from semgrad_guard.evaluation.shapes import (
    PRESETS,
    embedded_tokenizer,
    preset,
    random_model,
    random_scorer,
    shallower,
    shape_profile,
)
from semgrad_guard.loading import resolve_device, resolve_dtype
from semgrad_guard.model_parts import num_layers, output_cache, prefix_from_cache
from semgrad_guard.pairs import EncodedPair
from semgrad_guard.prompts import ChatFormat
from semgrad_guard.scorer import SemGradScorer
from semgrad_guard.statistics import gradient_statistics

__all__ = [
    "ShapeSpeedConfig",
    "SpeedConfig",
    "rewrite_shape_results",
    "run_shape_speed",
    "run_speed",
    "shape_speed_markdown",
    "shapes_report",
    "speed_markdown",
]

Section = Literal["latency", "self_scoring", "throughput", "sampling"]
Measured = Literal["floor", "fast", "naive"]

_FILLER = (
    "The committee reviewed the quarterly figures, compared them with the forecast, noted where the "
    "regional offices had spent more than planned, and asked each office to explain its variance. "
)
_ANSWER = (
    "The report says the northern office spent more than planned because of a delayed contract, and the "
    "committee asked it to revise the forecast for the next quarter before the end of the month."
)


def _known_shape(name: str) -> str:
    preset(name)  # ValueError naming the presets
    return name


ShapeName = Annotated[str, AfterValidator(_known_shape)]


class SpeedConfig(BaseModel):
    """One speed benchmark run."""

    model_config = ConfigDict(frozen=True)

    out: Path
    model: str | None = Field(default=None, description="Model to measure (default: the embedded one).")
    device: str = "auto"
    dtype: str = "auto"
    prompt_lengths: tuple[int, ...] = (64, 256, 1024, 2048)
    answer_tokens: int = Field(default=32, ge=2)
    repeats: int = Field(default=5, ge=1)
    callers: tuple[int, ...] = (1, 4, 16)
    throughput_pairs: int = Field(default=48, ge=1)
    sampling_questions: int = Field(default=5, ge=1)
    samples: int = Field(default=10, ge=1)
    shape: ShapeName | None = Field(
        default=None,
        description="A preset of evaluation.shapes: random weights with that published architecture "
        "(instead of `model`); its scores mean nothing, its cost is the point.",
    )
    layers: int | None = Field(default=None, ge=2, description="Decoder layers of the shape (default: all).")
    sections: tuple[Section, ...] = ("latency", "self_scoring", "throughput", "sampling")

    @model_validator(mode="after")
    def _one_model(self) -> SpeedConfig:
        if self.shape is not None and self.model is not None:
            raise ValueError("give a model or a shape, not both")
        if self.layers is not None and self.shape is None:
            raise ValueError("layers applies to a shape only")
        return self


def _median_seconds(run: Callable[[], Any], repeats: int) -> float:
    run()  # warm-up: first-call allocations and kernel choices are not what a serving process pays
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _rss_kib(field: str) -> int:
    match = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(match.group(1)) if match else 0


def _peak_mib(run: Callable[[], Any], device: torch.device) -> float | None:
    """Memory the call adds at its peak: CUDA allocator stats, or on Linux the resident-set high-water mark.

    On CPU the freed heap is first handed back to the OS (``malloc_trim``) and the kernel's high-water
    mark reset (``/proc/self/clear_refs``), so the peak is measured from the resident size before the call.
    """
    return _timed_peak(run, device)[1]


def _timed_peak(run: Callable[[], Any], device: torch.device) -> tuple[float, float | None]:
    """Seconds of one call and the memory it adds at its peak (MiB; ``None`` where it cannot be read)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        run()
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        return seconds, (torch.cuda.max_memory_allocated(device) - before) / 2**20
    trim = None
    if device.type == "cpu" and Path("/proc/self/clear_refs").exists():
        try:
            trim = ctypes.CDLL("libc.so.6").malloc_trim
        except OSError:
            trim = None
    if trim is None:
        start = time.perf_counter()
        run()
        return time.perf_counter() - start, None
    trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = _rss_kib("VmRSS")
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    return seconds, (_rss_kib("VmHWM") - before) / 1024


def _matmul_rate(device: torch.device, dtype: torch.dtype) -> float:
    """Measured dense matmul throughput in FLOP/s (the best of a few square products)."""
    size = 2048
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)

    def product() -> None:
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    seconds = _median_seconds(product, 5)
    return float(2 * size**3 / seconds)


class _Shapes:
    """What the FLOP estimate needs from a model: per-layer matmul weights, width, vocabulary."""

    def __init__(self, model: Any) -> None:
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.layers = num_layers(model)
        self.width = int(config.hidden_size)
        self.vocab = int(model.get_output_embeddings().weight.shape[0])
        head = model.get_output_embeddings().weight
        embed = model.get_input_embeddings().weight
        matrices = [
            p.numel()
            for p in model.parameters()
            if p.dim() == 2 and p.data_ptr() not in (head.data_ptr(), embed.data_ptr())
        ]
        self.layer_weights: float = sum(matrices) / self.layers

    def attention(self, tokens: int, context_before: int, layers: float) -> float:
        """Score and mixing matmuls of ``tokens`` new positions attending after ``context_before``."""
        return layers * 4 * self.width * tokens * (context_before + (tokens + 1) / 2)

    def forward(self, tokens: int, context_before: int, layers: float) -> float:
        """Matmul FLOPs of ``tokens`` new positions through ``layers`` layers after ``context_before``."""
        return layers * 2 * self.layer_weights * tokens + self.attention(tokens, context_before, layers)

    def fast_pass(self, prompt: int, start: int, answer: int, lowest: int) -> float:
        """Prefix forward, graph forward over the tail, backward of its upper layers, and the head terms."""
        tail = prompt + answer - start
        upper = self.layers - lowest  # the graph starts at hidden state `lowest`: layers lowest .. L-1
        head = 2 * self.vocab * self.width * answer
        return (
            self.forward(start, 0, self.layers)
            + self.forward(tail, start, self.layers)
            # activation gradients only: one matmul per weight matmul, two per attention matmul
            + self.forward(tail, start, upper)
            + self.attention(tail, start, upper)
            + head  # logits
            + head  # d logits -> d hidden
            + 2 * head  # the two output-weight gradient means
        )

    def floor_pass(self, prompt: int, answer: int) -> float:
        """One plain forward over prompt + answer, logits at the answer positions only."""
        return self.forward(prompt + answer, 0, self.layers) + 2 * self.vocab * self.width * answer


def _prompt_ids(chat: ChatFormat, length: int) -> list[int]:
    """A chat-templated RAG-style prompt of exactly ``length`` tokens (context cut in the middle)."""
    ids = chat.encode_prompt(_FILLER * (length // 8 + 4) + "\nWhich office spent more than planned?")
    if len(ids) < length:
        raise ValueError(f"could not build a {length}-token prompt")
    cut = len(ids) - length
    return ids[:8] + ids[8 + cut :]


def _latency(scorer: SemGradScorer, config: SpeedConfig, device: torch.device) -> list[dict[str, Any]]:
    model, chat, profile = scorer.model, ChatFormat(scorer.tokenizer), scorer.profile
    layers = profile.layers
    assert layers is not None
    shapes = _Shapes(model)
    answer = [*chat.encode_answer(_ANSWER)[: config.answer_tokens - 1], chat.end_of_turn_id]
    rows = []
    for length in tqdm(config.prompt_lengths, desc="latency", unit="length"):
        prompt = _prompt_ids(chat, length)
        pair = EncodedPair(prompt, answer, length + profile.offset)
        ids = torch.tensor([prompt + answer], device=device)

        def floor(ids: torch.Tensor = ids) -> None:
            with torch.inference_mode():
                model(input_ids=ids, use_cache=False, logits_to_keep=len(answer))

        def naive(pair: EncodedPair = pair) -> None:
            gradient_statistics(model, [pair], layers, shapes.layers, "naive")

        def fast(pair: EncodedPair = pair) -> None:
            gradient_statistics(model, [pair], layers, shapes.layers, "fast")

        row: dict[str, Any] = {"prompt_tokens": length, "answer_tokens": len(answer)}
        for name, run in (("floor", floor), ("naive", naive), ("fast", fast)):
            row[f"{name}_s"] = _median_seconds(run, config.repeats)
            row[f"{name}_peak_mib"] = _peak_mib(run, device)
        row["fast_flops"] = shapes.fast_pass(length, pair.start, len(answer), min(layers))
        row["floor_flops"] = shapes.floor_pass(length, len(answer))
        rows.append(row)
    return rows


def _self_scoring(scorer: SemGradScorer, config: SpeedConfig, device: torch.device) -> list[dict[str, Any]]:
    """Greedy generation of a fixed-length answer, then the fast pass on the cache it left behind."""
    model, chat, profile = scorer.model, ChatFormat(scorer.tokenizer), scorer.profile
    scored = profile.layers
    assert scored is not None
    layers = num_layers(model)
    rows = []
    for length in tqdm(config.prompt_lengths, desc="self-scoring", unit="length"):
        ids = torch.tensor([_prompt_ids(chat, length)], device=device)
        generated: dict[str, Any] = {}

        def generate(ids: torch.Tensor = ids, generated: dict[str, Any] = generated) -> None:
            with torch.no_grad():
                generated["output"] = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=False,
                    max_new_tokens=config.answer_tokens,
                    min_new_tokens=config.answer_tokens,
                    pad_token_id=chat.end_of_turn_id,
                    return_dict_in_generate=True,
                )

        generation = _median_seconds(generate, config.repeats)
        output = generated["output"]
        answer = output.sequences[0, length:].tolist()
        pair = EncodedPair(ids[0].tolist(), answer, length + profile.offset)
        cached = EncodedPair(
            pair.prompt_ids, answer, pair.position, prefix_from_cache(output_cache(output), pair.start)
        )

        def self_score(pair: EncodedPair = cached) -> None:
            gradient_statistics(model, [pair], scored, layers)

        score = _median_seconds(self_score, 3)
        rows.append(
            {
                "prompt_tokens": length,
                "answer_tokens": len(answer),
                "generation_s": generation,
                "self_score_s": score,
                "cache_reused": cached.prefix is not None,
                "fraction": score / generation,
            }
        )
    return rows


def _questions(count: int) -> list[QAItem]:
    text = resources.files("semgrad_guard").joinpath("data/sps_default.jsonl").read_text(encoding="utf-8")
    return [QAItem.model_validate_json(line) for line in text.splitlines() if line.strip()][:count]


def _throughput(scorer: SemGradScorer, config: SpeedConfig) -> list[dict[str, Any]]:
    """Answers per second when ``n`` callers score short QA pairs on the one shared scorer at once.

    Beside it, the time of one pass over ``n`` of the same pairs (capped at ``batch_size``): what a shared
    pass costs on this device compared with ``n`` passes of one pair.
    """
    items = _questions(config.throughput_pairs)
    pairs = [(qa_prompt(item.question), item.answers[0]) for item in items]
    pairs = (pairs * (config.throughput_pairs // len(pairs) + 1))[: config.throughput_pairs]
    model, layers = scorer.model, scorer.profile.layers
    assert layers is not None
    encoded = [scorer._encode(prompt, answer) for prompt, answer in pairs]
    scorer.score(*pairs[0])  # warm-up
    rows = []
    for callers in tqdm(config.callers, desc="throughput", unit="setting"):
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=callers) as pool:
            scores = list(pool.map(lambda pair: scorer.score(*pair), pairs))
        seconds = time.perf_counter() - start
        together = encoded[: min(callers, scorer.config.batch_size)]

        def one_pass(together: list[EncodedPair] = together) -> None:
            gradient_statistics(model, together, layers, num_layers(model))

        rows.append(
            {
                "callers": callers,
                "pairs": len(pairs),
                "answers_per_s": len(pairs) / seconds,
                "reused": sum(score.reused for score in scores),  # 0: every answer paid for its pass
                "pass_pairs": len(together),
                "pass_s": _median_seconds(one_pass, 3),
            }
        )
    for row in rows:
        row["speedup"] = row["answers_per_s"] / rows[0]["answers_per_s"]
        row["pass_cost_vs_one"] = row["pass_s"] / rows[0]["pass_s"]
    return rows


def _sampling(scorer: SemGradScorer, config: SpeedConfig) -> dict[str, Any]:
    """Seconds per question for K sampled answers (sampling baselines) vs one greedy answer and its score."""
    sample_s, greedy_s, score_s = [], [], []
    for item in tqdm(_questions(config.sampling_questions), desc="sampling", unit="question"):
        prompt = qa_prompt(item.question)
        start = time.perf_counter()
        scorer.generate(
            prompt, n=config.samples, do_sample=True, temperature=1.0, top_p=0.9, max_new_tokens=32
        )
        sample_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        answer = scorer.generate(prompt, max_new_tokens=32)[0]
        greedy_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        scorer.score(prompt, answer or "none")
        score_s.append(time.perf_counter() - start)
    return {
        "questions": len(sample_s),
        "samples": config.samples,
        "sampling_s": statistics.mean(sample_s),
        "greedy_s": statistics.mean(greedy_s),
        "score_s": statistics.mean(score_s),
    }


def _machine(device: torch.device) -> dict[str, Any]:
    """What a run's timings depend on: platform, processor, cores, torch threads and version, GPU."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


def run_speed(config: SpeedConfig) -> dict[str, Any]:
    """Run every measurement and write ``speed.json`` and ``speed.md`` into ``config.out``."""
    torch.manual_seed(0)
    # No reuse of recent pairs' scores: the throughput rounds score the same pairs again, and must pay.
    if config.shape is not None:
        target = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, target)
        scorer = random_scorer(config.shape, layers=config.layers, dtype=dtype, device=target, reuse_size=0)
    else:
        scorer = SemGradScorer(
            config.model,
            device=config.device,
            dtype=config.dtype,  # type: ignore[arg-type]
            reuse_size=0,
        ).load()
    model = scorer.model
    parameter = model.get_input_embeddings().weight
    device, dtype = parameter.device, parameter.dtype
    rate = _matmul_rate(device, dtype)
    results: dict[str, Any] = {
        "model": scorer.model_name,
        "profile": scorer.profile.model_dump(mode="json"),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "machine": _machine(device),
        "matmul_flops_per_s": rate,
        "config": config.model_dump(mode="json"),
        "latency": _latency(scorer, config, device) if "latency" in config.sections else [],
        "self_scoring": _self_scoring(scorer, config, device) if "self_scoring" in config.sections else [],
        "throughput": _throughput(scorer, config) if "throughput" in config.sections else [],
        "sampling": _sampling(scorer, config) if "sampling" in config.sections else None,
    }
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "speed.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    (config.out / "speed.md").write_text(speed_markdown(results), encoding="utf-8")
    return results


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def speed_markdown(results: dict[str, Any]) -> str:
    """The tables of one run, as Markdown."""
    rate = results["matmul_flops_per_s"]
    machine = results["machine"]
    lines = [
        f"Model `{results['model']}` on {results['device']} ({results['dtype']}), "
        f"{machine['processor']}, {machine['cpus']} CPUs, {machine['torch_threads']} torch threads, "
        f"torch {machine['torch']}{', ' + machine['gpu'] if machine['gpu'] else ''}; "
        f"measured matmul rate {rate / 1e9:.1f} GFLOP/s.",
        "",
    ]
    if results["config"].get("shape"):
        lines += [
            f"Random weights with the published shape `{results['config']['shape']}`: the scores mean "
            "nothing, the cost is the point.",
            "",
        ]
    if results["latency"]:
        lines += _latency_markdown(results)
    if results["self_scoring"]:
        lines += _self_scoring_markdown(results)
    if results["throughput"]:
        lines += _throughput_markdown(results)
    if results["sampling"]:
        lines += _sampling_markdown(results)
    return "\n".join(lines)


def _latency_markdown(results: dict[str, Any]) -> list[str]:
    rate = results["matmul_flops_per_s"]
    lines = [
        "**Proxy scoring** (median seconds per score; peak = memory the call adds at its peak, MiB):",
        "",
        "| prompt | floor s | naive s | fast s | fast / floor | naive / fast | peak naive | peak fast "
        "| peak floor | naive / fast peak | FLOP floor s | fast / FLOP floor |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in results["latency"]:
        naive_peak, fast_peak = row["naive_peak_mib"], row["fast_peak_mib"]
        ratio = f"{naive_peak / fast_peak:.1f}x" if naive_peak and fast_peak else "n/a"
        flop_floor = row["fast_flops"] / rate
        lines.append(
            f"| {row['prompt_tokens']} | {row['floor_s']:.3f} | {row['naive_s']:.3f} | {row['fast_s']:.3f} "
            f"| {row['fast_s'] / row['floor_s']:.2f} | {row['naive_s'] / row['fast_s']:.2f} "
            f"| {_mib(naive_peak)} | {_mib(fast_peak)} | {_mib(row['floor_peak_mib'])} | {ratio} "
            f"| {flop_floor:.3f} | {row['fast_s'] / flop_floor:.1f} |"
        )
    return [*lines, ""]


def _self_scoring_markdown(results: dict[str, Any]) -> list[str]:
    lines = [
        "**Self-scoring** (the generation's prompt cache reused; greedy answer of a fixed length):",
        "",
        "| prompt | answer | generation s | score s | score / generation | cache reused |",
        "| ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for row in results["self_scoring"]:
        lines.append(
            f"| {row['prompt_tokens']} | {row['answer_tokens']} | {row['generation_s']:.3f} "
            f"| {row['self_score_s']:.3f} | {row['fraction']:.1%} "
            f"| {'yes' if row['cache_reused'] else 'no'} |"
        )
    return [*lines, ""]


def _throughput_markdown(results: dict[str, Any]) -> list[str]:
    lines = [
        "**Shared-scorer throughput** (short QA pairs, one scorer, N threads calling `score`; one pass over "
        "that many of the pairs, and its cost relative to a pass over one):",
        "",
        "| callers | pairs | answers/s | vs 1 caller | pairs in one pass | pass s | pass cost vs one pair |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in results["throughput"]:
        lines.append(
            f"| {row['callers']} | {row['pairs']} | {row['answers_per_s']:.1f} | {row['speedup']:.2f}x "
            f"| {row['pass_pairs']} | {row['pass_s']:.3f} | {row['pass_cost_vs_one']:.2f}x |"
        )
    return [*lines, ""]


def _sampling_markdown(results: dict[str, Any]) -> list[str]:
    sampling = results["sampling"]
    return [
        f"**Sampling baselines vs SemGrad** (mean over {sampling['questions']} QA questions, seconds per "
        "question):",
        "",
        f"| {sampling['samples']} sampled answers | one greedy answer | one SemGrad score "
        "| sampling / score |",
        "| ---: | ---: | ---: | ---: |",
        f"| {sampling['sampling_s']:.3f} | {sampling['greedy_s']:.3f} | {sampling['score_s']:.3f} "
        f"| {sampling['sampling_s'] / sampling['score_s']:.1f}x |",
        "",
    ]


# ------------------------------------------------------------------------------ published shapes, by depth
class ShapeSpeedConfig(BaseModel):
    """One shape measured at reduced depths (and at its published depth where memory allows)."""

    model_config = ConfigDict(frozen=True)

    out: Path
    shape: ShapeName = Field(description=f"A preset of evaluation.shapes: {', '.join(PRESETS)}.")
    depths: tuple[int, ...] = Field(default=(2, 4), description="Reduced depths the cost model is fitted on.")
    full_depth: bool = Field(
        default=False, description="Also measure at the published depth (the cost model's check)."
    )
    device: str = "cpu"
    dtype: str = "float32"
    prompt_lengths: tuple[int, ...] = (256, 1024)
    answer_tokens: int = Field(default=32, ge=2)
    modes: tuple[Measured, ...] = ("floor", "fast", "naive")
    repeats: int = Field(default=2, ge=1, description="Timed runs per setting, interleaved over depths.")
    memory_answer_tokens: tuple[int, ...] = Field(
        default=(), description="Further answer lengths for the memory sweep (fast and naive, one run each)."
    )
    memory_batch_sizes: tuple[int, ...] = Field(
        default=(), description="Further batch sizes (copies of the pair) for the memory sweep."
    )
    # The memory sweep runs at the shallowest and the deepest of `depths` only.
    seed: int = 0


def _probe_rate(device: torch.device, dtype: torch.dtype) -> float:
    """A short matmul probe (FLOP/s) beside each measurement: how busy the machine was at that moment."""
    size = 1024
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return float(2 * size**3 / min(times))


class _SavedBytes:
    """Bytes of the tensors autograd saves for backward during a call: each storage once, weights excluded."""

    def __init__(self, model: Any) -> None:
        self._weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self._seen: dict[int, int] = {}

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self._weights:
            self._seen.setdefault(storage.data_ptr(), storage.nbytes())
        return tensor

    def count(self, run: Callable[[], Any]) -> Callable[[], Any]:
        """``run`` with its saved tensors counted into :attr:`total`."""

        def counted() -> None:
            self._seen.clear()
            with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor):
                run()

        return counted

    @property
    def total(self) -> int:
        """Bytes saved during the last counted call."""
        return sum(self._seen.values())


def _answer_ids(chat: ChatFormat, tokens: int) -> list[int]:
    """An answer of exactly ``tokens`` tokens, end-of-turn included."""
    ids = chat.encode_answer(" ".join([_ANSWER] * (tokens // 30 + 1)))
    return [*ids[: tokens - 1], chat.end_of_turn_id]


def _runner(model: Any, mode: Measured, pairs: list[EncodedPair], depth: int, scored: tuple[int, ...]) -> Any:
    if mode == "floor":
        device = model.get_input_embeddings().weight.device
        ids = torch.tensor([pair.prompt_ids + pair.answer_ids for pair in pairs], device=device)
        answer = len(pairs[0].answer_ids)

        def floor() -> None:
            with torch.inference_mode():
                model(input_ids=ids, use_cache=False, logits_to_keep=answer)

        return floor

    def scored_pass() -> None:
        gradient_statistics(model, pairs, scored, depth, mode)

    return scored_pass


def _mmap_threshold(device: torch.device, nbytes: int) -> None:
    """Set glibc's mmap threshold (CPU only; a no-op elsewhere or without glibc).

    Memory runs use 1 MiB: every sizeable tensor is then its own mapping, returned to the OS when freed, so
    the resident-set high-water mark is the peak of live tensor bytes (what a CUDA allocator's
    ``max_memory_allocated`` reports) instead of that plus heap fragmentation, which moved repeated CPU
    peaks by hundreds of MiB. Timing runs use 32 MiB, where glibc's own dynamic threshold settles.
    """
    if device.type != "cpu":
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, nbytes)  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return


def run_shape_speed(config: ShapeSpeedConfig) -> dict[str, Any]:
    """Measure one shape at reduced depths, fit the depth cost model, check it at full depth if asked.

    Depths are views of one model (:func:`~semgrad_guard.evaluation.shapes.shallower`). For each prompt
    length: a warm-up, one memory run per depth and mode (peak memory, saved tensors counted), then
    ``repeats`` timing rounds, each measuring every depth and mode in turn, so that a busy machine's changing
    speed hits every depth alike. The fit uses the fastest of the timing runs (the least disturbed by other
    processes); medians and spreads are kept beside it. A short matmul probe beside each run records how
    busy the machine was. Writes ``shape.json`` and ``shape.md`` into ``config.out``.
    """
    spec = preset(config.shape)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    tokenizer = embedded_tokenizer()
    chat = ChatFormat(tokenizer)
    vocab = max(spec.vocab_size, len(tokenizer))
    profile = shape_profile(spec)
    depths = sorted(set(config.depths))
    measured = [*depths, spec.num_hidden_layers] if config.full_depth else depths
    measured = sorted(set(measured))
    build_start = time.perf_counter()
    model = random_model(
        spec, layers=max(measured), vocab_size=vocab, dtype=dtype, device=device, seed=config.seed
    )
    build_s = time.perf_counter() - build_start
    models = {depth: model if depth == max(measured) else shallower(model, depth) for depth in measured}
    element = torch.empty((), dtype=dtype).element_size()
    counter = _SavedBytes(model)
    rows: list[dict[str, Any]] = []

    def measure(depth: int, mode: Measured, pairs: list[EncodedPair], memory: bool) -> dict[str, Any]:
        run = _runner(models[depth], mode, pairs, depth, profile.layer_indices(depth))
        _mmap_threshold(device, 1 << 20 if memory else 32 << 20)
        rate = _probe_rate(device, dtype)
        cpu_start = time.process_time()
        seconds, peak = _timed_peak(counter.count(run) if memory and mode != "floor" else run, device)
        cpu_seconds = time.process_time() - cpu_start
        prompt, answer = len(pairs[0].prompt_ids), len(pairs[0].answer_ids)
        row: dict[str, Any] = {
            "kind": "memory" if memory else "timing",
            "depth": depth,
            "mode": mode,
            "prompt_tokens": prompt,
            "answer_tokens": answer,
            "batch": len(pairs),
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "peak_mib": peak,
            "probe_flops_per_s": rate,
            "kv_cache_mib": cost_model.mib(
                cost_model.kv_cache_bytes(spec, depth, prompt, len(pairs), element)
            ),
        }
        if memory and mode != "floor":
            row["saved_mib"] = counter.total / 2**20
        return row

    def pairs_for(length: int, answer_tokens: int, batch: int) -> list[EncodedPair]:
        prompt = _prompt_ids(chat, length)
        return [EncodedPair(prompt, _answer_ids(chat, answer_tokens), length + profile.offset)] * batch

    total = len(config.prompt_lengths) * (1 + (1 + config.repeats) * len(measured)) * len(config.modes)
    with tqdm(total=total, desc=f"{spec.name} latency", unit="run") as progress:
        for length in config.prompt_lengths:
            pairs = pairs_for(length, config.answer_tokens, 1)
            for mode in config.modes:  # warm-up on the shallowest view: the same kernels at the same widths
                _runner(models[depths[0]], mode, pairs, depths[0], profile.layer_indices(depths[0]))()
                progress.update()
            for repeat in range(-1, config.repeats):  # -1: the memory run
                for depth in measured:
                    for mode in config.modes:
                        rows.append({"repeat": repeat, **measure(depth, mode, pairs, memory=repeat < 0)})
                        progress.update()
    sweep: list[dict[str, Any]] = []
    grid = [(answer, 1) for answer in config.memory_answer_tokens]
    grid += [(config.answer_tokens, batch) for batch in config.memory_batch_sizes]
    for length in tqdm(config.prompt_lengths if grid else (), desc=f"{spec.name} memory", unit="length"):
        for answer, batch in grid:
            for depth in sorted({depths[0], depths[-1]}):
                for mode in ("fast", "naive"):
                    if mode in config.modes:
                        sweep.append(measure(depth, mode, pairs_for(length, answer, batch), memory=True))
    _mmap_threshold(device, 32 << 20)
    results: dict[str, Any] = {
        "shape": spec.model_dump(mode="json"),
        "built_vocab": vocab,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "machine": {
            **_machine(device),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "build_s": build_s,
        "config": config.model_dump(mode="json"),
        "rows": rows,
        "memory_sweep": sweep,
    }
    config.out.mkdir(parents=True, exist_ok=True)
    return _model_and_write(config.out, results)


def rewrite_shape_results(folder: Path) -> dict[str, Any]:
    """Recompute a run's modelled columns, summary and fits from its raw rows; rewrite its json and md.

    For runs made before a change to :mod:`~semgrad_guard.evaluation.cost_model`: the measurements stay,
    the model's columns follow the current code.
    """
    results = json.loads((Path(folder) / "shape.json").read_text(encoding="utf-8"))
    return _model_and_write(Path(folder), results)


def _model_and_write(folder: Path, results: dict[str, Any]) -> dict[str, Any]:
    """Add the cost model's memory to each memory row, the summary and the depth fits; write json and md."""
    spec = preset(results["shape"]["name"])
    element = getattr(torch, results["dtype"]).itemsize
    for row in [*results["rows"], *results["memory_sweep"]]:
        if row["kind"] == "memory" and row["mode"] != "floor":
            sizes: dict[str, Any] = {
                "layers": row["depth"],
                "prompt": row["prompt_tokens"],
                "answer": row["answer_tokens"],
                "batch": row["batch"],
                "vocab": results["built_vocab"],
                "s": element,
            }
            row["peak_model_mib"] = cost_model.mib(cost_model.peak_bytes(spec, row["mode"], **sizes))
            row["saved_formula_mib"] = cost_model.mib(cost_model.graph_bytes(spec, row["mode"], **sizes))
    results["summary"] = _shape_summary(results)
    results["fits"] = _shape_fits(results)
    (folder / "shape.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    (folder / "shape.md").write_text(shape_speed_markdown(results), encoding="utf-8")
    return results


def _shape_summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (prompt, depth, mode): fastest and median timing run, the memory run's peak and counts."""
    groups: dict[tuple[int, int, str], list[dict[str, Any]]] = {}
    for row in results["rows"]:
        groups.setdefault((row["prompt_tokens"], row["depth"], row["mode"]), []).append(row)
    summary = []
    for (prompt, depth, mode), rows in sorted(groups.items()):
        timing = [row for row in rows if row["kind"] == "timing"] or rows
        memory = next((row for row in rows if row["kind"] == "memory"), rows[0])
        seconds = [row["seconds"] for row in timing]
        summary.append(
            {
                "prompt_tokens": prompt,
                "depth": depth,
                "mode": mode,
                "answer_tokens": rows[0]["answer_tokens"],
                "runs": len(timing),
                "seconds": min(seconds),
                "seconds_median": statistics.median(seconds),
                "seconds_spread": (max(seconds) - min(seconds)) / min(seconds),
                "cpu_seconds": min(row["cpu_seconds"] for row in timing),
                "peak_mib": memory["peak_mib"],
                "peak_model_mib": memory.get("peak_model_mib"),
                "saved_mib": memory.get("saved_mib"),
                "saved_formula_mib": memory.get("saved_formula_mib"),
                "kv_cache_mib": memory["kv_cache_mib"],
                "probe_gflops": [row["probe_flops_per_s"] / 1e9 for row in rows],
            }
        )
    return summary


def _shape_fits(results: dict[str, Any], depths: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Per (prompt, mode): the depth fits of seconds, predicted at the published depth.

    (Peak memory is not linear in depth: the fast pass's peak is the larger of a depth-independent prompt
    phase and its graph phase. It is modelled by ``cost_model.peak_bytes`` instead.)

    Seconds are fitted three ways: the fastest timing run (the primary fit), the median one, and process
    CPU seconds (less sensitive to other processes than wall time). Where the published depth was measured
    too, each prediction's error is added. ``depths``: fit on these measured depths only (default: all the
    reduced ones).
    """
    full = int(results["shape"]["num_hidden_layers"])
    depths = sorted(set(depths or results["config"]["depths"]))
    by_key = {(row["prompt_tokens"], row["depth"], row["mode"]): row for row in results["summary"]}
    fits = []
    for prompt in results["config"]["prompt_lengths"]:
        for mode in results["config"]["modes"]:
            rows = [by_key[(prompt, depth, mode)] for depth in depths]
            measured = by_key.get((prompt, full, mode)) if full not in depths else None
            fit: dict[str, Any] = {"prompt_tokens": prompt, "mode": mode, "depths": depths}
            for field in ("seconds", "seconds_median", "cpu_seconds"):
                values = [row[field] for row in rows]
                if any(value is None for value in values):
                    fit[field] = None
                    continue
                line = cost_model.fit_depths(depths, values)
                value = None if measured is None else measured[field]
                fit[field] = {
                    "a": line.a,
                    "per_layer": line.b,
                    "max_residual": line.max_residual,
                    "predicted": line(full),
                    "measured": value,
                    "error": None if value is None else cost_model.relative_error(line(full), value),
                }
            fits.append(fit)
    return fits


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.0%}"


def _num(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def shape_speed_markdown(results: dict[str, Any]) -> str:
    """The tables of one :func:`run_shape_speed` run, as Markdown."""
    shape, machine, config = results["shape"], results["machine"], results["config"]
    probes = [gflops for row in results["summary"] for gflops in row["probe_gflops"]]
    lines = [
        f"Shape `{shape['name']}` ({shape['source']}: hidden {shape['hidden_size']}, "
        f"{shape['num_attention_heads']} heads / {shape['num_key_value_heads']} KV heads, feed-forward "
        f"{shape['intermediate_size']}, vocabulary {shape['vocab_size']} (built {results['built_vocab']}), "
        f"{shape['num_hidden_layers']} layers), random weights, on {results['device']} ({results['dtype']}), "
        f"{machine['processor']}, {machine['cpus']} CPUs, {machine['torch_threads']} torch threads, "
        f"torch {machine['torch']}. A 1024x1024 matmul probe beside each run read "
        f"{min(probes):.0f}-{max(probes):.0f} GFLOP/s: a busy, shared machine, so seconds are noisy.",
        "",
        f"**Measured** (answer {config['answer_tokens']} tokens, batch 1. Seconds: the fastest of "
        f"{config['repeats']} timing runs interleaved over depths, the median, and (max - min) / min; CPU s: "
        "the process's CPU seconds in the fastest. Peak: memory the call adds, MiB, from a separate memory "
        "run (1 MiB mmap threshold), and as `cost_model.peak_bytes` models it. Saved: what autograd keeps "
        "for the backward, counted, and by `cost_model.graph_bytes`. KV: one copy of the prompt's key/value "
        "cache):",
        "",
        "| prompt | depth | mode | seconds | median | spread | CPU s | peak MiB | model MiB | saved MiB "
        "| formula MiB | KV MiB |",
        "| ---: | ---: | :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in results["summary"]:
        lines.append(
            f"| {row['prompt_tokens']} | {row['depth']} | {row['mode']} | {row['seconds']:.2f} "
            f"| {row['seconds_median']:.2f} | {row['seconds_spread']:.0%} | {row['cpu_seconds']:.1f} "
            f"| {_mib(row['peak_mib'])} | {_num(row.get('peak_model_mib'), 0)} | {_num(row['saved_mib'], 1)} "
            f"| {_num(row['saved_formula_mib'], 1)} | {row['kv_cache_mib']:.1f} |"
        )
    depths = ", ".join(map(str, sorted(set(config["depths"]))))
    lines += [
        "",
        f"**Depth cost model** (seconds = a + b x layers, least squares over depths {depths}; predicted at "
        f"the published {shape['num_hidden_layers']} layers; error = predicted / measured - 1, where "
        "measured; the median and CPU-seconds columns are the same fit on those measures):",
        "",
        "| prompt | mode | a s | b s/layer | largest residual s | predicted s | measured s | error "
        "| error (median) | error (CPU s) |",
        "| ---: | :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for fit in results["fits"]:
        seconds, median, cpu = fit["seconds"], fit["seconds_median"], fit["cpu_seconds"]
        lines.append(
            f"| {fit['prompt_tokens']} | {fit['mode']} | {seconds['a']:.2f} | {seconds['per_layer']:.3f} "
            f"| {seconds['max_residual']:.2f} | {seconds['predicted']:.1f} | {_num(seconds['measured'], 2)} "
            f"| {_pct(seconds['error'])} | {_pct(median['error'])} | {_pct(cpu['error'])} |"
        )
    if results["memory_sweep"]:
        lines += [
            "",
            "**Memory sweep** (one memory run each; peak = memory the call adds, MiB):",
            "",
            "| prompt | answer | batch | depth | mode | seconds | peak MiB | model MiB | saved MiB "
            "| formula MiB | KV MiB |",
            "| ---: | ---: | ---: | ---: | :--- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in results["memory_sweep"]:
            lines.append(
                f"| {row['prompt_tokens']} | {row['answer_tokens']} | {row['batch']} | {row['depth']} "
                f"| {row['mode']} | {row['seconds']:.2f} | {_mib(row['peak_mib'])} "
                f"| {_num(row.get('peak_model_mib'), 0)} | {row['saved_mib']:.1f} "
                f"| {row['saved_formula_mib']:.1f} | {row['kv_cache_mib']:.1f} |"
            )
    return "\n".join([*lines, ""])


# The GPU sizing rows of the report: (prompt, answer, batch), modelled in bfloat16.
_SIZING = ((1024, 32, 1), (4096, 32, 1), (8192, 256, 1), (4096, 32, 8))


def shapes_report(folders: Sequence[Path], *, check_depths: Sequence[int] = (2, 4)) -> str:
    """The tables of docs/performance.md's 7-8B section, from :func:`run_shape_speed` result folders.

    Measured rows come from the runs; modelled rows from their depth fits (time, this CPU) and from
    :func:`~semgrad_guard.evaluation.cost_model.peak_bytes` (memory). Where a run measured its published
    depth, the time model is refitted on ``check_depths`` alone (what the 7-8B runs could measure) and its
    error reported beside the fit on all reduced depths. Timings of a (preset, prompt, depth) come from the
    first folder that measured it: a later folder (a memory sweep) adds only what earlier ones lack.
    """
    runs = [json.loads((Path(folder) / "shape.json").read_text(encoding="utf-8")) for folder in folders]
    return "\n".join(
        [
            *_presets_table(),
            *_measured_table(runs),
            *_time_checks_table(runs, check_depths),
            *_memory_table(runs),
            *_cpu_model_table(runs),
            *_gpu_sizing_table(),
        ]
    )


def _presets_table() -> list[str]:
    lines = [
        "**Presets** (random weights, the published numbers of each config.json; `built vocab` = what the "
        "scorer's SmolLM2 tokenizer needs, max(published, 49152)):",
        "",
        "| preset | source | hidden | heads / KV | feed-forward | vocab (built) | layers | parameters "
        "| bf16 weights GiB |",
        "| :--- | :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, spec in PRESETS.items():
        vocab = max(spec.vocab_size, 49152)
        lines.append(
            f"| {name} | {spec.source} | {spec.hidden_size} | {spec.num_attention_heads} / "
            f"{spec.num_key_value_heads} | {spec.intermediate_size} | {spec.vocab_size} ({vocab}) "
            f"| {spec.num_hidden_layers} | {spec.parameters() / 1e9:.2f}B "
            f"| {cost_model.weight_bytes(spec, s=2) / 2**30:.1f} |"
        )
    return [*lines, ""]


def _measured_table(runs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "**Measured on this CPU** (float32, batch 1, 32-token answer; seconds = the fastest of the timing "
        "runs; CPU s = the process's CPU seconds in the fastest fast pass; peak = memory the call adds above "
        "the weights, MiB):",
        "",
        "| preset | prompt | depth | runs | floor s | fast s | naive s | fast CPU s | fast / floor "
        "| naive / fast | peak fast | peak naive |",
        "| :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    shown: set[tuple[str, int, int]] = set()
    for run in runs:
        name = run["shape"]["name"]
        by_key = {(row["prompt_tokens"], row["depth"], row["mode"]): row for row in run["summary"]}
        for prompt, depth in sorted({(row["prompt_tokens"], row["depth"]) for row in run["summary"]}):
            if (name, prompt, depth) in shown:
                continue
            shown.add((name, prompt, depth))
            cells = {mode: by_key.get((prompt, depth, mode)) for mode in ("floor", "fast", "naive")}
            floor, fast, naive = (row["seconds"] if row else None for row in cells.values())
            lines.append(
                f"| {name} | {prompt} | {depth} | {run['config']['repeats']} | {_num(floor, 2)} "
                f"| {_num(fast, 2)} | {_num(naive, 2)} "
                f"| {_num(cells['fast'] and cells['fast']['cpu_seconds'], 1)} "
                f"| {_num(fast / floor if fast and floor else None, 2)} "
                f"| {_num(naive / fast if naive and fast else None, 2)} "
                f"| {_num(cells['fast'] and cells['fast']['peak_mib'], 0)} "
                f"| {_num(cells['naive'] and cells['naive']['peak_mib'], 0)} |"
            )
    return [*lines, ""]


def _time_checks_table(runs: list[dict[str, Any]], check_depths: Sequence[int]) -> list[str]:
    checks = []
    for run in runs:
        full = run["shape"]["num_hidden_layers"]
        if not run["config"]["full_depth"]:
            continue
        for fit, small in zip(run["fits"], _shape_fits(run, check_depths), strict=True):
            seconds, cpu, small_seconds = fit["seconds"], fit["cpu_seconds"], small["seconds"]
            checks.append(
                f"| {run['shape']['name']} | {fit['prompt_tokens']} | {fit['mode']} | {full} "
                f"| {', '.join(map(str, fit['depths']))} | {seconds['predicted']:.1f} "
                f"| {seconds['measured']:.1f} | {_pct(seconds['error'])} | {_pct(cpu['error'])} "
                f"| {small_seconds['predicted']:.1f} | {_pct(small_seconds['error'])} "
                f"| {_pct(small['cpu_seconds']['error'])} |"
            )
    if not checks:
        return []
    depths = ", ".join(map(str, check_depths))
    return [
        "**The time model against full-depth measurements** (seconds = a + b x layers, least squares over "
        f"the fit depths and over depths {depths} alone; error = modelled / measured - 1, on the fastest "
        "run's seconds and on its CPU seconds):",
        "",
        "| preset | prompt | mode | layers | fit depths | modelled s | measured s | error | error (CPU s) "
        f"| modelled s ({depths}) | error | error (CPU s) |",
        "| :--- | ---: | :--- | ---: | :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *checks,
        "",
    ]


def _memory_table(runs: list[dict[str, Any]]) -> list[str]:
    """Measured against modelled peaks (each run's deepest rows, every sweep row) and the error range."""
    lines = [
        "**Peak memory, measured and modelled** (memory the pass adds above the weights, MiB, float32 "
        "on this CPU; modelled = `cost_model.peak_bytes`; saved = what autograd keeps, counted, and "
        "formula = `cost_model.graph_bytes`; each run's deepest depth and every row of the answer-length "
        "and batch sweeps):",
        "",
        "| preset | depth | prompt | answer | batch | mode | measured | modelled | error | saved "
        "| formula | KV cache |",
        "| :--- | ---: | ---: | ---: | ---: | :--- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    errors = []
    for run in runs:
        memory = [row for row in run["rows"] if row["kind"] == "memory" and row["mode"] != "floor"]
        deepest = max(row["depth"] for row in memory)
        for row in [*memory, *run["memory_sweep"]]:
            error = row["peak_model_mib"] / row["peak_mib"] - 1
            errors.append(error)
            if row in run["memory_sweep"] or row["depth"] == deepest:
                lines.append(
                    f"| {run['shape']['name']} | {row['depth']} | {row['prompt_tokens']} "
                    f"| {row['answer_tokens']} | {row['batch']} | {row['mode']} | {row['peak_mib']:.0f} "
                    f"| {row['peak_model_mib']:.0f} | {_pct(error)} | {row['saved_mib']:.1f} "
                    f"| {row['saved_formula_mib']:.1f} | {row['kv_cache_mib']:.0f} |"
                )
    lines += [
        "",
        f"Over all {len(errors)} memory runs of these folders (every depth), the modelled peak is "
        f"{_pct(min(errors))} to {_pct(max(errors))} off the measured one "
        f"(median {_pct(statistics.median(errors))}).",
        "",
    ]
    return lines


def _cpu_model_table(runs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "**Modelled at full depth on this CPU** (float32, batch 1, 32-token answer; seconds from each run's "
        "depth fit, peak from `cost_model.peak_bytes` above the weights):",
        "",
        "| preset | prompt | layers | fit depths | floor s | fast s | naive s | fast / floor | naive / fast "
        "| weights GiB | peak fast GiB | peak naive GiB |",
        "| :--- | ---: | ---: | :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    shown: set[tuple[str, int]] = set()
    for run in runs:
        spec = preset(run["shape"]["name"])
        for prompt in run["config"]["prompt_lengths"]:
            if (spec.name, prompt) in shown:
                continue
            shown.add((spec.name, prompt))
            fits = {fit["mode"]: fit for fit in run["fits"] if fit["prompt_tokens"] == prompt}
            floor, fast, naive = (
                fits[mode]["seconds"]["predicted"] if mode in fits else None
                for mode in ("floor", "fast", "naive")
            )
            fast_peak, naive_peak = (
                cost_model.peak_bytes(
                    spec,
                    mode,
                    layers=spec.num_hidden_layers,
                    prompt=prompt,
                    answer=run["config"]["answer_tokens"],
                    vocab=run["built_vocab"],
                )
                / 2**30
                for mode in ("fast", "naive")
            )
            lines.append(
                f"| {spec.name} | {prompt} | {spec.num_hidden_layers} "
                f"| {', '.join(map(str, sorted(set(run['config']['depths']))))} | {_num(floor, 1)} "
                f"| {_num(fast, 1)} | {_num(naive, 1)} | {_num(fast / floor if fast and floor else None, 2)} "
                f"| {_num(naive / fast if naive and fast else None, 2)} "
                f"| {cost_model.weight_bytes(spec, vocab=run['built_vocab']) / 2**30:.1f} "
                f"| {fast_peak:.2f} | {naive_peak:.2f} |"
            )
    return [*lines, ""]


def _gpu_sizing_table() -> list[str]:
    lines = [
        "**Modelled GPU sizing, bfloat16 (not measured: no GPU was lent to this task)**: the weights plus "
        "the peak of `cost_model.peak_bytes` at the published vocabulary (logits and statistics in float32), "
        "GiB; TFLOP = the matmul work of one fast pass (`cost_model.fast_pass_flops`), not a time:",
        "",
        "| preset | prompt | answer | batch | weights | fast peak | naive peak | weights + fast "
        "| weights + naive | fast TFLOP / pair |",
        "| :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in ("qwen2.5-7b", "llama-3.1-8b", "mistral-7b"):
        spec = PRESETS[name]
        weights = cost_model.weight_bytes(spec, s=2) / 2**30
        for prompt, answer, batch in _SIZING:
            fast, naive = (
                cost_model.peak_bytes(
                    spec, mode, layers=spec.num_hidden_layers, prompt=prompt, answer=answer, batch=batch, s=2
                )
                / 2**30
                for mode in ("fast", "naive")
            )
            flops = cost_model.fast_pass_flops(
                spec, layers=spec.num_hidden_layers, prompt=prompt, answer=answer
            )
            lines.append(
                f"| {name} | {prompt} | {answer} | {batch} | {weights:.1f} | {fast:.2f} | {naive:.2f} "
                f"| {weights + fast:.1f} | {weights + naive:.1f} | {flops / 1e12:.1f} |"
            )
    return [*lines, ""]


def main(argv: Sequence[str] | None = None) -> None:
    """Rewrite shape runs' modelled columns from their stored rows and write the 7-8B report."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("folders", nargs="+", type=Path, help="bench-speed --depths output folders")
    parser.add_argument("--out", type=Path, required=True, help="Markdown file for the report's tables")
    args = parser.parse_args(argv)
    for folder in args.folders:
        rewrite_shape_results(folder)
    args.out.write_text(shapes_report(args.folders), encoding="utf-8")


if __name__ == "__main__":
    main()
