"""Sampling baselines: K sampled answers per question, scored by how much they disagree.

The paper's semantic entropy clusters answers with an NLI model; we cannot ship one, so answers are
clustered by all-MiniLM-L6-v2 cosine similarity instead (documented in docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np

from semgrad_guard.evaluation.judges import rouge_l

__all__ = ["CLUSTER_THRESHOLD", "degree", "eigenvalue", "lexical_similarity", "semantic_entropy"]

CLUSTER_THRESHOLD = 0.85
"""Cosine similarity at or above which two sampled answers count as meaning the same thing."""


def lexical_similarity(samples: list[str]) -> float:
    """1 - mean pairwise ROUGE-L between samples (higher = more uncertain)."""
    pairs = [rouge_l(a, b) for i, a in enumerate(samples) for b in samples[i + 1 :]]
    return 1.0 - float(np.mean(pairs)) if pairs else 0.0


def _similarity(vectors: np.ndarray) -> np.ndarray:
    similarity: np.ndarray = np.clip(vectors @ vectors.T, 0.0, 1.0)
    return similarity


def semantic_entropy(vectors: np.ndarray) -> float:
    """Entropy of the cluster sizes, clustering each sample into the first cluster it is similar to."""
    representatives: list[int] = []
    sizes: list[int] = []
    for i in range(len(vectors)):
        match = next(
            (c for c, rep in enumerate(representatives) if vectors[i] @ vectors[rep] >= CLUSTER_THRESHOLD),
            None,
        )
        if match is None:
            representatives.append(i)
            sizes.append(1)
        else:
            sizes[match] += 1
    share = np.array(sizes) / len(vectors)
    return float(-(share * np.log(share)).sum())


def degree(vectors: np.ndarray) -> float:
    """1 - mean similarity between samples (Lin et al.'s degree matrix score)."""
    return 1.0 - float(_similarity(vectors).mean())


def eigenvalue(vectors: np.ndarray) -> float:
    """Sum over eigenvalues of the normalised graph Laplacian of max(0, 1 - lambda) (Lin et al.'s EigV)."""
    weights = _similarity(vectors)
    scale = 1.0 / np.sqrt(weights.sum(1))
    laplacian = np.eye(len(weights)) - scale[:, None] * weights * scale[None, :]
    return float(np.clip(1.0 - np.linalg.eigvalsh(laplacian), 0.0, None).sum())
