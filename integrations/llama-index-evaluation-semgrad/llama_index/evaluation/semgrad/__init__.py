"""SemGrad for LlamaIndex: an evaluator, automatic scoring through instrumentation, a guarding query engine.

All of them share the process-wide :func:`semgrad_guard.default_scorer` unless given a ``scorer``.
"""

from llama_index.evaluation.semgrad.base import SemGradEvaluator, SemGradInputError
from llama_index.evaluation.semgrad.events import SemGradEventHandler, SemGradScoreEvent
from llama_index.evaluation.semgrad.llm import SemGradLocalLLM
from llama_index.evaluation.semgrad.query_engine import SemGradQueryEngine

__all__ = [
    "SemGradEvaluator",
    "SemGradEventHandler",
    "SemGradInputError",
    "SemGradLocalLLM",
    "SemGradQueryEngine",
    "SemGradScoreEvent",
]
