"""The benchmark's methods by name, shared by bench, fitting and labels (no import cycle between them)."""

from __future__ import annotations

__all__ = ["COMBINED", "CONTEXT_LABEL", "GRADIENT", "METHODS", "SAMPLING", "SANITY", "SINGLE_PASS"]

SINGLE_PASS = {  # method -> Score field; all come from the one forward/backward pass
    "semgrad": "semgrad",
    "hybridgrad": "hybridgrad",
    "exgrad": "exgrad",
    "pe": "nll",
    "ln_pe": "ln_nll",
    "mean_entropy": "mean_entropy",
    "max_token_nll": "max_token_nll",
}
COMBINED = ("combined",)  # logistic over the single-pass scores, fitted out of fold on the main labels
SAMPLING = ("lexical_similarity", "semantic_entropy", "degree", "eigenvalue")
SANITY = ("length", "neg_length", "random")
METHODS = (*SINGLE_PASS, *COMBINED, *SAMPLING, *SANITY)
GRADIENT = ("semgrad", "hybridgrad", "exgrad")
CONTEXT_LABEL = "unsupported"  # label set of RAG-shaped sets: 1 where the context does not state a reference
