"""SemGradLocalLLM generates with the scorer's own model, so a remote default scorer is refused, by type."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from llama_index.evaluation.semgrad import SemGradLocalLLM

from semgrad_guard import SemGradScorer, default_scorer, set_default_scorer


@pytest.fixture
def remote_default(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The shared default scorer is a remote one (nothing is contacted: no request is ever sent)."""
    pytest.importorskip("httpx", reason="a remote scorer needs the serve extra")
    monkeypatch.setenv("SEMGRAD_GUARD_URL", "http://127.0.0.1:9")
    set_default_scorer(None)
    try:
        yield
    finally:
        set_default_scorer(None)


def test_a_remote_default_scorer_is_refused(remote_default: None) -> None:
    assert not isinstance(default_scorer(), SemGradScorer)
    llm = SemGradLocalLLM()
    with pytest.raises(TypeError, match="SEMGRAD_GUARD_URL"):
        llm.complete("What is the capital of France?")
    with pytest.raises(TypeError, match="SemGradScorer"):
        _ = llm.metadata


def test_a_local_scorer_given_still_answers_with_a_remote_default(
    remote_default: None, li_scorer: SemGradScorer
) -> None:
    response = SemGradLocalLLM(li_scorer, max_new_tokens=4).complete("What is the capital of France?")
    assert response.text and response.additional_kwargs["semgrad"].model == li_scorer.model_name
