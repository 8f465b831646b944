"""A LangChain agent (``create_agent``) with two tools, guarded by ``SemGradMiddleware`` and a fallback.

Offline, on the embedded SmolLM2-135M-Instruct. Which parts are real and which are stand-ins:

- the agent loop, the tools, the middleware and the scorer are the real ones;
- SmolLM2 is too small to call tools, so ``ToolRouter`` (a fake chat model) decides the tool call by a
  rule (arithmetic goes to ``calculator``, the rest to ``lookup``); once the tool has answered, the embedded
  SmolLM2 writes the final answer from exactly the messages the middleware scores (``agent_prompt``);
- the fallback model is a stand-in too: it answers by quoting the tool result. In production it would be a
  larger model.

Run from the repository root: ``python examples/langchain_agent_guard.py`` (needs the ``agents`` extra:
``pip install "langchain-semgrad[agents]"``, and the test_integration group for the lookup's embeddings).
"""

from __future__ import annotations

import ast
import operator
import re
import time
from typing import Any, Literal

from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langchain_local_model import fact_store
from langchain_semgrad import GuardResult, SemGradMiddleware
from langchain_semgrad.middleware import agent_prompt
from pydantic import Field

from semgrad_guard import default_scorer

# Untrusted above the median raw SemGrad of the embedded model's calibration answers (docs/calibration.md):
# illustrative, not tuned for agent answers. (Its calibrated risks of these answers lie from 0.83 to 0.90.)
THRESHOLD = 4.4e-5
SYSTEM = "Answer the user's question in one short sentence, using the tool result."
QUESTIONS = [
    "What is 17 * 23?",
    "When was the Eiffel Tower completed?",
    "What is the capital city of Australia?",
    "Who was the first person to win Nobel Prizes in two different sciences?",
    "Who designed the Sydney Opera House?",  # not in the documents
    "How tall is Mount Kilimanjaro?",
]
_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    raise ValueError("only numbers and + - * / are allowed")


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression with + - * / (for example '17 * 23')."""
    value = _evaluate(ast.parse(expression, mode="eval").body)
    return f"{expression} = {value:g}"


_store = fact_store()


@tool
def lookup(query: str) -> str:
    """Find the passage of the example documents (examples/data/facts.txt) closest to the query."""
    return _store.similarity_search(query, k=1)[0].page_content


class ToolRouter(BaseChatModel):
    """Calls a tool by rule, then answers: with SmolLM2 (``"smollm2"``) or by quoting the tool result."""

    answer_with: Literal["smollm2", "tool_result"] = "smollm2"
    max_new_tokens: int = 32
    said: list[str] = Field(default_factory=list)
    """Every answer it gave (for the printout: the answer a fallback replaced)."""

    @property
    def _llm_type(self) -> str:
        return f"tool-router-{self.answer_with}"

    def bind_tools(self, tools: Any, **kwargs: Any) -> ToolRouter:  # type: ignore[override]
        return self  # the routing rule below knows the two tools

    def _generate(
        self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        results = [m.text for m in messages if isinstance(m, ToolMessage)]
        if not results:
            question = messages[-1].text
            arithmetic = re.search(r"\d[\d\s.]*[-+*/][\d\s.+*/-]*\d", question)
            name, args = (
                ("calculator", {"expression": arithmetic.group(0)})
                if arithmetic
                else ("lookup", {"query": question})
            )
            message = AIMessage("", tool_calls=[{"name": name, "args": args, "id": "call-1"}])
        elif self.answer_with == "tool_result":
            message = AIMessage(results[-1])
        else:  # the scorer's own model, from the very messages the middleware scores
            (text,) = default_scorer().generate(agent_prompt(messages), max_new_tokens=self.max_new_tokens)
            message = AIMessage(text.strip())
        if message.text:
            self.said.append(message.text)
        return ChatResult(generations=[ChatGeneration(message=message)])


def main() -> None:
    """Run the agent on each question and print the middleware's decision."""
    start = time.perf_counter()
    middleware = SemGradMiddleware(
        policy="fallback",
        fallback=ToolRouter(answer_with="tool_result"),
        threshold=THRESHOLD,
        threshold_field="semgrad",
    )
    model = ToolRouter()
    agent = create_agent(model, tools=[calculator, lookup], system_prompt=SYSTEM, middleware=[middleware])
    print(f"model: {default_scorer().model_name}; untrusted when semgrad > {THRESHOLD:g}")
    print("model = ToolRouter (rule-based tool calls, SmolLM2 answers); fallback = quotes the tool result\n")
    for question in QUESTIONS:
        messages = agent.invoke({"messages": [{"role": "user", "content": question}]})["messages"]
        step, answer = messages[1], messages[-1]
        result = GuardResult.model_validate(answer.response_metadata["semgrad"])
        first = result.score
        assert first is not None, result.scorer_error
        final = ""
        if result.route == "fallback" and result.final_score is not None:
            verdict = "still untrusted" if result.final_low_confidence else "trusted"
            final = f" -> fallback's semgrad={result.final_score.semgrad:.2e} ({verdict})"
        call = step.tool_calls[0]
        print(f"Q: {question}")
        print(f"   tool-call turn (not scored): {call['name']}({call['args']})")
        print(f"   answer turn: {result.scored_prompt_tokens} prompt tokens, scored in {first.seconds:.2f} s")
        print(f"   route={result.route}: semgrad={first.semgrad:.2e} (risk {result.risk:.2f}){final}")
        if result.route == "fallback":
            print(f"   SmolLM2 had answered: {model.said[-1]!r}")
        print(f"   A: {answer.text!r}\n")
    print(f"{time.perf_counter() - start:.1f} s in all (model and embeddings load included).")


if __name__ == "__main__":
    main()
