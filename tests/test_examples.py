"""The agent examples run offline end to end and print a decision for every question (issue: agents)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str) -> str:
    """Run one example from the repository root as a user would; its stdout, or the failure with stderr."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=EXAMPLES.parent,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


@pytest.mark.slow
def test_langchain_agent_example_prints_a_route_per_question() -> None:
    out = run_example("langchain_agent_guard.py")
    questions = out.count("Q: ")
    assert questions >= 2
    assert out.count("tool-call turn (not scored)") == questions
    assert out.count("route=") == questions


@pytest.mark.slow
def test_llamaindex_agent_example_lists_answers_by_confidence() -> None:
    out = run_example("llamaindex_agent_eval.py")
    assert "agent answers with confidence below" in out
    rows = [line for line in out.splitlines() if line.strip().startswith("->")]
    assert len(rows) >= 2
