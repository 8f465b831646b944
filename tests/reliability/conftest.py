"""The reliability suite's settings and shared scorers.

Hypothesis runs the ``ci`` profile unless ``SEMGRAD_HYPOTHESIS_PROFILE`` names another: derandomized (the
same examples on every run and machine), few examples, no per-example deadline (a pass on a shared CI core
can take a while). ``explore`` draws many more, at random, to hunt for new bugs. Neither keeps an example
database (a failure prints the ``@reproduce_failure`` line that replays it), and Hypothesis's caches go to
the temporary folder, not into the work tree.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, Phase, settings
from hypothesis.configuration import set_hypothesis_home_dir

from semgrad_guard import SemGradScorer
from tests._models import tiny_lm

set_hypothesis_home_dir(
    os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY") or Path(tempfile.gettempdir(), "hypothesis")
)
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=20,
    print_blob=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # no "explain": it reruns a lot
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "explore", database=None, deadline=None, max_examples=500, print_blob=True, phases=[*Phase][:-1]
)
settings.load_profile(os.environ.get("SEMGRAD_HYPOTHESIS_PROFILE", "ci"))


TinyPair = tuple[Any, Any]


@pytest.fixture(scope="session")
def tiny_pair(tokenizer: Any) -> Callable[..., TinyPair]:
    """Makes a (model, tokenizer) pair: a 2-layer tiny random Llama (context 256 tokens) in ``dtype`` and a
    copy of SmolLM2's tokenizer; scorers built on one pair share its weights."""

    def make(dtype: torch.dtype = torch.float32) -> TinyPair:
        model = tiny_lm(len(tokenizer), layers=2, max_position_embeddings=256)
        return model.to(dtype), copy.deepcopy(tokenizer)

    return make


@pytest.fixture(scope="session")
def rel_scorer(tiny_pair: Callable[..., TinyPair]) -> SemGradScorer:
    """One tiny float32 scorer shared by the property tests (hypothesis reruns a test body, not fixtures)."""
    return SemGradScorer(tiny_pair(), name="tiny").load()


@pytest.fixture(scope="session")
def nan_scorer(tiny_pair: Callable[..., TinyPair]) -> SemGradScorer:
    """A tiny scorer whose model gives NaN for every input: one NaN weight in the last layer's MLP."""
    scorer = SemGradScorer(tiny_pair(), name="tiny-nan").load()
    with torch.no_grad():
        scorer.model.model.layers[-1].mlp.down_proj.weight[0, 0] = float("nan")
    return scorer
