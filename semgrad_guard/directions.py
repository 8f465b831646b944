"""Paraphrase directions: the few main directions in which meaning-preserving rewrites move a hidden state.

For every question and each of its paraphrases the production prompt runs through the model (forward
passes only, :func:`semgrad_guard.sps.fit_directions`), and the hidden states at the profile's position and
layers are kept. Per layer, the differences *paraphrase minus its original question* are stacked and their
top-k right singular vectors are the directions: the principal components of the differences about zero,
not about their mean, because a shift that every paraphrase shares is a movement under rewriting too. They
are the top eigenvectors of ``M = E[d d^T]``, so ``g^T M g`` (the mean squared first-order change of the
answer's loss under the observed rewrites) lives mostly in their span.

``semgrad_para`` (:func:`semgrad_guard.estimators.semgrad_para`) projects SemGrad's gradient onto them. A
profile names its directions file (``ModelProfile.directions``); the file is a ``.safetensors`` written next
to the profile JSON, so the JSON stays small.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from semgrad_guard.profiles import BUILTIN_PROFILES, ModelProfile

__all__ = [
    "BUILTIN_DIR",
    "DEFAULT_DIRECTIONS",
    "DIRECTIONS_SUFFIX",
    "ParaphraseDirections",
    "directions_file",
    "paraphrase_differences",
    "principal_directions",
    "profile_directions",
    "resolve_directions",
]

logger = logging.getLogger(__name__)

DEFAULT_DIRECTIONS = 8
"""Directions kept per layer (k); see docs/sps.md for the evidence behind it."""
DIRECTIONS_SUFFIX = ".directions.safetensors"
BUILTIN_DIR = Path(__file__).parent / "data"
"""Where the built-in profiles' directions files are shipped."""
_FORMAT = "1"


@dataclass(frozen=True)
class ParaphraseDirections:
    """Orthonormal paraphrase directions for one (offset, layers) of one model, and how they were fitted."""

    vectors: torch.Tensor  # (n_layers, k, hidden) float64; the rows of each layer are orthonormal
    singular_values: torch.Tensor  # (n_layers, k) of the stacked differences
    energy: torch.Tensor  # (n_layers,) sum of squared difference norms (explained = singular^2 / energy)
    layers: tuple[int, ...]
    offset: int
    model: str
    data: str
    n_questions: int
    n_differences: int

    @property
    def k(self) -> int:
        """Directions per layer."""
        return int(self.vectors.shape[1])

    @property
    def explained(self) -> torch.Tensor:
        """(n_layers,) fraction of the fitting differences' squared norm inside the directions' span."""
        return (self.singular_values**2).sum(-1) / self.energy.clamp_min(1e-300)

    def save(self, path: str | Path) -> None:
        """Write a ``.safetensors`` file (float32 tensors, fitting details in its metadata), atomically."""
        path = Path(path)
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        save_file(
            {
                "directions": self.vectors.float().contiguous(),
                "singular_values": self.singular_values.float().contiguous(),
                "energy": self.energy.float().contiguous(),
                "layers": torch.tensor(self.layers, dtype=torch.int64),
            },
            str(partial),
            metadata={
                "format": _FORMAT,
                "offset": str(self.offset),
                "model": self.model,
                "data": self.data,
                "n_questions": str(self.n_questions),
                "n_differences": str(self.n_differences),
            },
        )
        partial.chmod(0o644)  # safetensors creates the file private
        partial.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> ParaphraseDirections:
        """Read a file written by :meth:`save` (tensors come back as float64)."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if metadata.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a semgrad-guard directions file (format {_FORMAT})")
        tensors = load_file(str(path))
        return cls(
            vectors=tensors["directions"].double(),
            singular_values=tensors["singular_values"].double(),
            energy=tensors["energy"].double(),
            layers=tuple(int(layer) for layer in tensors["layers"].tolist()),
            offset=int(metadata["offset"]),
            model=metadata.get("model", ""),
            data=metadata.get("data", ""),
            n_questions=int(metadata.get("n_questions", 0)),
            n_differences=int(metadata.get("n_differences", 0)),
        )

    def check(self, profile: ModelProfile, hidden_size: int) -> None:
        """Raise ``ValueError`` unless these directions were fitted at this profile's position and layers."""
        if profile.layers is not None and tuple(profile.layers) != self.layers:
            raise ValueError(
                f"directions fitted at layers {self.layers}, the profile scores {profile.layers}"
            )
        if profile.offset != self.offset:
            raise ValueError(f"directions fitted at offset {self.offset}, the profile uses {profile.offset}")
        if self.vectors.shape[-1] != hidden_size:
            raise ValueError(
                f"directions have width {self.vectors.shape[-1]}, the model's hidden size is {hidden_size}"
            )


def paraphrase_differences(states: torch.Tensor, source: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Paraphrase minus its original question, in float64: (paraphrases, ...) for states (prompts, ...).

    ``source[i]`` is the row of prompt i's original question (a question is its own source).
    """
    source = torch.as_tensor(source)
    paraphrase = torch.nonzero(source != torch.arange(len(source))).squeeze(1)
    return states[paraphrase].double() - states[source[paraphrase]].double()


def principal_directions(
    differences: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k right singular vectors per layer of differences shaped (n, n_layers, hidden).

    Returns ``(vectors (n_layers, k, hidden), singular_values (n_layers, k), energy (n_layers,))``; k is
    capped at ``min(n, hidden)``. Each vector's sign makes its largest coordinate positive (deterministic).
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    per_layer = differences.double().transpose(0, 1)  # (n_layers, n, hidden)
    _, singular, vh = torch.linalg.svd(per_layer, full_matrices=False)
    k = min(k, vh.shape[1])
    vectors, singular = vh[:, :k], singular[:, :k]
    largest = vectors.gather(-1, vectors.abs().argmax(-1, keepdim=True))
    vectors = vectors * torch.where(largest < 0, -1.0, 1.0)
    return vectors.contiguous(), singular, (per_layer**2).sum((1, 2))


def directions_file(profile_path: str | Path) -> Path:
    """The directions file written next to a profile JSON: ``my-model.json`` -> ``my-model.directions...``."""
    path = Path(profile_path)
    return path.with_name(path.stem + DIRECTIONS_SUFFIX)


def resolve_directions(reference: str) -> Path:
    """The file a profile's ``directions`` names: absolute as is; relative in the built-in folder, else here.

    ``ModelProfile.load`` already turns a name relative to the profile JSON's folder into an absolute path.
    """
    path = Path(reference)
    if path.is_absolute():
        return path
    builtin = BUILTIN_DIR / reference
    return builtin if builtin.is_file() else path


def profile_directions(profile: ModelProfile, hidden_size: int) -> torch.Tensor | None:
    """The (n_layers, k, hidden) float64 directions a resolved profile names, or ``None`` when it names none.

    A file that does not fit the profile or the model raises ``ValueError`` (a missing one ``OSError``),
    except a built-in file (shipped with the package for one model, matched to a family by name): then a
    warning is logged and ``semgrad_para`` stays empty.
    """
    if profile.directions is None:
        return None
    path = resolve_directions(profile.directions)
    builtin = profile.directions in {known.directions for known, _ in BUILTIN_PROFILES}
    try:
        found = ParaphraseDirections.load(path)
        found.check(profile, hidden_size)
    except (OSError, ValueError) as exc:
        if not builtin:
            raise
        logger.warning("not using the built-in paraphrase directions %s: %s", path.name, exc)
        return None
    return found.vectors
