"""The user's cache folder for semgrad-guard: converted GGUF models, joined named models, profiles."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """``$SEMGRAD_GUARD_CACHE``, else ``$XDG_CACHE_HOME/semgrad-guard``, else ``~/.cache/semgrad-guard``."""
    explicit = os.environ.get("SEMGRAD_GUARD_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "semgrad-guard"
