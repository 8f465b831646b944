"""semgrad-guard: tells an application when an LLM answer should not be trusted.

SemGrad and HybridGrad (arXiv 2605.04638) score a (prompt, answer) pair from one teacher-forced forward pass
and one backward pass through a local Hugging Face causal LM; higher scores mean the answer is more likely
wrong.
"""

from semgrad_guard._version import __version__
from semgrad_guard.errors import (
    ChatTemplateError,
    EmptyAnswerError,
    InputTooLongError,
    InvalidInputError,
    ModelLoadError,
    NonFiniteScoreError,
    ProfileMismatchError,
    SemGradError,
)
from semgrad_guard.profiles import ModelProfile
from semgrad_guard.results import Score, ScoredGeneration
from semgrad_guard.scorer import ScorerConfig, SemGradScorer

__all__ = [
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
