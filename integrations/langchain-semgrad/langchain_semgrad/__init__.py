"""LangChain integration of semgrad-guard: score LLM answers with SemGrad and route the untrusted ones.

- :class:`SemGradGuard` wraps an answering step (a chat model or a chain), scores each answer, and on a
  low-confidence answer retrieves context, falls back to another runnable, queues it for human review,
  raises :class:`LowConfidenceError`, or passes it through flagged.
- :class:`SemGradCallbackHandler` and :class:`AsyncSemGradCallbackHandler` score every model call they
  observe, keyed by run id.
- :class:`ReviewQueue` is the durable SQLite queue behind ``policy="human"`` (CLI:
  ``langchain-semgrad-review``).

Every piece shares ``semgrad_guard.default_scorer()`` unless given ``scorer=``: one model in memory.
"""

from langchain_semgrad._version import __version__
from langchain_semgrad.callbacks import AsyncSemGradCallbackHandler, ScoredRun, SemGradCallbackHandler
from langchain_semgrad.review import ReviewItem, ReviewQueue
from langchain_semgrad.runnables import GuardResult, LowConfidenceError, SemGradGuard

__all__ = [
    "AsyncSemGradCallbackHandler",
    "GuardResult",
    "LowConfidenceError",
    "ReviewItem",
    "ReviewQueue",
    "ScoredRun",
    "SemGradCallbackHandler",
    "SemGradGuard",
    "__version__",
]
