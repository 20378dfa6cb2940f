"""The default embedder: all-MiniLM-L6-v2 (int8) on onnxruntime, from registry packages,
with no network and no PyTorch; and hybrid retrieval on by default, embedding in the
background."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select

from events import MemveeError, user_log_id
from memvee import Memory
from memvee.embedders import Embedder, LocalDefaultEmbedder, OnnxMiniLMEmbedder, _onnx
from memvee.embedders._onnx import (
    _BATCH,
    _BATCH_TOKENS,
    _MODEL,
    MAX_TOKENS,
    _packaged_file,
    _runs,
    shared_default,
)
from memvee.extractors import OfflineExtractor


def _cosine(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b))


def test_it_embeds_offline_into_unit_vectors_deterministically() -> None:
    embedder = shared_default()
    assert isinstance(embedder, Embedder) and embedder.dimensions == 384
    texts = ["I am allergic to shellfish.", "Which seafood makes her sick?", "I bought a bike."]
    first = embedder.embed(texts)
    assert [len(v) for v in first] == [384] * 3
    assert all(abs(np.linalg.norm(v) - 1) < 1e-5 for v in first)
    assert embedder.embed(texts) == first
    alone = embedder.embed(texts[:1])[0]
    assert _cosine(alone, first[0]) > 0.9999, "padding in a batch barely moves a vector"
    allergy, seafood, bike = first
    assert _cosine(allergy, seafood) > _cosine(allergy, bike) + 0.2


def test_texts_of_very_different_lengths_embed_as_each_would_alone() -> None:
    embedder = shared_default()
    texts = ["Hi", "I moved to Oslo last year. " * 4, "word " * 400, "Short one.", ""]
    together = embedder.embed(texts)
    for text, vector in zip(texts, together, strict=True):
        assert _cosine(embedder.embed([text])[0], vector) > 0.9999
    assert embedder.embed([]) == []


def test_a_run_of_the_model_holds_a_few_long_texts_or_many_short_ones() -> None:
    # A run holds the model: a search's query waits for at most one run of a background fill.
    lengths = [MAX_TOKENS] * 20 + [12] * 100
    runs = _runs(sorted(range(len(lengths)), key=lengths.__getitem__), lengths)
    assert sorted(i for run in runs for i in run) == list(range(len(lengths)))
    for run in runs:
        assert len(run) <= _BATCH and len(run) * max(lengths[i] for i in run) <= _BATCH_TOKENS
    assert [len(run) for run in runs] == [32, 32, 32, 8, 8, 8]  # the 4 short ones lead 4 long


def test_a_model_file_that_is_not_the_pinned_one_is_refused() -> None:
    distribution, suffix, _ = _MODEL
    with pytest.raises(MemveeError, match="not the expected file"):
        _packaged_file(distribution, suffix, "0" * 64)
    with pytest.raises(MemveeError, match="not installed"):
        _packaged_file("no-such-distribution-here", suffix, "0" * 64)


def test_the_default_is_lazy_and_available_here() -> None:
    default = LocalDefaultEmbedder()
    assert LocalDefaultEmbedder.available()
    assert (default.name, default.dimensions) == (OnnxMiniLMEmbedder.name, 384)
    assert default.embed(["hello"]) == shared_default().embed(["hello"])


async def _vector_count(memory: Memory, user: str) -> int:
    engine = memory._engine
    assert engine is not None
    vectors = engine.tables.vectors

    def count() -> int:
        with engine.store.engine.connect() as connection:
            found = connection.execute(
                select(func.count()).where(vectors.c.log_id == str(user_log_id(user)))
            ).scalar()
        return int(found or 0)

    return await asyncio.to_thread(count)


async def test_by_default_retrieval_is_hybrid_and_finds_a_paraphrase(
    make_memory: Callable[..., Any],
) -> None:
    shared = {"leases": True}  # two Memories on one database file
    memory: Memory = await make_memory(extractor=OfflineExtractor(), embedder=None, config=shared)
    said, _ = await memory.add_exchange("ann", "I'm allergic to shellfish, sadly.", "Noted.")
    await memory.add_exchange("ann", "We painted the kitchen green last weekend.", "Nice!")
    await memory.add_exchange("ann", "My train to work was late again today.", "Oh no.")
    result = await memory.retrieve(
        "ann", "which seafood makes her sick?", top_k=2, include_messages=True
    )
    assert said.message_id in {m.message.message_id for m in result.messages}
    lexical: Memory = await make_memory(extractor=OfflineExtractor(), embedder=False, config=shared)
    await lexical.add_exchange("bob", "I'm allergic to shellfish, sadly.", "Noted.")
    missed = await lexical.retrieve("bob", "which seafood makes her sick?", include_messages=True)
    assert len(missed) == 0, "lexical ranking alone shares no word with it"


async def test_messages_are_embedded_in_the_background_not_on_the_write(
    make_memory: Callable[..., Any],
) -> None:
    shared = {"leases": True}  # two Memories on one database file
    memory: Memory = await make_memory(embedder=None, config=shared)
    for i in range(5):
        await memory.add_exchange("ann", f"I like thing number {i}", "ok")
    engine = memory._engine
    assert engine is not None and engine.vector_filler is not None
    assert await asyncio.to_thread(engine.vector_filler.wait_idle, 30)
    assert await _vector_count(memory, "ann") == 10
    lexical: Memory = await make_memory(embedder=False, config=shared)
    await lexical.add_exchange("bob", "I like tea", "ok")
    engine = lexical._engine
    assert engine is not None and engine.vector_filler is None
    await lexical.retrieve("bob", "tea", include_messages=True)
    assert await _vector_count(lexical, "bob") == 0


class _RecordedModel:
    """Stands in for the model: records the thread that builds it, after ``release``."""

    built_on: list[threading.Thread] = []
    release = threading.Event()

    def __init__(self) -> None:
        self.release.wait()
        self.built_on.append(threading.current_thread())

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [[1.0] + [0.0] * 383 for _ in texts]


@pytest.fixture
def recorded_model(monkeypatch: pytest.MonkeyPatch) -> type[_RecordedModel]:
    """A process whose default embedder is not loaded yet, and loads as a _RecordedModel."""
    monkeypatch.setattr(_onnx, "_shared", None)
    monkeypatch.setattr(_onnx, "_loader", None, raising=False)
    monkeypatch.setattr(_onnx, "OnnxMiniLMEmbedder", _RecordedModel)
    monkeypatch.setattr(_RecordedModel, "built_on", [])
    monkeypatch.setattr(_RecordedModel, "release", threading.Event())
    return _RecordedModel


async def test_the_default_model_loads_from_the_open_on_a_thread_of_its_own(
    make_memory: Callable[..., Any], recorded_model: type[_RecordedModel]
) -> None:
    # Its import and tokenizer hold the GIL for tens of ms: not on the loop, nor in a search.
    memory: Memory = await make_memory(embedder=None)
    assert recorded_model.built_on == [], "the open does not wait for the model"
    recorded_model.release.set()
    await memory.close()
    assert len(recorded_model.built_on) == 1, "loaded once, from the open, before any search"
    (loader,) = recorded_model.built_on
    assert loader is not threading.current_thread()
    assert loader.name == "memvee-embedder-load" and not loader.is_alive()


async def test_a_close_during_the_load_does_not_wait_for_it_and_the_load_ends_by_itself(
    make_memory: Callable[..., Any], recorded_model: type[_RecordedModel]
) -> None:
    """The model is the process's: a Memory that only wrote closes at once, and the load
    goes on to the end on its own thread, for the next Memory's searches."""
    memory: Memory = await make_memory(embedder=None)
    await asyncio.wait_for(memory.close(), 10)
    loader = _onnx._loader
    assert loader is not None and loader.is_alive(), "the load was still held"
    recorded_model.release.set()
    await asyncio.to_thread(loader.join, 10)
    assert [t.name for t in recorded_model.built_on] == ["memvee-embedder-load"]
    assert shared_default() is _onnx._shared, "loaded once, and kept for the searches"
