"""The speed benchmark: what a score costs, against a plain forward pass, generation and sampling.

``semgrad-guard bench-speed --out DIR`` measures, on the scorer's model and device:

- latency (median of repeats) of the naive and fast passes and of the floor (one plain forward over prompt +
  answer without autograd) for several prompt lengths, with the peak memory each one adds;
- self-scoring: the fast pass reusing a generation's prompt cache, as a fraction of that generation's time;
- throughput of one shared scorer for several concurrent callers;
- the cost of K sampled answers (the sampling baselines) next to one score;
- a FLOP estimate of the fast pass over the machine's measured matmul rate, the floor no code can beat.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from semgrad_guard.evaluation.datasets import QAItem, qa_prompt
from semgrad_guard.model_parts import num_layers, output_cache, prefix_from_cache
from semgrad_guard.pairs import EncodedPair
from semgrad_guard.prompts import ChatFormat
from semgrad_guard.scorer import SemGradScorer
from semgrad_guard.statistics import gradient_statistics

__all__ = ["SpeedConfig", "run_speed", "speed_markdown"]

_FILLER = (
    "The committee reviewed the quarterly figures, compared them with the forecast, noted where the "
    "regional offices had spent more than planned, and asked each office to explain its variance. "
)
_ANSWER = (
    "The report says the northern office spent more than planned because of a delayed contract, and the "
    "committee asked it to revise the forecast for the next quarter before the end of the month."
)


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
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    if device.type != "cpu" or not Path("/proc/self/clear_refs").exists():
        return None
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except OSError:
        return None
    trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = _rss_kib("VmRSS")
    run()
    return (_rss_kib("VmHWM") - before) / 1024


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
        upper = self.layers - lowest + 1
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
            list(pool.map(lambda pair: scorer.score(*pair), pairs))
        seconds = time.perf_counter() - start
        together = encoded[: min(callers, scorer.config.batch_size)]

        def one_pass(together: list[EncodedPair] = together) -> None:
            gradient_statistics(model, together, layers, num_layers(model))

        rows.append(
            {
                "callers": callers,
                "pairs": len(pairs),
                "answers_per_s": len(pairs) / seconds,
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


def run_speed(config: SpeedConfig) -> dict[str, Any]:
    """Run every measurement and write ``speed.json`` and ``speed.md`` into ``config.out``."""
    torch.manual_seed(0)
    scorer = SemGradScorer(config.model, device=config.device, dtype=config.dtype).load()  # type: ignore[arg-type]
    model = scorer.model
    parameter = model.get_input_embeddings().weight
    device, dtype = parameter.device, parameter.dtype
    rate = _matmul_rate(device, dtype)
    results: dict[str, Any] = {
        "model": scorer.model_name,
        "profile": scorer.profile.model_dump(mode="json"),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },
        "matmul_flops_per_s": rate,
        "config": config.model_dump(mode="json"),
        "latency": _latency(scorer, config, device),
        "self_scoring": _self_scoring(scorer, config, device),
        "throughput": _throughput(scorer, config),
        "sampling": _sampling(scorer, config),
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
    lines += [
        "",
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
    lines += [
        "",
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
    sampling = results["sampling"]
    lines += [
        "",
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
    return "\n".join(lines)
