"""SemGrad for LlamaIndex: an evaluator, automatic scoring through instrumentation, a guarding query engine.

Agent runs (``FunctionAgent``, ``ReActAgent``, ``AgentWorkflow``): :func:`arecord_agent_run` keeps what a
run's final answer came from, :func:`aevaluate_agent_run` / :func:`aevaluate_agent_runs` score it, and the
event handler marks each score as an agent's final answer or an intermediate step (:func:`agent_answers`).

All of them share the process-wide :func:`semgrad_guard.default_scorer` unless given a ``scorer``.
"""

from llama_index.evaluation.semgrad.agents import (
    AgentRun,
    aevaluate_agent_run,
    aevaluate_agent_runs,
    arecord_agent_run,
)
from llama_index.evaluation.semgrad.base import SemGradEvaluator, SemGradInputError
from llama_index.evaluation.semgrad.events import SemGradEventHandler, SemGradScoreEvent, agent_answers
from llama_index.evaluation.semgrad.llm import SemGradLocalLLM
from llama_index.evaluation.semgrad.query_engine import SemGradQueryEngine

__all__ = [
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
