"""fastembed and Voyage AI as embedders, without the network: fastembed with a model object
in place of the one it would download, Voyage AI through the real ``voyageai`` client over
a mock transport (a ``requests`` adapter)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import requests
import voyageai
from requests.adapters import BaseAdapter

from events import MemveeError
from memvee import Memory
from memvee.embedders import Embedder, FastEmbedEmbedder, VoyageEmbedder
from memvee.errors import InvalidInputError, RejectedTextError

KEY = "pa-test-voyage-key-DO-NOT-LEAK"


class FakeFastEmbedModel:
    """What ``fastembed.TextEmbedding`` gives: ``embed`` yields one array per text."""

    embedding_size: int | None = None

    def embed(self, texts: list[str]) -> Iterator[np.ndarray[Any, Any]]:
        for text in texts:
            yield np.array([len(text), 1.0, 0.0, 2.0])


def test_fastembed_vectors_come_back_as_unit_vectors_in_order() -> None:
    embedder = FastEmbedEmbedder("BAAI/bge-small-en-v1.5", dimensions=4, model=FakeFastEmbedModel())
    assert isinstance(embedder, Embedder) and embedder.name == "fastembed:BAAI/bge-small-en-v1.5"
    vectors = embedder.embed(["ab", "abcdef"])
    assert [round(float(np.linalg.norm(v)), 6) for v in vectors] == [1.0, 1.0]
    assert vectors[0] != vectors[1]


def test_fastembed_vectors_of_another_length_than_it_was_given_are_an_error() -> None:
    embedder = FastEmbedEmbedder("BAAI/bge-base-en-v1.5", 384, model=FakeFastEmbedModel())
    with pytest.raises(MemveeError, match="4 dimensions, not 384: give FastEmbedEmbedder"):
        embedder.embed(["hello"])


class ListedModels:
    """What ``fastembed.TextEmbedding`` lists of its models (no download)."""

    @staticmethod
    def list_supported_models() -> list[dict[str, Any]]:
        return [
            {"model": "BAAI/bge-small-en-v1.5", "dim": 384, "size_in_GB": 0.067},
            {"model": "BAAI/bge-base-en-v1.5", "dim": 768, "size_in_GB": 0.21},
        ]


@pytest.fixture
def listed_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """fastembed's list of models, as the package gives it, whether installed or not."""
    monkeypatch.setitem(sys.modules, "fastembed", SimpleNamespace(TextEmbedding=ListedModels))


@pytest.mark.usefixtures("listed_models")
def test_fastembed_vectors_are_as_long_as_fastembed_lists_for_the_model_unless_given() -> None:
    """Every model was taken for 384 dimensions, so a Memory with BAAI/bge-base-en-v1.5
    failed its first embedding until told dimensions=768."""
    assert FastEmbedEmbedder("BAAI/bge-base-en-v1.5").dimensions == 768
    assert FastEmbedEmbedder("baai/BGE-base-en-v1.5").dimensions == 768
    assert FastEmbedEmbedder().dimensions == 384
    assert FastEmbedEmbedder("BAAI/bge-base-en-v1.5", 512).dimensions == 512


@pytest.mark.usefixtures("listed_models")
def test_fastembed_vectors_of_a_model_fastembed_does_not_list_need_their_length_given() -> None:
    with pytest.raises(InvalidInputError, match=r"lists no model 'my/model'.*dimensions="):
        Memory(embedder=FastEmbedEmbedder("my/model"))
    assert FastEmbedEmbedder("my/model", 128).dimensions == 128


def test_fastembed_vectors_are_as_long_as_the_given_model_says() -> None:
    model = FakeFastEmbedModel()
    model.embedding_size = 4
    embedder = FastEmbedEmbedder("my/model", model=model)
    assert embedder.dimensions == 4 and len(embedder.embed(["hi"])[0]) == 4


def test_a_given_model_without_its_length_needs_neither_fastembed_nor_a_listed_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A given model (a wrapped fine-tune) is all the embedder needs: it took the length
    from fastembed's list of models, so it failed without fastembed or for an unlisted
    name. Its vectors are taken for the default model's length, as before lengths were
    looked up: a Memory reads the length before any vector could tell it."""
    monkeypatch.setitem(sys.modules, "fastembed", None)  # as if it were not installed

    class FineTune:
        def embed(self, texts: list[str]) -> Iterator[np.ndarray[Any, Any]]:
            return (np.ones(384) for _ in texts)

    embedder = FastEmbedEmbedder("acme/support-minilm", model=FineTune())
    assert embedder.dimensions == 384 and len(embedder.embed(["hi"])[0]) == 384


def test_with_fastembed_installed_the_length_comes_from_its_own_list_of_models() -> None:
    pytest.importorskip("fastembed")
    assert FastEmbedEmbedder("BAAI/bge-base-en-v1.5").dimensions == 768


def test_fastembed_without_the_package_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Building the embedder imports nothing (fastembed's import takes a third of a
    second); a Memory reading its length off fastembed's list of models, or embedding,
    says how to install the package."""
    monkeypatch.setitem(sys.modules, "fastembed", None)  # as if it were not installed
    embedder = FastEmbedEmbedder("BAAI/bge-base-en-v1.5")
    with pytest.raises(MemveeError, match=r"memvee\[fastembed\]"):
        Memory(embedder=embedder)
    with pytest.raises(MemveeError, match=r"memvee\[fastembed\]"):
        embedder.embed(["hello"])


class VoyageAPI(BaseAdapter):
    """A mock transport for ``requests``: answers the embeddings endpoint, records calls."""

    def __init__(self, status: int = 200) -> None:
        super().__init__()
        self.status = status
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        assert request.url is not None and request.url.endswith("/embeddings"), request.url
        body = json.loads(request.body or b"{}")
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        response = requests.Response()
        response.status_code = self.status
        response.headers["content-type"] = "application/json"
        if self.status == 200:
            zeros = [0.0] * ((body.get("output_dimension") or 1024) - 3)
            data = [
                {
                    "object": "embedding",
                    "embedding": [float(len(text)), 3.0, 4.0, *zeros],
                    "index": i,
                }
                for i, text in enumerate(body["input"])
            ]
            payload: dict[str, Any] = {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"total_tokens": 7},
            }
        else:
            payload = {"detail": "Provided API key is invalid."}
        response._content = json.dumps(payload).encode()
        response.url = request.url
        response.request = request
        return response

    def close(self) -> None:
        return None


@pytest.fixture
def voyage_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[VoyageAPI]:
    api = VoyageAPI()
    session = requests.Session()
    session.mount("https://", api)
    monkeypatch.setattr(voyageai, "requestssession", session)
    monkeypatch.setenv("VOYAGE_API_KEY", KEY)
    # The SDK keeps one session per thread: start each test on this one.
    thread_sessions = voyageai.api_resources.api_requestor._thread_context
    thread_sessions.__dict__.clear()
    yield api
    thread_sessions.__dict__.clear()


def test_voyage_embeds_through_its_client_in_batches(voyage_api: VoyageAPI) -> None:
    embedder = VoyageEmbedder("voyage-3.5-lite", batch_size=2)
    assert VoyageEmbedder.configured() and embedder.name == "voyage:voyage-3.5-lite"
    vectors = embedder.embed(["a", "bb", "ccc"])
    assert len(vectors) == 3 and {len(v) for v in vectors} == {1024}
    assert all(b.get("output_dimension") is None for b in voyage_api.bodies)
    assert all(abs(float(np.linalg.norm(v)) - 1) < 1e-6 for v in vectors)
    assert [b["input"] for b in voyage_api.bodies] == [["a", "bb"], ["ccc"]]
    assert {b["model"] for b in voyage_api.bodies} == {"voyage-3.5-lite"}
    assert KEY in voyage_api.headers[0].get("Authorization", "")


def test_voyage_asks_for_other_dimensions_and_names_them(voyage_api: VoyageAPI) -> None:
    embedder = VoyageEmbedder("voyage-3.5-lite", dimensions=512)
    assert embedder.name == "voyage:voyage-3.5-lite/512"
    assert [len(v) for v in embedder.embed(["a", "bb"])] == [512, 512]
    assert [b["output_dimension"] for b in voyage_api.bodies] == [512]


def test_vectors_of_another_length_than_voyage_was_given_are_an_error(
    voyage_api: VoyageAPI,
) -> None:
    with pytest.raises(MemveeError, match="vectors of 1024 dimensions, not 256"):
        VoyageEmbedder("voyage-3.5-lite", dimensions=256, client=_DefaultShape()).embed(["a"])


def test_a_vector_that_is_not_finite_is_an_error(voyage_api: VoyageAPI) -> None:
    with pytest.raises(MemveeError, match="not finite"):
        VoyageEmbedder(client=_DefaultShape(float("nan"))).embed(["a"])


class _DefaultShape:
    """A Voyage client whose model ignores ``output_dimension`` (an older model)."""

    def __init__(self, first: float = 1.0) -> None:
        self.first = first

    def embed(self, texts: list[str], **options: Any) -> Any:
        vectors = [[self.first] + [0.0] * 1023 for _ in texts]
        return type("Result", (), {"embeddings": vectors})()


def test_a_voyage_failure_is_a_memvee_error_without_the_key(
    voyage_api: VoyageAPI, caplog: pytest.LogCaptureFixture
) -> None:
    voyage_api.status = 401
    with pytest.raises(MemveeError, match="Voyage AI embedding failed") as caught:
        VoyageEmbedder(max_retries=0).embed(["hello"])
    assert KEY not in str(caught.value) and KEY not in caplog.text


@pytest.mark.parametrize("ending", ["\n", "\r\n"])
def test_a_voyage_key_read_with_its_line_ending_shows_in_no_error(
    voyage_api: VoyageAPI, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    """A key from a secret file or a CRLF .env keeps its line ending, which the HTTP
    client refuses in a header, and its error shows the key escaped."""
    monkeypatch.setenv("VOYAGE_API_KEY", KEY + ending)
    with pytest.raises(MemveeError, match="Voyage AI embedding failed") as caught:
        VoyageEmbedder(max_retries=0).embed(["hello"])
    assert KEY[:12] not in str(caught.value)


@pytest.mark.parametrize("batch_size", [0, -1, "8", 2.0, True])
def test_voyage_refuses_a_batch_size_that_is_no_positive_int_when_made(batch_size: Any) -> None:
    with pytest.raises(InvalidInputError, match="batch_size"):
        VoyageEmbedder(batch_size=batch_size)


@pytest.mark.parametrize(("status", "rejected"), [(400, True), (429, False), (500, False)])
def test_voyage_says_when_it_refuses_the_text_itself(
    voyage_api: VoyageAPI, status: int, rejected: bool
) -> None:
    """So that only such a text is left out for good, not one a busy API failed."""
    voyage_api.status = status
    with pytest.raises(MemveeError, match="Voyage AI embedding failed") as caught:
        VoyageEmbedder(max_retries=0).embed(["hello"])
    assert isinstance(caught.value, RejectedTextError) is rejected


def test_voyage_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOYAGE_API_KEY", raising=False)
    assert not VoyageEmbedder.configured()
    with pytest.raises(MemveeError, match="VOYAGE_API_KEY"):
        VoyageEmbedder().embed(["hello"])
