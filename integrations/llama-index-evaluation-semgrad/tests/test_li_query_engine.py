import asyncio
import json
from typing import Any

import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.base.response.schema import AsyncStreamingResponse, Response, StreamingResponse
from llama_index.core.bridge.pydantic import Field
from llama_index.core.query_engine import CustomQueryEngine
from llama_index.evaluation.semgrad import SemGradEvaluator, SemGradLocalLLM, SemGradQueryEngine

from semgrad_guard import NoThresholdError, Score, SemGradScorer

# The same pair scored in passes of other shapes differs by float32 summation order: up to 1e-3
# relative between two float32 runs (measured drift, docs/method.md "Precision").
FLOAT32_DRIFT = 1e-3

pytestmark = pytest.mark.slow


class Fixed(CustomQueryEngine):
    """Answers every query with ``answer`` (or echoes the query) and keeps what it returned."""

    answer: str | None = None
    returned: list[Any] = Field(default_factory=list)

    def custom_query(self, query_str: str) -> Response:
        text = self.answer if self.answer is not None else f"It is {query_str.split()[-1]}"
        response = Response(response=text, metadata={"engine": text})
        self.returned.append(response)
        return response


def test_wrapper_scores_the_prompt_the_llm_saw(
    li_index: VectorStoreIndex, li_llm: SemGradLocalLLM, li_scorer: SemGradScorer
) -> None:
    engine = SemGradQueryEngine(
        li_index.as_query_engine(llm=li_llm, similarity_top_k=1), scorer=li_scorer, max_risk=1.0
    )
    query = "How many books can a member borrow?"
    sync, async_ = engine.query(query), asyncio.run(engine.aquery(query))
    for response in (sync, async_):
        json.dumps(response.metadata)  # JSON only: tracers and docstores can store it
        score = Score.model_validate(response.metadata["semgrad"])
        assert score.valid
        assert response.metadata["semgrad_route"] == "primary"
        assert response.metadata["semgrad_prompt"] == "recorded"  # also through aquery's tasks and threads
    rebuilt = SemGradEvaluator(scorer=li_scorer, llm=li_llm).evaluate_response(query=query, response=sync)
    assert sync.metadata["semgrad"]["confidence"] == pytest.approx(rebuilt.score, rel=1e-9)
    assert async_.response == sync.response  # greedy: the same answer, so the same score
    assert async_.metadata["semgrad"]["confidence"] == pytest.approx(rebuilt.score, rel=1e-9)


def test_untrusted_answers_go_to_the_fallback(li_scorer: SemGradScorer) -> None:
    primary = Fixed(answer="The library opens at noon.", returned=[])
    fallback = Fixed(answer="Please ask a librarian.", returned=[])
    guarded = SemGradQueryEngine(primary, scorer=li_scorer, max_risk=0.0, fallback_query_engine=fallback)
    response = guarded.query("When does the library open on Saturdays?")
    assert response.response == "Please ask a librarian."
    assert response.metadata["semgrad_route"] == "fallback"
    assert response.metadata["semgrad_primary_answer"] == "The library opens at noon."
    assert response.metadata["engine"] == "Please ask a librarian."
    assert response.metadata["semgrad_prompt"] == "query only"
    expected = li_scorer.score("When does the library open on Saturdays?", "The library opens at noon.")
    assert response.metadata["semgrad"]["semgrad"] == pytest.approx(expected.semgrad, rel=1e-9)
    assert primary.returned[0].metadata == {"engine": "The library opens at noon."}  # not mutated
    assert fallback.returned[0].metadata == {"engine": "Please ask a librarian."}

    trusting = SemGradQueryEngine(primary, scorer=li_scorer, max_risk=1.0, fallback_query_engine=fallback)
    kept = asyncio.run(trusting.aquery("When does the library open on Saturdays?"))
    assert kept.response == "The library opens at noon." and kept.metadata["semgrad_route"] == "primary"
    assert len(fallback.returned) == 1


def test_no_threshold_with_a_fallback_raises(li_scorer: SemGradScorer) -> None:
    assert li_scorer.calibration is not None
    thresholdless = li_scorer.calibration.model_copy(update={"threshold": None})  # as the embedded bundle
    for calibration in (None, thresholdless):
        scorer = SemGradScorer((li_scorer.model, li_scorer.tokenizer), calibration=calibration)
        guarded = SemGradQueryEngine(
            Fixed(answer="Noon.", returned=[]), scorer=scorer, fallback_query_engine=Fixed()
        )
        with pytest.raises(NoThresholdError):
            guarded.query("When does it open?")
    unguarded = SemGradQueryEngine(Fixed(answer="Noon.", returned=[]), scorer=li_scorer)
    assert unguarded.query("When does it open?").metadata["semgrad_route"] == "primary"


def test_invalid_answers_follow_fallback_on_invalid(li_scorer: SemGradScorer) -> None:
    empty, fallback = Fixed(answer="  ", returned=[]), Fixed(answer="Ask a librarian.", returned=[])
    keep = SemGradQueryEngine(empty, scorer=li_scorer, max_risk=1.0, fallback_query_engine=fallback)
    kept = keep.query("When does it open?")
    assert kept.metadata["semgrad_route"] == "primary"
    assert kept.metadata["semgrad"]["invalid_reason"].startswith("empty_answer:")
    route = SemGradQueryEngine(
        empty, scorer=li_scorer, max_risk=1.0, fallback_query_engine=fallback, fallback_on_invalid=True
    )
    assert route.query("When does it open?").response == "Ask a librarian."


def test_concurrent_queries_keep_their_own_scores(li_scorer: SemGradScorer) -> None:
    guarded = SemGradQueryEngine(Fixed(returned=[]), scorer=li_scorer)
    queries = ["Which city is the capital of Japan", "Which city is the capital of France"]

    async def run() -> list[Any]:
        return list(await asyncio.gather(*(guarded.aquery(q) for q in queries)))

    for query, response in zip(queries, asyncio.run(run()), strict=True):
        assert response.response == f"It is {query.split()[-1]}"
        expected = li_scorer.score(query, response.response)
        # concurrent queries share a padded pass: equal to batched-scoring precision
        assert response.metadata["semgrad"]["semgrad"] == pytest.approx(expected.semgrad, rel=FLOAT32_DRIFT)


def test_nested_guards_keep_each_others_records(li_scorer: SemGradScorer) -> None:
    inner = SemGradQueryEngine(Fixed(returned=[]), scorer=li_scorer, name="inner")
    outer = SemGradQueryEngine(inner, scorer=li_scorer, name="outer")
    response = outer.query("Which city is the capital of Italy")
    records = response.metadata["semgrad_guards"]
    assert [record["name"] for record in records] == ["inner", "outer"]
    assert all(record["route"] == "primary" and record["score"]["valid"] for record in records)
    assert records[1]["score"]["reused"] is True  # the same pair: one pass, shared
    assert json.loads(json.dumps(response.metadata)) == response.metadata


def test_query_engine_refuses_a_risk_given_as_a_raw_threshold(li_scorer: SemGradScorer) -> None:
    with pytest.raises(ValueError, match=r"max_risk=0\.3"):
        SemGradQueryEngine(Fixed(returned=[]), scorer=li_scorer, threshold=0.3, threshold_field="semgrad")
    with pytest.raises(ValueError, match="threshold_field="):
        SemGradQueryEngine(Fixed(returned=[]), scorer=li_scorer, threshold=2e-5)


class Streaming(CustomQueryEngine):
    """Streams a fixed answer word by word (no LLM call)."""

    answer: str = "The library opens at noon."

    def custom_query(self, query_str: str) -> StreamingResponse:
        return StreamingResponse(response_gen=(f"{word} " for word in self.answer.split()))


def test_a_streamed_answer_is_scored_when_the_stream_ends(
    li_index: VectorStoreIndex, li_llm: SemGradLocalLLM, li_scorer: SemGradScorer
) -> None:
    query = "When was Harbor Lane Library founded?"
    inner = li_index.as_query_engine(llm=li_llm, similarity_top_k=1, streaming=True)
    engine = SemGradQueryEngine(inner, scorer=li_scorer, max_risk=1.0)
    streamed = engine.query(query)
    assert isinstance(streamed, StreamingResponse) and "semgrad" not in (streamed.metadata or {})
    text = "".join(streamed.response_gen)  # the tokens reach the caller first, then the score lands
    assert streamed.metadata is not None and streamed.metadata["semgrad_prompt"] == "recorded"
    plain = SemGradQueryEngine(li_index.as_query_engine(llm=li_llm, similarity_top_k=1), scorer=li_scorer)
    reference = plain.query(query)
    assert text.strip() == (reference.response or "").strip()  # greedy: the same answer
    assert streamed.metadata["semgrad"]["semgrad"] == pytest.approx(reference.metadata["semgrad"]["semgrad"])

    async def consume() -> tuple[AsyncStreamingResponse, str]:
        response = await engine.aquery(query)
        assert isinstance(response, AsyncStreamingResponse)
        return response, "".join([token async for token in response.async_response_gen()])

    async_streamed, async_text = asyncio.run(consume())
    assert async_text == text and async_streamed.metadata is not None
    assert async_streamed.metadata["semgrad_prompt"] == "recorded"
    assert async_streamed.metadata["semgrad"]["semgrad"] == streamed.metadata["semgrad"]["semgrad"]


def test_a_streamed_answer_with_a_fallback_is_scored_before_it_is_shown(li_scorer: SemGradScorer) -> None:
    fallback = Fixed(answer="Please ask a librarian.", returned=[])
    routed = SemGradQueryEngine(Streaming(), scorer=li_scorer, max_risk=0.0, fallback_query_engine=fallback)
    response = routed.query("When does the library open?")
    assert isinstance(response, Response) and response.response == "Please ask a librarian."
    assert response.metadata["semgrad_primary_answer"].strip() == "The library opens at noon."
    kept = SemGradQueryEngine(Streaming(), scorer=li_scorer, max_risk=1.0, fallback_query_engine=fallback)
    replayed = kept.query("When does the library open?")
    assert isinstance(replayed, StreamingResponse) and replayed.metadata is not None
    assert replayed.metadata["semgrad_route"] == "primary" and replayed.metadata["semgrad"]["valid"]
    assert "".join(replayed.response_gen).strip() == "The library opens at noon."


def test_wrapper_and_handler_cost_one_pass_per_distinct_pair(
    li_index: VectorStoreIndex, li_scorer: SemGradScorer, li_register, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llama_index.core.llms import MockLLM
    from llama_index.evaluation.semgrad import SemGradEventHandler

    passes: list[int] = []
    keys: list[Any] = []
    run, claim = li_scorer._batcher._run, li_scorer._reuse.claim
    monkeypatch.setattr(li_scorer._batcher, "_run", lambda pairs: passes.append(len(pairs)) or run(pairs))
    monkeypatch.setattr(li_scorer._reuse, "claim", lambda key: keys.append(key) or claim(key))
    llm = MockLLM(max_tokens=6)  # no self-score attached: every adapter asks the scorer
    li_register(SemGradEventHandler(scorer=li_scorer, llm=llm))
    engine = SemGradQueryEngine(li_index.as_query_engine(llm=llm, similarity_top_k=1), scorer=li_scorer)
    response = engine.query("How many books can a member borrow?")
    # the handler (LLM call, inner query, wrapper query) and the wrapper ask about one pair: one pass
    assert len(keys) >= 3 and len(set(keys)) == 1 and passes == [1]
    assert response.metadata["semgrad_prompt"] == "recorded" and response.metadata["semgrad"]["reused"]
