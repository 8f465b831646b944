"""Malformed arguments to SemGradEvaluator raise one typed error naming the argument (no model needed)."""

from typing import Any

import pytest
from llama_index.evaluation.semgrad import SemGradEvaluator
from llama_index.evaluation.semgrad.base import SemGradInputError

from semgrad_guard import Score, SemGradScorer
from semgrad_guard.prompts import Prompt

QUERY = "Who founded Harbor Lane Library?"
ANSWER = "Edith Marlow."


class RecordingScorer(SemGradScorer):
    """Keeps every (prompt, answer) it is asked to score; never loads a model."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Prompt, str]] = []

    def score(self, prompt: Prompt, answer: str, *, errors: Any = "raise") -> Score:
        self.calls.append((prompt, answer))
        return Score(model="recording", semgrad=1.0)

    async def ascore(self, prompt: Prompt, answer: str, *, errors: Any = "raise") -> Score:
        return self.score(prompt, answer, errors=errors)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"query": QUERY, "contexts": "Harbor Lane Library was founded in 1921."}, "contexts"),
        ({"query": QUERY, "contexts": [None]}, "contexts[0]"),
        ({"query": QUERY, "contexts": ["fine", 42]}, "contexts[1]"),
        ({"query": QUERY, "contexts": {"text": "a mapping"}}, "contexts"),
        ({"prompt": [{"role": "user"}]}, "prompt[0] has no content"),
        ({"prompt": [{"content": "Hi"}]}, "prompt[0] has no role"),
        ({"prompt": [{"role": "user", "content": None}]}, "prompt[0]"),
        ({"prompt": ["just text"]}, "prompt[0]"),
        ({"prompt": {"role": "user", "content": "Hi"}}, "prompt"),
        ({"prompt": 5}, "prompt"),
    ],
)
def test_malformed_arguments_raise_a_typed_error(kwargs: dict[str, Any], needle: str) -> None:
    assert issubclass(SemGradInputError, ValueError)
    scorer = RecordingScorer()
    evaluator = SemGradEvaluator(scorer=scorer)
    with pytest.raises(SemGradInputError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        evaluator.evaluate(response=ANSWER, **kwargs)
    with pytest.raises(SemGradInputError):
        evaluator.scored_prompt(kwargs.get("query"), kwargs.get("contexts"), kwargs.get("prompt"))
    assert scorer.calls == []  # nothing was scored


def test_the_closed_book_evaluator_checks_contexts_too() -> None:
    evaluator = SemGradEvaluator(scorer=RecordingScorer(), use_contexts=False)
    with pytest.raises(SemGradInputError, match="contexts"):
        evaluator.evaluate(query=QUERY, response=ANSWER, contexts="one string")


def test_well_formed_arguments_still_score() -> None:
    scorer = RecordingScorer()
    evaluator = SemGradEvaluator(scorer=scorer)
    result = evaluator.evaluate(query=QUERY, response=ANSWER, contexts=("one", "two"))
    assert not result.invalid_result and result.contexts == ["one", "two"]
    given = [{"role": "user", "content": QUERY, "name": "ignored"}]
    assert evaluator.evaluate(response=ANSWER, prompt=given).score == 0.5  # uncalibrated: 1 / (1 + semgrad)
    assert scorer.calls[-1] == ([{"role": "user", "content": QUERY}], ANSWER)
