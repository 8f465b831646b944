"""``profile="auto"``: a model's SPS profile, computed once from the shipped set, kept in the user cache."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any

from semgrad_guard.cache import cache_dir
from semgrad_guard.directions import directions_file
from semgrad_guard.profiles import ModelProfile
from semgrad_guard.sps.positions import compute_sps
from semgrad_guard.sps.states import DEFAULT_DATA

__all__ = ["auto_profile"]

logger = logging.getLogger(__name__)


def _cache_path(model: Any, tokenizer: Any, name: str) -> Path:
    """``cache_dir()/profiles/<name>-<hash>.json``; the hash covers the config and the chat template."""
    identity = "\n".join(
        [name, model.config.to_json_string(), str(getattr(tokenizer, "chat_template", "")), DEFAULT_DATA]
    )
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[-64:]
    return cache_dir() / "profiles" / f"{slug}-{digest}.json"


def auto_profile(model: Any, tokenizer: Any, name: str) -> ModelProfile:
    """The SPS profile of this model from the shipped set: computed once, then read from the user cache."""
    path = _cache_path(model, tokenizer, name)
    if path.is_file():
        return ModelProfile.load(path)
    logger.info("Computing the SPS profile of %s once; it is cached in %s", name, path)
    result = compute_sps(model, tokenizer, name=name, progress=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    result.save(partial, directions_path=directions_file(path))  # the directions file first, atomically
    partial.replace(path)  # atomic: a process scoring with the same model never reads half a file
    return ModelProfile.load(path)
