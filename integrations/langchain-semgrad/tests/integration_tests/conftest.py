"""Real chains on the embedded SmolLM2: the chat model shares the default scorer's weights (one model)."""

from __future__ import annotations

import os
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: nothing may download
# OpenMP threads that spin-wait make the main thread's passes ~10x slower on a busy CPU (docs/langchain.md);
# this only takes effect if torch is not imported yet, and never changes results.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

transformers = pytest.importorskip("transformers")
langchain_huggingface = pytest.importorskip("langchain_huggingface")

from langchain_core.documents import Document  # noqa: E402
from langchain_core.language_models import BaseChatModel  # noqa: E402
from langchain_core.vectorstores import InMemoryVectorStore  # noqa: E402

from semgrad_guard import SemGradScorer, default_scorer  # noqa: E402

FACTS = [
    "The Eiffel Tower in Paris was completed in 1889 for the World's Fair.",
    "Canberra is the capital city of Australia.",
    "The Amazon is the largest rainforest on Earth.",
    "Water boils at 100 degrees Celsius at sea level.",
]


class LocalChat(langchain_huggingface.ChatHuggingFace):  # type: ignore[misc]
    """ChatHuggingFace over a local pipeline, with LangChain's default async (the executor).

    langchain-huggingface raises NotImplementedError for async calls on a HuggingFacePipeline.
    """

    _agenerate = BaseChatModel._agenerate
    _astream = BaseChatModel._astream


@pytest.fixture(scope="session")
def scorer() -> SemGradScorer:
    return default_scorer().load()


def make_chat(scorer: SemGradScorer, max_new_tokens: int = 12) -> Any:
    pipe = transformers.pipeline(
        "text-generation",
        model=scorer.model,
        tokenizer=scorer.tokenizer,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        return_full_text=False,
    )
    llm = langchain_huggingface.HuggingFacePipeline(pipeline=pipe, model_id="SmolLM2-135M-Instruct")
    return LocalChat(llm=llm, tokenizer=scorer.tokenizer)


@pytest.fixture(scope="session")
def chat(scorer: SemGradScorer) -> Any:
    return make_chat(scorer)


@pytest.fixture(scope="session")
def short_chat(scorer: SemGradScorer) -> Any:
    """A second 'model' for fallback routes: same weights, shorter answers."""
    return make_chat(scorer, max_new_tokens=6)


@pytest.fixture(scope="session")
def vector_store() -> InMemoryVectorStore:
    path = pytest.importorskip("all_minilm_l6_v2").get_model_path()  # the model files ship in this package
    embeddings = langchain_huggingface.HuggingFaceEmbeddings(model_name=str(path))
    return InMemoryVectorStore.from_documents([Document(fact) for fact in FACTS], embeddings)
