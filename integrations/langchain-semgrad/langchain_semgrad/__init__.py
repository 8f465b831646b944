"""LangChain integration of semgrad-guard: score LLM answers with SemGrad and route the untrusted ones.

- :class:`SemGradGuard` wraps an answering step (a chat model or a chain), scores each answer, and on a
  low-confidence answer retrieves context, falls back to another runnable, queues it for human review,
  raises :class:`LowConfidenceError`, or passes it through flagged.
- :class:`SemGradMiddleware` does the same inside a ``create_agent`` loop (langchain 1.x, the ``agents``
  extra): it scores each final answer, not the tool-call turns, and falls back, retries, interrupts for
  review, raises or annotates.
- :class:`SemGradCallbackHandler` and :class:`AsyncSemGradCallbackHandler` score every model call they
  observe, keyed by run id.
- :class:`ReviewQueue` is the durable SQLite queue behind ``policy="human"`` (CLI:
  ``langchain-semgrad-review``).

Every piece shares ``semgrad_guard.default_scorer()`` unless given ``scorer=``: one model in memory.
"""

from typing import TYPE_CHECKING, Any

from langchain_semgrad._version import __version__
from langchain_semgrad.callbacks import AsyncSemGradCallbackHandler, ScoredRun, SemGradCallbackHandler
from langchain_semgrad.review import ReviewItem, ReviewQueue
from langchain_semgrad.runnables import GuardResult, LowConfidenceError, SemGradGuard

if TYPE_CHECKING:
    from langchain_semgrad.middleware import SemGradMiddleware

__all__ = [
    "AsyncSemGradCallbackHandler",
    "GuardResult",
    "LowConfidenceError",
    "ReviewItem",
    "ReviewQueue",
    "ScoredRun",
    "SemGradCallbackHandler",
    "SemGradGuard",
    "SemGradMiddleware",
    "__version__",
]


def __getattr__(name: str) -> Any:
    """``SemGradMiddleware`` on first use: it needs ``langchain>=1``, which the package does not require."""
    if name != "SemGradMiddleware":
        raise AttributeError(f"module 'langchain_semgrad' has no attribute {name!r}")
    try:
        from langchain_semgrad.middleware import SemGradMiddleware
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ("langchain", "langgraph"):
            raise
        raise ImportError(
            'SemGradMiddleware needs langchain>=1: pip install "langchain-semgrad[agents]"'
        ) from exc
    return SemGradMiddleware
