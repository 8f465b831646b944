import copy
import math

import pytest
from llama_index.core.base.response.schema import Response
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.evaluation.semgrad import SemGradEvaluator
from llama_index.evaluation.semgrad._verdict import headline, trusted

from semgrad_guard import Score, SemGradScorer

pytestmark = pytest.mark.slow

QUERY = "When was Harbor Lane Library founded?"
ANSWER = "Harbor Lane Library was founded in 1921."
CONTEXT = "Harbor Lane Library was founded in 1921 by the sea captain Edith Marlow."


def test_scores_query_plus_context_under_the_qa_template(li_scorer: SemGradScorer) -> None:
    evaluator = SemGradEvaluator(scorer=li_scorer)
    result = evaluator.evaluate(query=QUERY, response=ANSWER, contexts=[CONTEXT])
    prompt, source = evaluator.scored_prompt(QUERY, [CONTEXT])
    direct = li_scorer.score(prompt, ANSWER)
    assert source == "query + 1 contexts (QA template)"
    assert isinstance(prompt, str) is False and CONTEXT in prompt[-1]["content"]
    assert not result.invalid_result and result.invalid_reason is None
    # the shipped calibration: score is the confidence, passing the bundle's own verdict on it (None when
    # the bundle has no threshold, as the embedded model's has none)
    assert direct.confidence is not None and result.score == pytest.approx(direct.confidence, rel=1e-6)
    assert result.passing is (None if direct.low_confidence is None else not direct.low_confidence)
    assert f"position={direct.position}" in result.feedback
    assert li_scorer.model_name in result.feedback and "semgrad=" in result.feedback
    assert result.query == QUERY and result.response == ANSWER and result.contexts == [CONTEXT]


def test_threshold_decides_passing_with_the_cores_rule(li_scorer: SemGradScorer) -> None:
    raw = li_scorer.score(SemGradEvaluator(scorer=li_scorer).scored_prompt(QUERY, [CONTEXT])[0], ANSWER)
    assert raw.semgrad is not None
    low = SemGradEvaluator(scorer=li_scorer, threshold=raw.semgrad * 0.5, threshold_field="semgrad")
    high = SemGradEvaluator(scorer=li_scorer, threshold=raw.semgrad * 2.0, threshold_field="semgrad")
    assert low.evaluate(query=QUERY, response=ANSWER, contexts=[CONTEXT]).passing is False
    assert high.evaluate(query=QUERY, response=ANSWER, contexts=[CONTEXT]).passing is True
    entropy = SemGradEvaluator(scorer=li_scorer, threshold=1e9, threshold_field="mean_entropy")
    result = entropy.evaluate(query=QUERY, response=ANSWER, contexts=[CONTEXT])
    assert raw.mean_entropy is not None and result.passing is True
    assert result.score == pytest.approx(1e9 / (1e9 + raw.mean_entropy), rel=1e-6)  # confidence, 0.5 at 1e9
    assert "mean_entropy=" in result.feedback


def test_the_scored_prompt_changes_the_score(li_scorer: SemGradScorer) -> None:
    evaluator = SemGradEvaluator(scorer=li_scorer)
    with_context = evaluator.evaluate(query=QUERY, response=ANSWER, contexts=[CONTEXT])
    closed_book = SemGradEvaluator(scorer=li_scorer, use_contexts=False).evaluate(
        query=QUERY, response=ANSWER, contexts=[CONTEXT]
    )
    query_only = evaluator.evaluate(query=QUERY, response=ANSWER)
    explicit = evaluator.evaluate(response=ANSWER, prompt=QUERY)
    assert "prompt=query only" in closed_book.feedback and "prompt=given prompt" in explicit.feedback
    assert closed_book.score == pytest.approx(query_only.score, rel=1e-9)
    assert explicit.score == pytest.approx(query_only.score, rel=1e-9)
    assert not math.isclose(with_context.score, query_only.score, rel_tol=1e-3)


def test_unscorable_pairs_are_invalid_results(li_scorer: SemGradScorer) -> None:
    empty = SemGradEvaluator(scorer=li_scorer, max_risk=1.0).evaluate(query=QUERY, response="   ")
    assert empty.invalid_result and empty.invalid_reason is not None
    assert empty.invalid_reason.startswith("empty_answer:")
    assert empty.score is None and empty.passing is None and "not scored" in empty.feedback

    short = SemGradScorer((li_scorer.model, li_scorer.tokenizer), max_length=16)  # shares the weights
    too_long = SemGradEvaluator(scorer=short).evaluate(query=QUERY, response=ANSWER, contexts=[CONTEXT])
    assert too_long.invalid_result and too_long.invalid_reason.startswith("too_long:")


def test_missing_inputs_raise_value_error(li_scorer: SemGradScorer) -> None:
    evaluator = SemGradEvaluator(scorer=li_scorer)
    with pytest.raises(ValueError, match="response"):
        evaluator.evaluate(query=QUERY)
    with pytest.raises(ValueError, match="query"):
        evaluator.evaluate(response=ANSWER)


def test_evaluate_response_uses_the_context_as_the_llm_saw_it(li_scorer: SemGradScorer) -> None:
    node = TextNode(text=CONTEXT, metadata={"file_name": "history.txt"})
    response = Response(response=ANSWER, source_nodes=[NodeWithScore(node=node, score=0.9)])
    before = copy.deepcopy(response)
    result = SemGradEvaluator(scorer=li_scorer).evaluate_response(query=QUERY, response=response)
    assert result.contexts == [f"file_name: history.txt\n\n{CONTEXT}"]
    assert response == before  # the caller's Response is not modified


def test_calibrated_scores_report_confidence() -> None:
    raw = Score(model="m", semgrad=2e-5, hybridgrad=1e-5, mean_entropy=1.0, position=3)
    calibrated = raw.model_copy(update={"risk": 0.2, "confidence": 0.8, "low_confidence": False})
    assert headline(raw, "semgrad") == pytest.approx(1 / (1 + raw.semgrad))  # uncalibrated: an ordering
    assert headline(calibrated, "semgrad") == 0.8
    assert trusted(raw, None, "semgrad") is None
    assert trusted(calibrated, None, "semgrad") is True
    risky = raw.model_copy(update={"risk": 0.9, "confidence": 0.1, "low_confidence": True})
    assert trusted(risky, None, "semgrad") is False


def test_decision_arguments_are_checked_at_construction() -> None:
    with pytest.raises(ValueError, match=r"SemGradEvaluator\(\.\.\., max_risk=0\.2\)"):
        SemGradEvaluator(threshold=0.2, threshold_field="semgrad")
    with pytest.raises(ValueError, match="threshold_field="):
        SemGradEvaluator(threshold=2e-5)
    with pytest.raises(ValueError, match="not a probability"):
        SemGradEvaluator(max_risk=2.0)
    with pytest.raises(ValueError, match="not both"):
        SemGradEvaluator(max_risk=0.2, threshold=2e-5, threshold_field="semgrad")
    SemGradEvaluator(threshold=2e-5, threshold_field="semgrad")
    SemGradEvaluator(threshold=0.5, threshold_field="ln_nll")  # a per-token NLL: 0.5 is on its scale


def test_score_is_a_confidence_and_passing_decides_on_it() -> None:
    raw = Score(model="m", semgrad=2e-5, ln_nll=0.7, position=3)
    for low, high in ((headline(raw, "semgrad", 1e-5), headline(raw, "semgrad", 4e-5)),):
        assert low is not None and high is not None and low < 0.5 < high  # higher = more trustworthy
    assert trusted(raw, 1e-5, "semgrad") is False and trusted(raw, 4e-5, "semgrad") is True
    calibrated = raw.model_copy(update={"risk": 0.3, "confidence": 0.7, "low_confidence": False})
    assert headline(calibrated, None) == 0.7
    assert trusted(calibrated, None, None, max_risk=0.2) is False
    assert trusted(calibrated, None, None, max_risk=0.3) is True
    assert trusted(raw, None, None, max_risk=0.3) is None  # max_risk needs a calibration


def test_max_risk_decides_on_the_calibrated_risk(li_scorer: SemGradScorer) -> None:
    strict = SemGradEvaluator(scorer=li_scorer, max_risk=0.0).evaluate(query=QUERY, response=ANSWER)
    lax = SemGradEvaluator(scorer=li_scorer, max_risk=1.0).evaluate(query=QUERY, response=ANSWER)
    assert (strict.passing, lax.passing) == (False, True)
    assert strict.score == lax.score and 0.0 < (strict.score or 0.0) < 1.0
    assert "max_risk 0" in strict.feedback
