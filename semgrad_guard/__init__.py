"""semgrad-guard: tells an application when an LLM answer should not be trusted.

SemGrad and HybridGrad (arXiv 2605.04638) score a (prompt, answer) pair from one teacher-forced forward pass
and one backward pass through a local Hugging Face causal LM; higher scores mean the answer is more likely
wrong.
"""

from semgrad_guard._version import __version__
from semgrad_guard.batching import BatchingConfig
from semgrad_guard.calibration import CalibrationBundle
from semgrad_guard.errors import (
    ChatTemplateError,
    EmptyAnswerError,
    InputTooLongError,
    InvalidInputError,
    ModelLoadError,
    NonFiniteScoreError,
    NoThresholdError,
    ProfileMismatchError,
    ScorerBusyError,
    ScorerOutOfMemoryError,
    SemGradError,
)
from semgrad_guard.profiles import ModelProfile
from semgrad_guard.prompts import Prompt
from semgrad_guard.results import RawField, Score, ScoredGeneration
from semgrad_guard.scorer import ErrorMode, ScorerConfig, SemGradScorer
from semgrad_guard.service.protocol import Scorer
from semgrad_guard.shared import default_scorer, set_default_scorer

__all__ = [
    "BatchingConfig",
    "CalibrationBundle",
    "ChatTemplateError",
    "EmptyAnswerError",
    "ErrorMode",
    "InputTooLongError",
    "InvalidInputError",
    "ModelLoadError",
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
