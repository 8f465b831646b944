"""The errors semgrad-guard raises, one tree under :class:`SemGradError`.

::

    SemGradError
    ├── ModelLoadError            the model or tokenizer could not be loaded
    ├── NoThresholdError          (also a ValueError) a trust decision without threshold or calibration
    ├── InvalidInputError         (also a ValueError) this (prompt, answer) pair cannot be scored
    │   ├── EmptyAnswerError          the answer is empty or only whitespace
    │   ├── InputTooLongError         prompt + answer exceed the model's context or the configured limit
    │   ├── ChatTemplateError         chat messages given to a model without a chat template, or malformed
    │   └── ProfileMismatchError      the profile's position does not land on its expected template token
    ├── NonFiniteScoreError       (also an ArithmeticError) the pass produced NaN or infinity
    ├── ScorerBusyError           the request queue stayed full for longer than the configured wait
    └── ScorerOutOfMemoryError    (also a MemoryError) one pair alone does not fit on the device

Each error carries a short ``code`` that also names the reason of a Score marked invalid.
"""

from __future__ import annotations

__all__ = [
    "ChatTemplateError",
    "EmptyAnswerError",
    "InputTooLongError",
    "InvalidInputError",
    "ModelLoadError",
    "NoThresholdError",
    "NonFiniteScoreError",
    "ProfileMismatchError",
    "ScorerBusyError",
    "ScorerOutOfMemoryError",
    "SemGradError",
]


class SemGradError(Exception):
    """Base class of every error raised by semgrad-guard."""

    code = "error"


class ModelLoadError(SemGradError):
    """The model or its tokenizer could not be loaded."""

    code = "model_load"


class NoThresholdError(SemGradError, ValueError):
    """A trust decision was asked for, but there is neither a raw threshold nor a calibration."""

    code = "no_threshold"


class InvalidInputError(SemGradError, ValueError):
    """A (prompt, answer) pair that cannot be scored."""

    code = "invalid_input"


class EmptyAnswerError(InvalidInputError):
    """The answer is empty or whitespace only: there is nothing to score."""

    code = "empty_answer"


class InputTooLongError(InvalidInputError):
    """Prompt plus answer is longer than the model's context window or the scorer's ``max_length``."""

    code = "too_long"


class ChatTemplateError(InvalidInputError):
    """The prompt cannot be rendered: no chat template for messages, or malformed messages."""

    code = "chat_template"


class ProfileMismatchError(InvalidInputError):
    """The profile's gradient position does not land on the template token it was chosen for."""

    code = "profile_mismatch"


class NonFiniteScoreError(SemGradError, ArithmeticError):
    """The forward or backward pass produced NaN or infinite values."""

    code = "non_finite"


class ScorerBusyError(SemGradError):
    """The shared scorer's queue stayed full for longer than ``queue_timeout_s``: shed load or retry."""

    code = "busy"


class ScorerOutOfMemoryError(SemGradError, MemoryError):
    """A single pair ran out of device memory even in a pass of its own."""

    code = "out_of_memory"
