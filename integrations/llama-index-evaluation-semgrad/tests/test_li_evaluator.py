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
    assert result.score == pytest.approx(direct.semgrad, rel=1e-6)
    assert result.passing is None  # neither threshold nor calibration
    assert f"position={direct.position}" in result.feedback
    assert li_scorer.model_name in result.feedback and "semgrad=" in result.feedback
    assert result.query == QUERY and result.response == ANSWER and result.contexts == [CONTEXT]


def test_threshold_decides_passing_with_the_cores_rule(li_scorer: SemGradScorer) -> None:
    raw = li_scorer.score(SemGradEvaluator(scorer=li_scorer).scored_prompt(QUERY, [CONTEXT])[0], ANSWER)
    assert raw.semgrad is not None
    low = SemGradEvaluator(scorer=li_scorer, threshold=raw.semgrad * 0.5)
    high = SemGradEvaluator(scorer=li_scorer, threshold=raw.semgrad * 2.0)
    assert low.evaluate(query=QUERY, response=ANSWER, contexts=[CONTEXT]).passing is False
    assert high.evaluate(query=QUERY, response=ANSWER, contexts=[CONTEXT]).passing is True
    entropy = SemGradEvaluator(scorer=li_scorer, threshold=1e9, score_field="mean_entropy")
    result = entropy.evaluate(query=QUERY, response=ANSWER, contexts=[CONTEXT])
    assert result.passing is True and result.score == pytest.approx(raw.mean_entropy, rel=1e-6)
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
    empty = SemGradEvaluator(scorer=li_scorer, threshold=1.0).evaluate(query=QUERY, response="   ")
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
    assert headline(raw, "semgrad") == raw.semgrad
    assert headline(calibrated, "semgrad") == 0.8
    assert trusted(raw, None, "semgrad") is None
    assert trusted(calibrated, None, "semgrad") is True
    risky = raw.model_copy(update={"risk": 0.9, "confidence": 0.1, "low_confidence": True})
    assert trusted(risky, None, "semgrad") is False
