"""The embedder a Memory or an Audit search ranks with: contained once, where it enters."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from events import ExtractedFact
from memvee import Memory
from memvee.embedders import LocalDefaultEmbedder, chosen_embedder
from memvee.embedders._choice import contained_embedder
from memvee.errors import EmbedderError
from tests.support.embedders import ConceptEmbedder
from tests.support.extractors import RecordingExtractor


class _Raising(ConceptEmbedder):
    """The concept embedder, raising what is no ``Exception`` on every call."""

    def __init__(self, raised: type[BaseException]) -> None:
        super().__init__()
        self.raised = raised

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        raise self.raised


def test_chosen_embedder_hands_back_the_embedder_chosen_itself() -> None:
    mine = ConceptEmbedder()
    assert chosen_embedder(mine) is mine
    assert chosen_embedder(False) is None
    if LocalDefaultEmbedder.available():
        assert isinstance(chosen_embedder(None), LocalDefaultEmbedder)


@pytest.mark.parametrize("raised", [KeyboardInterrupt, SystemExit])
def test_the_embedder_chosen_fails_with_an_embedder_error_for_what_is_no_exception(
    raised: type[BaseException],
) -> None:
    chosen = contained_embedder(_Raising(raised))
    assert chosen is not None
    assert (chosen.name, chosen.dimensions) == ("test-concepts", 64)
    with pytest.raises(BaseException) as failed:
        chosen.embed(["I work at Acme."])
    assert isinstance(failed.value, EmbedderError), failed.value
    assert str(failed.value) == f"the embedder raised {raised.__name__}"


async def test_a_memorys_search_fill_and_batches_call_one_contained_embedder(
    make_memory: Callable[..., Any],
    extractor: RecordingExtractor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Contained once where it enters, the embedder every path calls is the same one: a
    search (and its fill) and a batch past 100 entries whose embedder raises SystemExit
    go on by words, and nothing it raised escapes."""
    memory: Memory = await make_memory(
        embedder=_Raising(SystemExit), config={"batch_embed_seconds": 60}
    )
    engine, retriever = memory._engine, memory._retriever
    assert engine is not None and retriever is not None
    assert engine.meaning.embedder is retriever.embedder
    extractor.answer = lambda batch: tuple(
        ExtractedFact(f"User likes place {i} in Oslo.", (batch.messages[0].message_id,))
        for i in range(102)
    )
    await memory.add_message("ann", "user", "Tell me about Oslo")
    assert await memory.process("ann") == 102
    extractor.answer = None
    found = (await memory.retrieve("ann", "places in Oslo")).entries
    assert found and all("Oslo" in entry.text for entry in found)
    assert "the embedder 'test-concepts' failed; this search ranks lexically" in caplog.text
    await memory.add_message("ann", "user", "I left Oslo")
    assert await asyncio.wait_for(memory.process("ann"), 10) == 1
    assert extractor.batches[-1].known, "the batch is shown its entries chosen by words"
    assert "the embedder failed (the embedder raised SystemExit)" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


KEY = "sk-embed-test-key-DO-NOT-LOG"


class _KeyHoldingClient:
    """An embedding API's client given its key in code, not from the environment."""

    api_key = KEY


class _EchoingItsKey(ConceptEmbedder):
    """The concept embedder behind an API that refuses its key and echoes it back, as an
    HTTP client's 401 error may."""

    def __init__(self) -> None:
        super().__init__()
        self.client = _KeyHoldingClient()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        raise RuntimeError(f"401 Unauthorized: Incorrect API key provided: {KEY}")


async def test_an_embedder_error_showing_its_clients_key_puts_the_key_in_no_log_record(
    make_memory: Callable[..., Any],
    extractor: RecordingExtractor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A search (and its fill), the background fill and a batch past 100 entries each log
    the embedder's failure, its traceback too, never the key its client holds."""
    caplog.set_level(logging.DEBUG)
    memory: Memory = await make_memory(
        embedder=_EchoingItsKey(), config={"batch_embed_seconds": 60}
    )
    engine = memory._engine
    assert engine is not None and engine.vector_filler is not None
    extractor.answer = lambda batch: tuple(
        ExtractedFact(f"User likes place {i} in Oslo.", (batch.messages[0].message_id,))
        for i in range(102)
    )
    await memory.add_message("ann", "user", "Tell me about Oslo")
    assert await memory.process("ann") == 102
    extractor.answer = None
    assert (await memory.retrieve("ann", "places in Oslo")).entries
    assert await asyncio.to_thread(engine.vector_filler.wait_idle, 5)
    await memory.add_message("ann", "user", "I left Oslo")
    assert await asyncio.wait_for(memory.process("ann"), 10) == 1
    assert "this search ranks lexically" in caplog.text
    assert "in the background failed" in caplog.text
    assert "the entries shown beside a batch are chosen by their words only" in caplog.text
    shown = [logging.Formatter().format(record) for record in caplog.records]
    assert any("401 Unauthorized: Incorrect API key provided" in line for line in shown)
    assert not [line for line in shown if KEY[:12] in line]
