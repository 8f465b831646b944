"""Route low-confidence answers to another runnable: ``policy="fallback"``, and ``"raise"`` + with_fallbacks.

Offline there is no bigger model to call, so the "bigger model" here is a stand-in chain: the same embedded
SmolLM2 behind a careful system prompt with a longer answer budget. In production it would be a larger
local model or a remote provider. Run from the repository root: ``python examples/langchain_fallback.py``.
"""

import time

from langchain_core.messages import AIMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_local_model import local_chat_model
from langchain_semgrad import GuardResult, LowConfidenceError, SemGradGuard

THRESHOLD = 4.4e-5  # median SemGrad of the benchmark answers (docs/calibration.md); calibrate for real use

QUESTIONS = ["What is the capital of France?", "Who painted the Mona Lisa?", "What is the square root of 2?"]


def main() -> None:
    start = time.perf_counter()
    small = local_chat_model(max_new_tokens=16)
    careful = ChatPromptTemplate.from_messages(
        [("system", "You are a careful expert. Answer accurately in one sentence."), ("human", "{question}")]
    )
    bigger = RunnableLambda(lambda question: {"question": question}) | careful | local_chat_model(48)

    print("1. policy='fallback': the small model answers; an unsure answer goes to the bigger chain.")
    guarded = SemGradGuard(
        small, policy="fallback", fallback=bigger, threshold=THRESHOLD, threshold_field="semgrad"
    )
    for question in QUESTIONS:
        message = guarded.invoke(question)
        result = GuardResult.model_validate(message.response_metadata["semgrad"])
        first = result.score.semgrad if result.score else float("nan")
        final = result.final_score.semgrad if result.final_score else float("nan")
        print(f"   {question}\n     route={result.route} semgrad first={first:.2e} final={final:.2e}")
        print(f"     A: {message.text.strip()!r}")

    print(
        "\n2. policy='raise' + with_fallbacks: LangChain's own fallback machinery catches LowConfidenceError."
    )
    strict = SemGradGuard(small, policy="raise", threshold=THRESHOLD, threshold_field="semgrad")
    polite = RunnableLambda(lambda _: AIMessage("I'm not sure enough to answer that."))
    chain = strict.with_fallbacks([polite], exceptions_to_handle=(LowConfidenceError,))
    for question in QUESTIONS:
        print(f"   {question} -> {chain.invoke(question).text.strip()!r}")
    print(f"\n{time.perf_counter() - start:.1f} s in all.")


if __name__ == "__main__":
    main()
