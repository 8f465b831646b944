"""Cheap estimators over one pass's statistics; higher always means more uncertain.

Each is a few lines of arithmetic on :class:`~semgrad_guard.statistics.PassStatistics`, so adding a
baseline never costs another pass through the model.
"""

from __future__ import annotations

import math

import torch

from semgrad_guard.statistics import PassStatistics

__all__ = [
    "exgrad",
    "hybridgrad",
    "ln_nll",
    "max_token_nll",
    "mean_entropy",
    "nll",
    "param_grad",
    "semgrad",
    "semgrad_para",
]


def semgrad(stats: PassStatistics) -> float:
    """SemGrad: mean |d loss / d h_l| at the profile position, over the scored layers."""
    return float(stats.hidden_grad.mean())


def semgrad_para(stats: PassStatistics, directions: torch.Tensor) -> float:
    """Norm of the gradient inside the paraphrase directions, averaged over the scored layers.

    ``mean_l || U_l dL/dh_l[p] ||_2`` with ``U_l`` the (k, hidden) orthonormal directions of layer l
    (:mod:`semgrad_guard.directions`), given as a (n_layers, k, hidden) tensor in the profile's layer order.
    """
    vectors = stats.hidden_grad_vectors
    if directions.shape[0] != vectors.shape[0] or directions.shape[-1] != vectors.shape[-1]:
        raise ValueError(f"directions {tuple(directions.shape)} do not fit gradients {tuple(vectors.shape)}")
    coordinates = torch.einsum("lkh,lh->lk", directions.to(vectors), vectors)
    return float(coordinates.norm(dim=-1).mean())


def param_grad(stats: PassStatistics) -> float:
    """Mean |d loss / d W_out| through the output projection only."""
    return stats.output_grad


def exgrad(stats: PassStatistics) -> float:
    """ExGrad baseline: mean |d CE / d W_out| under plain mean cross-entropy, output path only."""
    return stats.output_grad_ce


def mean_entropy(stats: PassStatistics) -> float:
    """Mean next-token entropy over the answer steps, in nats (the paper's H-bar)."""
    return float(stats.token_entropy.mean())


def hybridgrad(stats: PassStatistics) -> float:
    """HybridGrad: a * param_grad + (1 - a) * SemGrad with a = exp(-mean entropy)."""
    weight = math.exp(-mean_entropy(stats))
    return weight * param_grad(stats) + (1.0 - weight) * semgrad(stats)


def nll(stats: PassStatistics) -> float:
    """Sum of the answer tokens' negative log-likelihoods (predictive entropy, PE)."""
    return float(stats.token_nll.sum())


def ln_nll(stats: PassStatistics) -> float:
    """Length-normalised NLL: the mean over answer tokens (LN-PE)."""
    return float(stats.token_nll.mean())


def max_token_nll(stats: PassStatistics) -> float:
    """The largest single-token NLL in the answer."""
    return float(stats.token_nll.max())
