"""Choosing where SemGrad takes its gradient: SPS, paraphrase directions and the cached ``profile="auto"``.

Research tooling: the runtime imports it only for ``profile="auto"``.
"""

from semgrad_guard.sps.cache import auto_profile
from semgrad_guard.sps.directions import directions_from_states, fit_directions
from semgrad_guard.sps.positions import (
    PROBE_PROMPTS,
    SPSResult,
    compute_sps,
    layer_bands,
    preservation_scores,
    sps_table,
    template_tail_length,
)
from semgrad_guard.sps.states import DEFAULT_DATA, encode_items, load_default_items, tail_states

__all__ = [
    "DEFAULT_DATA",
    "PROBE_PROMPTS",
    "SPSResult",
    "auto_profile",
    "compute_sps",
    "directions_from_states",
    "encode_items",
    "fit_directions",
    "layer_bands",
    "load_default_items",
    "preservation_scores",
    "sps_table",
    "tail_states",
    "template_tail_length",
]
