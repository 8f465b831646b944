from pathlib import Path

import llama_index.evaluation.semgrad as package
from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.evaluation import BaseEvaluator
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.evaluation.semgrad import (
    SemGradEvaluator,
    SemGradEventHandler,
    SemGradInputError,
    SemGradQueryEngine,
    SemGradScoreEvent,
)

from semgrad_guard import default_scorer

EXPECTED_ALL = [
    "AgentRun",
    "SemGradEvaluator",
    "SemGradEventHandler",
    "SemGradInputError",
    "SemGradLocalLLM",
    "SemGradQueryEngine",
    "SemGradScoreEvent",
    "aevaluate_agent_run",
    "aevaluate_agent_runs",
    "agent_answers",
    "arecord_agent_run",
]


def test_all_is_pinned() -> None:
    assert sorted(EXPECTED_ALL) == sorted(package.__all__)
    assert package.__all__ == sorted(package.__all__)


def test_namespace_layout_has_no_parent_init() -> None:
    leaf = Path(package.__file__).parent
    assert (leaf / "py.typed").exists()
    assert not (leaf.parent / "__init__.py").exists()
    assert not (leaf.parent.parent / "__init__.py").exists()


def test_classes_plug_into_llama_index() -> None:
    assert issubclass(SemGradEvaluator, BaseEvaluator)
    assert issubclass(SemGradEventHandler, BaseEventHandler)
    assert issubclass(SemGradQueryEngine, BaseQueryEngine)
    assert SemGradScoreEvent.class_name() == "SemGradScoreEvent"
    assert issubclass(SemGradInputError, ValueError)


def test_components_share_the_default_scorer_without_loading() -> None:
    evaluator = SemGradEvaluator()
    assert evaluator.scorer is default_scorer()
    assert evaluator.get_prompts() == {}
