"""The embedder a Memory or an Audit search ranks with: contained once, where it enters."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from memvee import Memory
from memvee.embedders import LocalDefaultEmbedder, chosen_embedder
from memvee.embedders._choice import contained_embedder
from memvee.errors import EmbedderError
from tests.support.embedders import ConceptEmbedder


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
) -> None:
    """Contained once where it enters, the embedder every path calls is the same one: a
    search's (and its fill's), and the one choosing the entries shown beside a batch."""
    memory: Memory = await make_memory(embedder=_Raising(SystemExit))
    engine, retriever = memory._engine, memory._retriever
    assert engine is not None and retriever is not None and retriever.embedder is not None
    assert engine.meaning.embedder is retriever.embedder
    with pytest.raises(BaseException) as failed:
        retriever.embedder.embed(["I work at Acme."])
    assert isinstance(failed.value, EmbedderError), failed.value
