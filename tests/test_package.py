"""Package-level guarantees: the exported names, and a core that never imports LangChain or LlamaIndex."""

from __future__ import annotations

import ast
from pathlib import Path

import semgrad_guard

EXPECTED_ALL = [
    "ChatTemplateError",
    "EmptyAnswerError",
    "InputTooLongError",
    "InvalidInputError",
    "ModelLoadError",
    "ModelProfile",
    "NonFiniteScoreError",
    "ProfileMismatchError",
    "Score",
    "ScoredGeneration",
    "ScorerConfig",
    "SemGradError",
    "SemGradScorer",
    "__version__",
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
