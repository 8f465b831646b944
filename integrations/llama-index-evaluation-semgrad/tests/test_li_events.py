import asyncio

import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, CompletionResponse
from llama_index.core.instrumentation.events.llm import LLMChatEndEvent, LLMCompletionEndEvent
from llama_index.evaluation.semgrad import (
    SemGradEvaluator,
    SemGradEventHandler,
    SemGradLocalLLM,
)
from llama_index.evaluation.semgrad._prompts import to_scorer_prompt
from llama_index_instrumentation import get_dispatcher

from semgrad_guard import Score, SemGradScorer

pytestmark = pytest.mark.slow


def test_sync_query_scores_each_llm_call_once(
    li_index: VectorStoreIndex, li_llm: SemGradLocalLLM, li_scorer: SemGradScorer, li_events, li_register
) -> None:
    li_register(SemGradEventHandler(scorer=li_scorer, reuse_attached_scores=False, llm=li_llm))
    query = "When was Harbor Lane Library founded?"
    response = li_index.as_query_engine(llm=li_llm, similarity_top_k=1).query(query)

    chat_ends = li_events.of("LLMChatEndEvent")
    scores = li_events.of("SemGradScoreEvent")
    assert len(chat_ends) == 1
    assert sorted(event.source for event in scores) == ["llm_chat", "query"]
    llm_score = next(event for event in scores if event.source == "llm_chat")
    assert llm_score.source_event_id == chat_ends[0].id_ and llm_score.span_id == chat_ends[0].span_id
    assert llm_score.prompt == to_scorer_prompt(chat_ends[0].messages)
    assert llm_score.answer == chat_ends[0].response.message.content
    assert llm_score.score.valid and not llm_score.reused
    assert li_events.threads[li_events.events.index(llm_score)] == "MainThread"  # sync path: inline

    # the evaluator rebuilds exactly the prompt the LLM saw, so it gives the same score
    evaluation = SemGradEvaluator(scorer=li_scorer, llm=li_llm).evaluate_response(
        query=query, response=response
    )
    assert evaluation.score == pytest.approx(llm_score.score.confidence, rel=1e-9)  # a confidence
    query_score = next(event for event in scores if event.source == "query")
    assert query_score.score.confidence == pytest.approx(evaluation.score, rel=1e-9)
    assert query_score.score.semgrad == pytest.approx(llm_score.score.semgrad, rel=1e-9)


def test_async_query_is_scored_in_the_background(
    li_index: VectorStoreIndex, li_llm: SemGradLocalLLM, li_scorer: SemGradScorer, li_events, li_register
) -> None:
    handler = li_register(
        SemGradEventHandler(scorer=li_scorer, reuse_attached_scores=False, score_queries=False)
    )
    engine = li_index.as_query_engine(llm=li_llm, similarity_top_k=1)
    asyncio.run(engine.aquery("What is the cafe at Harbor Lane Library called?"))
    handler.flush(timeout=120)

    chat_ends = li_events.of("LLMChatEndEvent")
    scores = li_events.of("SemGradScoreEvent")
    assert len(chat_ends) == 1 and len(scores) == 1
    assert scores[0].source == "llm_chat" and scores[0].source_event_id == chat_ends[0].id_
    assert li_events.threads[li_events.events.index(scores[0])].startswith("semgrad-events")
    expected = li_scorer.score(scores[0].prompt, scores[0].answer)
    assert scores[0].score.semgrad == pytest.approx(expected.semgrad, rel=1e-9)
    handler.close()


def _chat_end(answer: str, extras: dict | None = None) -> LLMChatEndEvent:
    return LLMChatEndEvent(
        messages=[ChatMessage(role="user", content="What is the capital of Japan?")],
        response=ChatResponse(
            message=ChatMessage(role="assistant", content=answer), additional_kwargs=extras or {}
        ),
    )


def test_own_events_do_not_recurse_and_errors_never_reach_the_pipeline(li_events, li_register) -> None:
    class Exploding(SemGradScorer):
        def score(self, *args: object, **kwargs: object) -> Score:
            raise RuntimeError("boom")

    li_register(SemGradEventHandler(scorer=Exploding()))
    get_dispatcher().event(_chat_end("Tokyo"))  # would raise out of a handler if not caught
    scores = li_events.of("SemGradScoreEvent")
    assert len(scores) == 1  # its own SemGradScoreEvent reached it and was not scored again
    assert not scores[0].score.valid and scores[0].score.invalid_reason == "error: RuntimeError: boom"


def test_attached_scores_are_reused_and_completions_scored(
    li_scorer: SemGradScorer, li_events, li_register
) -> None:
    li_register(SemGradEventHandler(scorer=li_scorer))
    attached = Score.invalid("marker: attached", model="x").model_copy(update={"valid": True, "semgrad": 1.0})
    get_dispatcher().event(_chat_end("Tokyo", {"semgrad": attached}))
    get_dispatcher().event(
        LLMCompletionEndEvent(
            prompt="What is the capital of Japan?", response=CompletionResponse(text="Tokyo")
        )
    )
    reused, completion = li_events.of("SemGradScoreEvent")
    assert reused.reused and reused.score is attached
    assert completion.source == "llm_completion" and not completion.reused
    direct = li_scorer.score("What is the capital of Japan?", "Tokyo")
    assert completion.score.semgrad == pytest.approx(direct.semgrad, rel=1e-9)


def test_handler_ignores_other_events_and_empty_responses(li_scorer: SemGradScorer, li_events) -> None:
    handler = SemGradEventHandler(scorer=li_scorer, score_llm_calls=False)
    handler.handle(_chat_end("Tokyo"))
    handler.handle(LLMChatEndEvent(messages=[], response=None))
    assert li_events.of("SemGradScoreEvent") == []
