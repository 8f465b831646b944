"""The guard scores the prompt the model actually received, whatever the chain's shape."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate
from langchain_core.runnables import RunnableLambda, RunnableParallel, RunnablePassthrough
from langchain_semgrad import GuardResult, LowConfidenceError, SemGradGuard

HARD, EASY = "a hard question", "an easy question"
TEMPLATE = ChatPromptTemplate.from_messages(
    [("system", "Answer from the context. Context: {context}"), ("human", "{question}")]
)


def result_of(message: AIMessage) -> GuardResult:
    return GuardResult.model_validate(message.response_metadata["semgrad"])


def format_docs(docs: list[Document]) -> str:
    return "\n".join(doc.page_content for doc in docs)


def rag_chain(chat: Any) -> Any:
    docs = RunnableLambda(lambda q: [Document(page_content=f"facts about {q}")])
    return {"context": docs | format_docs, "question": RunnablePassthrough()} | TEMPLATE | chat


RAG_PROMPT = [
    {"role": "system", "content": f"Answer from the context. Context: facts about {EASY}"},
    {"role": "user", "content": EASY},
]


def test_lcel_rag_chain_scores_the_prompt_the_model_received(chat, scorer) -> None:
    out = SemGradGuard(rag_chain(chat), scorer=scorer, threshold=1e-3, threshold_field="semgrad").invoke(EASY)
    result = result_of(out)
    assert scorer.calls == [(RAG_PROMPT, f"sure: {EASY}")]
    assert (result.scored_prompt, result.scored_prompt_source) == (RAG_PROMPT, "model_call")


@pytest.mark.asyncio
async def test_async_and_stream_capture_the_model_call_too(chat, scorer) -> None:
    guard = SemGradGuard(
        rag_chain(chat) | StrOutputParser(), scorer=scorer, threshold=1e-3, threshold_field="semgrad"
    )
    assert await guard.ainvoke(EASY) == f"sure: {EASY}"
    assert "".join(guard.stream(EASY)) == f"sure: {EASY}"
    assert [prompt for prompt, _ in scorer.calls] == [RAG_PROMPT, RAG_PROMPT]


def test_several_model_calls_score_the_one_that_gave_the_answer(chat, scorer) -> None:
    first, second = type(chat)(prefix="A "), type(chat)(prefix="B ")
    both = RunnableParallel(
        a=RunnableLambda(lambda q: f"first {q}") | first,
        b=RunnableLambda(lambda q: f"second {q}") | second,
    )
    pick_first = SemGradGuard(
        both | RunnableLambda(lambda d: d["a"]), scorer=scorer, threshold=1e-3, threshold_field="semgrad"
    )
    assert result_of(pick_first.invoke(EASY)).scored_prompt == [{"role": "user", "content": f"first {EASY}"}]
    # an answer no model call produced verbatim: the last call that ended
    chain = first | StrOutputParser() | second | RunnableLambda(lambda m: AIMessage(m.content.upper()))
    result = result_of(
        SemGradGuard(chain, scorer=scorer, threshold=1e-3, threshold_field="semgrad").invoke(EASY)
    )
    assert result.scored_prompt == [{"role": "user", "content": f"A sure: {EASY}"}]


def test_no_model_call_falls_back_to_the_input_and_says_so(scorer) -> None:
    step = RunnableLambda(lambda q: AIMessage(f"unsure about {q}"))
    result = result_of(
        SemGradGuard(step, scorer=scorer, threshold=1e-3, threshold_field="semgrad").invoke(HARD)
    )
    assert (result.scored_prompt, result.scored_prompt_source) == (HARD, "reconstructed")
    assert result.route == "annotate"


def test_rerouted_answers_score_their_own_model_call(chat, scorer) -> None:
    docs = RunnableLambda(lambda q: [Document(page_content="it is 42")])
    guard = SemGradGuard(
        chat, policy="retrieve", retriever=docs, scorer=scorer, threshold=1e-3, threshold_field="semgrad"
    )
    result = result_of(guard.invoke(HARD))
    assert result.scored_prompt == [{"role": "user", "content": HARD}]
    assert result.final_scored_prompt_source == "model_call"
    assert (
        result.final_scored_prompt is not None
        and "Text: it is 42" in result.final_scored_prompt[0]["content"]
    )
    assert scorer.calls[-1][0] == result.final_scored_prompt
    big = type(chat)(prefix="big ")
    chunks = list(
        SemGradGuard(
            chat, policy="fallback", fallback=big, scorer=scorer, threshold=1e-3, threshold_field="semgrad"
        ).stream(HARD)
    )
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole += chunk
    assert result_of(whole).final_scored_prompt == [{"role": "user", "content": HARD}]
    assert result_of(whole).final_scored_prompt_source == "model_call"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (
            ChatPromptTemplate.from_messages([("system", "Be brief."), ("human", "Q: {question}")]),
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Q: {HARD}"}],
        ),
        (PromptTemplate.from_template("Q: {question}"), [{"role": "user", "content": f"Q: {HARD}"}]),
    ],
)
def test_prompt_template_argument_renders_the_reconstruction(scorer, template, expected) -> None:
    step = RunnableLambda(lambda d: AIMessage(f"unsure about {d['question']}"))
    guard = SemGradGuard(step, prompt=template, scorer=scorer, threshold=1e-3, threshold_field="semgrad")
    assert guard.prompt is template
    result = result_of(guard.invoke({"question": HARD}))
    assert (result.scored_prompt, result.scored_prompt_source) == (expected, "reconstructed")


def test_prompt_argument_must_be_a_template(chat, scorer) -> None:
    with pytest.raises(TypeError, match="prompt template"):
        SemGradGuard(
            chat, prompt=RunnableLambda(lambda d: d), scorer=scorer, threshold=1e-3, threshold_field="semgrad"
        )


def test_timeout_message_says_what_happened(chat, make_scorer) -> None:
    guard = SemGradGuard(
        chat, scorer=make_scorer(delay=0.3), scorer_timeout=0.01, threshold=1e-3, threshold_field="semgrad"
    )
    error = result_of(guard.invoke(EASY)).scorer_error or ""
    assert "scorer_timeout=0.01" in error and error.startswith("TimeoutError: scoring took longer")


@pytest.mark.asyncio
async def test_async_timeout_message_says_what_happened(chat, make_scorer) -> None:
    guard = SemGradGuard(
        chat, scorer=make_scorer(delay=0.3), scorer_timeout=0.01, threshold=1e-3, threshold_field="semgrad"
    )
    error = result_of(await guard.ainvoke(EASY)).scorer_error or ""
    assert "scorer_timeout=0.01" in error


def test_a_risk_given_as_a_raw_gradient_threshold_is_refused(chat, scorer) -> None:
    with pytest.raises(ValueError, match=r"SemGradGuard\(\.\.\., max_risk=0\.5\)"):
        SemGradGuard(chat, scorer=scorer, threshold=0.5, threshold_field="semgrad")
    with pytest.raises(ValueError, match="threshold_field="):
        SemGradGuard(chat, scorer=scorer, threshold=2e-5)  # a raw threshold must name its field
    with pytest.raises(ValueError, match="not a probability"):
        SemGradGuard(chat, scorer=scorer, max_risk=1.5)
    with pytest.raises(ValueError, match="not both"):
        SemGradGuard(chat, scorer=scorer, max_risk=0.5, threshold=2e-5, threshold_field="semgrad")
    with pytest.raises(ValueError, match="cannot be right"):
        SemGradGuard(chat, scorer=scorer, threshold=-1.0, threshold_field="nll")
    SemGradGuard(chat, scorer=scorer, threshold=0.5, threshold_field="ln_nll")  # on that field's scale


def test_max_risk_decides_on_the_calibrated_risk(chat, make_scorer) -> None:
    calibrated = make_scorer(calibrated=True)  # risk 0.1 (sure) or 0.9 (unsure)
    assert result_of(SemGradGuard(chat, scorer=calibrated, max_risk=0.05).invoke(EASY)).route == "annotate"
    assert result_of(SemGradGuard(chat, scorer=calibrated, max_risk=0.95).invoke(HARD)).route == "pass"
    with pytest.raises(LowConfidenceError, match=r"risk=0\.9"):
        SemGradGuard(chat, policy="raise", scorer=calibrated, max_risk=0.5).invoke(HARD)


def test_max_risk_without_calibration_fails_clearly(chat, scorer) -> None:
    from semgrad_guard import NoThresholdError

    with pytest.raises(NoThresholdError, match="max_risk"):
        SemGradGuard(chat, scorer=scorer, max_risk=0.5).invoke(EASY)
