"""Package-level guarantees: the exported names, and a core that never imports LangChain or LlamaIndex."""

from __future__ import annotations

import ast
from pathlib import Path

import semgrad_guard

EXPECTED_ALL = [
    "BatchingConfig",
    "CalibrationBundle",
    "ChatTemplateError",
    "EmptyAnswerError",
    "InputTooLongError",
    "InvalidInputError",
    "ModelLoadError",
    "ErrorMode",
    "ModelProfile",
    "NoThresholdError",
    "NonFiniteScoreError",
    "ProfileMismatchError",
    "Prompt",
    "RawField",
    "Score",
    "ScoredGeneration",
    "Scorer",
    "ScorerBusyError",
    "ScorerConfig",
    "ScorerOutOfMemoryError",
    "SemGradError",
    "SemGradScorer",
    "__version__",
    "default_scorer",
    "set_default_scorer",
]


def test_all_is_pinned() -> None:
    assert sorted(semgrad_guard.__all__) == sorted(EXPECTED_ALL)


def test_core_never_imports_langchain_or_llama_index() -> None:
    banned = ("langchain", "llama_index")
    for path in Path(semgrad_guard.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n.split(".")[0].startswith(banned) for n in names), f"{path.name} imports {names}"


def test_score_is_json_serialisable(make_tiny) -> None:  # type: ignore[no-untyped-def]
    score = make_tiny().score("Hi?", "Hello")
    assert semgrad_guard.Score.model_validate_json(score.model_dump_json()) == score


def test_default_scorer_is_shared_and_replaceable(make_tiny) -> None:  # type: ignore[no-untyped-def]
    first = semgrad_guard.default_scorer()
    assert semgrad_guard.default_scorer() is first
    mine = make_tiny()
    semgrad_guard.set_default_scorer(mine)
    try:
        assert semgrad_guard.default_scorer() is mine
    finally:
        semgrad_guard.set_default_scorer(None)
    assert semgrad_guard.default_scorer() is not mine


def test_untrusted_needs_a_threshold_or_a_calibration(make_tiny) -> None:  # type: ignore[no-untyped-def]
    import pytest

    score = make_tiny().score("Hi?", "Hello")
    assert score.semgrad is not None
    assert score.untrusted(threshold=score.semgrad / 2) is True
    assert score.untrusted(threshold=score.semgrad * 2) is False
    assert score.untrusted(threshold=0.0, field="nll") is True
    with pytest.raises(semgrad_guard.NoThresholdError, match="no calibration"):
        score.untrusted()
    assert score.model_copy(update={"low_confidence": True}).untrusted() is True
    with pytest.raises(semgrad_guard.InvalidInputError):
        semgrad_guard.Score.invalid("empty_answer: x", model="m").untrusted(threshold=1.0)
