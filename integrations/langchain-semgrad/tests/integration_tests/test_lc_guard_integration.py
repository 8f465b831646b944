"""SemGradGuard on real chains: the embedded SmolLM2 answers (ChatHuggingFace) and scores itself."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.runnables import RunnableLambda
from langchain_semgrad import GuardResult, LowConfidenceError, ReviewQueue, SemGradGuard

from semgrad_guard import SemGradScorer

# The same pair scored in passes of other shapes differs by float32 summation order: up to 1e-3
# relative between two float32 runs (measured drift, docs/method.md "Precision").
FLOAT32_DRIFT = 1e-3

pytestmark = pytest.mark.slow

ALWAYS, NEVER = 0.0, 1.0  # max_risk values (calibrated) that flag every answer / no answer (routing tests)
QUESTION = "When was the Eiffel Tower completed?"


def result_of(message: Any) -> GuardResult:
    return GuardResult.model_validate(message.response_metadata["semgrad"])


def test_message_in_message_out_with_the_real_score(chat, scorer) -> None:
    messages = [
        SystemMessage("Answer in one short sentence."),
        HumanMessage("What is the capital of France?"),
    ]
    out = SemGradGuard(chat, max_risk=ALWAYS).invoke(messages)  # no scorer=: the shared default
    assert isinstance(out, AIMessage) and out.text.strip()
    result = result_of(out)
    assert (result.route, result.flagged, result.low_confidence) == ("annotate", True, True)
    prompt = [{"role": "system", "content": messages[0].text}, {"role": "user", "content": messages[1].text}]
    direct = scorer.score(prompt, out.text)
    assert result.score is not None and result.score.semgrad == pytest.approx(
        direct.semgrad, rel=FLOAT32_DRIFT
    )


def test_str_in_str_out(chat) -> None:
    out = SemGradGuard(chat | StrOutputParser(), max_risk=NEVER).invoke("Name a primary color.")
    assert isinstance(out, str) and out.strip()


def test_retrieve_only_when_unsure(chat, vector_store) -> None:
    asked: list[str] = []
    spy = RunnableLambda(lambda q: asked.append(q) or q)
    retriever = spy | vector_store.as_retriever(search_kwargs={"k": 2})
    confident = SemGradGuard(chat, policy="retrieve", retriever=retriever, max_risk=NEVER).invoke(QUESTION)
    assert result_of(confident).route == "pass" and asked == []
    out = SemGradGuard(chat, policy="retrieve", retriever=retriever, max_risk=ALWAYS).invoke(QUESTION)
    result = result_of(out)
    assert asked == [QUESTION] and result.route == "retrieve" and result.documents is not None
    assert len(result.documents) == 2 and any("Eiffel" in doc.page_content for doc in result.documents)
    assert result.score is not None and result.final_score is not None
    assert result.final_score.n_prompt_tokens > result.score.n_prompt_tokens  # scored with its context


@pytest.mark.asyncio
async def test_fallback_async(chat, short_chat) -> None:
    guard = SemGradGuard(chat, policy="fallback", fallback=short_chat, max_risk=ALWAYS)
    out = await guard.ainvoke("Name a large animal.")
    result = result_of(out)
    assert isinstance(out, AIMessage) and result.route == "fallback"
    assert (
        result.final_score is not None
        and result.final_score.n_answer_tokens <= 7 < result.score.n_answer_tokens
    )


@pytest.mark.asyncio
async def test_human_review_async_survives_restart(chat, tmp_path) -> None:
    path = tmp_path / "review.sqlite3"
    guard = SemGradGuard(chat, policy="human", review_queue=ReviewQueue(path), max_risk=ALWAYS)
    out = await guard.ainvoke("Who wrote Hamlet?")
    assert isinstance(out, AIMessage) and out.text == guard.holding_answer
    (item,) = ReviewQueue(path).items()  # a new queue object on the same file: a restart
    assert (
        item.id == result_of(out).review_id
        and item.prompt == [{"role": "user", "content": "Who wrote Hamlet?"}]  # what the model received
        and item.score is not None
    )
    ReviewQueue(path).resolve(item.id, "William Shakespeare")
    assert ReviewQueue(path).items() == []


def test_raise_then_with_fallbacks(chat) -> None:
    guard = SemGradGuard(chat, policy="raise", max_risk=ALWAYS)
    with pytest.raises(LowConfidenceError) as caught:
        guard.invoke("Name a planet.")
    assert isinstance(caught.value.answer, AIMessage) and caught.value.result.score is not None
    safe = guard.with_fallbacks([RunnableLambda(lambda _: AIMessage("I am not sure."))])
    assert safe.invoke("Name a planet.").text == "I am not sure."


@pytest.mark.asyncio
async def test_batch_and_abatch_with_concurrency_match_direct_scores(chat, scorer) -> None:
    questions = ["What is 2 + 2?", "Name a fruit.", "What color is the sky?"]
    guard = SemGradGuard(chat, max_risk=NEVER)
    sync = guard.batch(questions, {"max_concurrency": 3})
    async_ = await guard.abatch(questions, {"max_concurrency": 3})
    assert [m.text for m in sync] == [m.text for m in async_]
    for question, message in zip(questions, async_, strict=True):
        score = result_of(message).score
        assert score is not None
        assert score.semgrad == pytest.approx(scorer.score(question, message.text).semgrad, rel=FLOAT32_DRIFT)


def test_stream_buffers_scores_then_streams_the_fallback(chat, short_chat) -> None:
    guard = SemGradGuard(chat, policy="fallback", fallback=short_chat, max_risk=ALWAYS)
    chunks = list(guard.stream("Name a country in Europe."))
    assert len(chunks) > 2 and all(isinstance(chunk, AIMessageChunk) for chunk in chunks)
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole += chunk
    result = result_of(whole)
    assert result.route == "fallback" and result.score is not None and result.final_score is not None
    assert whole.text == short_chat.invoke("Name a country in Europe.").text


@pytest.mark.asyncio
async def test_astream_annotate(chat) -> None:
    chunks = [c async for c in SemGradGuard(chat, max_risk=ALWAYS).astream("Name a month.")]
    assert len(chunks) == 1 and result_of(chunks[0]).route == "annotate"


@pytest.mark.parametrize(("mode", "route"), [("fail_open", "pass"), ("fail_closed", "fallback")])
def test_scorer_failure_policies(chat, scorer, mode, route, caplog) -> None:
    tiny = SemGradScorer((scorer.model, scorer.tokenizer), max_length=8)  # every pair is too long: it raises
    fallback = RunnableLambda(lambda _: AIMessage("fallback answer"))
    guard = SemGradGuard(
        chat, policy="fallback", fallback=fallback, scorer=tiny, max_risk=NEVER, on_scorer_error=mode
    )
    out = guard.invoke("Name a bird.")
    result = result_of(out)
    assert (result.route, result.flagged, result.score) == (route, True, None)
    assert "InputTooLongError" in (result.scorer_error or "") and mode in caplog.text + result.scorer_error
    assert (out.text == "fallback answer") == (mode == "fail_closed")


def test_scorer_timeout_fails_open(chat) -> None:
    out = SemGradGuard(chat, max_risk=NEVER, scorer_timeout=1e-4).invoke("Name a tree.")
    result = result_of(out)
    assert result.route == "pass" and result.flagged and "TimeoutError" in (result.scorer_error or "")


def test_lcel_rag_chain_wrapped_whole_scores_the_prompt_with_context(chat, scorer, vector_store) -> None:
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnablePassthrough

    def format_docs(docs: list[Any]) -> str:
        return "\n\n".join(doc.page_content for doc in docs)

    template = ChatPromptTemplate.from_messages(
        [("system", "Answer from this context: {context}"), ("human", "{question}")]
    )
    retriever = vector_store.as_retriever(search_kwargs={"k": 2})
    chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | template | chat
    out = SemGradGuard(chain, max_risk=NEVER).invoke(QUESTION)
    result = result_of(out)
    assert result.scored_prompt_source == "model_call" and result.score is not None
    context = format_docs(retriever.invoke(QUESTION))
    received = [
        {"role": "system", "content": f"Answer from this context: {context}"},
        {"role": "user", "content": QUESTION},
    ]
    assert result.scored_prompt == received
    with_context = scorer.score(received, out.text).n_prompt_tokens
    bare = scorer.score(QUESTION, out.text).n_prompt_tokens
    assert result.scored_prompt_tokens == with_context and bare is not None and with_context > bare


def count_passes(scorer: SemGradScorer, monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], list[Any]]:
    """Spy on the scorer: the pairs each pass held, and every pair key asked for (reused or not)."""
    passes: list[int] = []
    keys: list[Any] = []
    run, claim = scorer._batcher._run, scorer._reuse.claim

    def counted_run(pairs: list[Any]) -> Any:
        passes.append(len(pairs))
        return run(pairs)

    def counted_claim(key: Any) -> Any:
        keys.append(key)
        return claim(key)

    monkeypatch.setattr(scorer._batcher, "_run", counted_run)
    monkeypatch.setattr(scorer._reuse, "claim", counted_claim)
    return passes, keys


def test_guard_and_handler_together_cost_one_pass_per_distinct_pair(chat, scorer, monkeypatch) -> None:
    from langchain_semgrad import SemGradCallbackHandler

    passes, keys = count_passes(scorer, monkeypatch)
    handler = SemGradCallbackHandler()  # the default scorer, as the guard's
    out = SemGradGuard(chat, max_risk=NEVER).invoke("Name a sea animal.", {"callbacks": [handler]})
    (observed,) = handler.results
    assert len(keys) == 2 and len(set(keys)) == 1 and passes == [1]  # two asks, one pair, one pass
    assert observed.score is not None and not observed.score.reused  # the handler scored on model end
    score = result_of(out).score
    assert score is not None and score.reused and score.semgrad == observed.score.semgrad


def test_fallback_answer_is_scored_against_the_fallback_prompt(chat, short_chat, scorer) -> None:
    as_messages = RunnableLambda(lambda q: [SystemMessage("Answer in a few words."), HumanMessage(q)])
    careful = as_messages | short_chat
    out = SemGradGuard(chat, policy="fallback", fallback=careful, max_risk=ALWAYS).invoke("Name a river.")
    result = result_of(out)
    received = [
        {"role": "system", "content": "Answer in a few words."},
        {"role": "user", "content": "Name a river."},
    ]
    assert (result.final_scored_prompt, result.final_scored_prompt_source) == (received, "model_call")
    assert result.final_score is not None and result.score is not None
    assert result.final_score.n_prompt_tokens == scorer.score(received, out.text).n_prompt_tokens
    # not the first model's prompt (a bare question gets the template's default system turn: longer)
    assert result.final_score.n_prompt_tokens != result.score.n_prompt_tokens


@pytest.mark.parametrize("kind", ["chat", "string"])
def test_prompt_templates_rebuild_the_scored_prompt(scorer, kind) -> None:
    from langchain_core.prompts import ChatPromptTemplate, PromptTemplate

    template: Any = (
        ChatPromptTemplate.from_messages([("system", "Be brief."), ("human", "Q: {question}")])
        if kind == "chat"
        else PromptTemplate.from_template("Q: {question}")
    )
    step = RunnableLambda(lambda _: AIMessage("Paris."))  # no LangChain model call to capture
    out = SemGradGuard(step, prompt=template, max_risk=NEVER).invoke({"question": "Capital of France?"})
    result = result_of(out)
    rendered = [
        *([{"role": "system", "content": "Be brief."}] if kind == "chat" else []),
        {"role": "user", "content": "Q: Capital of France?"},
    ]
    assert (result.scored_prompt, result.scored_prompt_source) == (rendered, "reconstructed")
    assert result.scored_prompt_tokens == scorer.score(rendered, "Paris.").n_prompt_tokens


def test_tracer_shows_the_route_of_a_string_chain(chat) -> None:
    from langchain_core.tracers.context import collect_runs

    with collect_runs() as collected:
        out = SemGradGuard(chat | StrOutputParser(), max_risk=ALWAYS).invoke("Name a colour.")
    assert isinstance(out, str)
    (run,) = collected.traced_runs
    (decision,) = [child for child in run.child_runs if child.name == "semgrad_decision"]
    assert decision.outputs is not None and decision.outputs["route"] == "annotate"
    assert "semgrad:annotate" in (decision.tags or [])
    assert decision.extra["metadata"]["semgrad_risk"] == decision.outputs["risk"] is not None
