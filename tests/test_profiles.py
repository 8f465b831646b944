"""Built-in profiles, the template rule, JSON round trips, and the position on real prompts."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from semgrad_guard import ModelProfile, SemGradScorer
from semgrad_guard.profiles import resolve_profile

LLAMA3 = "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>' }}"
CHATML = "{{ '<|im_start|>' + message['role'] }}"


def fake(model_type: str, template: str) -> tuple[Any, Any]:
    return SimpleNamespace(config=SimpleNamespace(model_type=model_type)), SimpleNamespace(
        chat_template=template
    )


@pytest.mark.parametrize(
    ("name", "model_type", "template", "family", "offset"),
    [
        ("meta-llama/Llama-3.1-8B-Instruct", "llama", LLAMA3, "llama-3", -4),
        ("Qwen/Qwen2.5-7B-Instruct", "qwen2", CHATML, "qwen", -3),
        ("Qwen/Qwen3-8B", "qwen3", CHATML, "qwen", -3),
        ("mistralai/Mistral-7B-Instruct-v0.3", "mistral", "[INST]", "mistral", -2),
        ("HuggingFaceTB/SmolLM2-360M-Instruct", "llama", CHATML, "smollm2", -4),
    ],
)
def test_builtin_profiles(name: str, model_type: str, template: str, family: str, offset: int) -> None:
    profile = resolve_profile(*fake(model_type, template), name)
    assert (profile.name, profile.offset) == (family, offset)


def test_unknown_model_falls_back_to_template_rule_with_warning(
    make_tiny: Callable[..., SemGradScorer], caplog: Any
) -> None:
    with caplog.at_level(logging.WARNING):
        profile = make_tiny().profile
    assert "template rule" in caplog.text
    # SmolLM2's generation prompt is <|im_start|> ass istant \n: its first token is 4 from the end.
    assert (profile.offset, profile.anchor, profile.source) == (-4, "<|im_start|>", "template-rule")
    assert profile.layers == (2, 3)  # last half of 4 layers, final-norm state excluded


@pytest.mark.slow
def test_embedded_profile_lands_on_assistant_header_for_real_prompts(embedded: SemGradScorer) -> None:
    prompts: list[Any] = [
        "Q?",
        "A much longer question that goes on and on about many things before it finally asks what it wants?",
        [
            {"role": "system", "content": "Use this context.\n\nDoc 1: ...\nDoc 2: ..."},
            {"role": "user", "content": "Q?"},
        ],
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Q?"},
        ],
    ]
    for prompt in prompts:
        score = embedded.score(prompt, "Yes")
        ids = embedded._ready()[1].encode_prompt(prompt)
        assert embedded.tokenizer.convert_ids_to_tokens(ids[score.position]) == "<|im_start|>"
        assert score.position == len(ids) - 4


def test_profile_json_round_trip(tmp_path: Path, make_tiny: Callable[..., SemGradScorer]) -> None:
    profile = ModelProfile(name="mine", offset=-3, layers=(3, 1, 1), anchor="<|im_start|>")
    assert profile.layers == (1, 3)
    profile.save(tmp_path / "p.json")
    assert ModelProfile.load(tmp_path / "p.json") == profile
    scorer = make_tiny(profile=tmp_path / "p.json")
    assert scorer.profile.layers == (1, 3)


@pytest.mark.parametrize(
    "bad", [{"offset": 0}, {"offset": 2}, {"offset": -1, "layers": ()}, {"offset": -1, "layers": (-1,)}]
)
def test_invalid_profiles_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ModelProfile(name="bad", **bad)


def test_layer_beyond_model_rejected(make_tiny: Callable[..., SemGradScorer]) -> None:
    with pytest.raises(ValueError, match="final-norm"):
        make_tiny(profile=ModelProfile(name="deep", offset=-4, layers=(4,))).load()


def test_embedding_layer_can_be_scored(make_tiny: Callable[..., SemGradScorer]) -> None:
    score = make_tiny(profile=ModelProfile(name="h0", offset=-4, layers=(0,))).score("Hi?", "Hello")
    assert score.semgrad is not None and score.semgrad > 0
