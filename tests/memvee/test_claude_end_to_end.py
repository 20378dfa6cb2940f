"""The whole flow through the real anthropic client and HTTP: Memory -> actor -> worker
-> ClaudeExtractor -> stand-in Messages API on 127.0.0.1 -> KnowledgeExtracted."""

from __future__ import annotations

from pathlib import Path

import pytest

from events import UserLog
from memvee import Memory, MemoryConfig, ProcessingError, ProcessStatus
from memvee.audit import Audit
from memvee.extractors import ClaudeExtractor
from tests.support.messages_api_server import MessagesAPIServer, truncated_tool_body


@pytest.fixture
def claude_env(messages_api_server: MessagesAPIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", messages_api_server.base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-secret-key")


async def test_default_memory_uses_claude_when_a_key_is_set_and_traces_every_entry(
    db_url: str, claude_env: None, messages_api_server: MessagesAPIServer
) -> None:
    async with Memory(db_url=db_url, auto_process=True, batch_threshold=4) as memory:
        first = await memory.add_exchange("ana", "I live in Oslo", "Nice")
        second = await memory.add_exchange("ana", "I work at Acme", "Cool")
        assert await memory.wait_for_processing("ana", timeout=30) == 2
        entries = await memory.knowledge("ana")
    assert [e.text for e in entries] == ["User said: I live in Oslo", "User said: I work at Acme"]
    assert [e.source_message_ids for e in entries] == [
        (first[0].message_id,),
        (second[0].message_id,),
    ]
    assert {e.extractor for e in entries} == {"claude"}
    assert len(messages_api_server.requests) == 1


async def test_an_overloaded_api_fails_the_task_and_the_next_run_succeeds(
    db_url: str, claude_env: None, messages_api_server: MessagesAPIServer
) -> None:
    messages_api_server.enqueue_error(529, "overloaded_error", "Overloaded")
    config = MemoryConfig(db_url=db_url, extraction_timeout=10)
    async with Memory(config=config, extractor=ClaudeExtractor(max_retries=0)) as memory:
        await memory.add_exchange("bo", "I love tea", "ok")
        task = memory.process_async("bo")
        with pytest.raises(ProcessingError):
            await task.wait()
        assert task.status is ProcessStatus.FAILED and "529" in (task.error or "")
        assert "sk-test-secret-key" not in (task.error or "")
        assert len(await memory.buffer("bo")) == 2
        assert await memory.process("bo") == 1


async def test_a_request_the_api_refuses_is_split_and_the_task_completes(
    db_url: str, claude_env: None, messages_api_server: MessagesAPIServer
) -> None:
    messages_api_server.enqueue_error(400, "invalid_request_error", "prompt is too long")
    config = MemoryConfig(db_url=db_url, extraction_timeout=10)
    async with Memory(config=config, extractor=ClaudeExtractor(max_retries=0)) as memory:
        await memory.add_exchange("bo", "I love tea", "ok")
        assert await memory.process("bo") == 1
        assert await memory.buffer("bo") == [] and await memory.quarantined("bo") == []
    shown = [[m["content"] for m in r.messages] for r in messages_api_server.requests]
    # The refused batch, the probe with a harmless message in place of its messages
    # (accepted: the batch is at fault), then the halves.
    assert shown == [["I love tea", "ok"], ["Hello."], ["I love tea"], ["ok"]], (
        "the refused batch of two was split in halves"
    )


async def test_claude_sees_the_known_entries_and_its_updates_supersede_them(
    db_url: str, claude_env: None, messages_api_server: MessagesAPIServer
) -> None:
    async with Memory(db_url=db_url) as memory:
        await memory.add_exchange("cy", "I live in Oslo", "Nice")
        await memory.flush("cy")
        (oslo,) = await memory.knowledge("cy")
        await memory.add_exchange("cy", "I live in Oslo", "Still?")
        await memory.flush("cy")
        assert [e.entry_id for e in await memory.knowledge("cy")] == [oslo.entry_id]
        said, _ = await memory.add_exchange("cy", "I moved to Bergen", "Exciting")
        messages_api_server.enqueue_facts(
            [
                {
                    "text": "User lives in Bergen.",
                    "source_message_ids": [said.message_id],
                    "action": "update",
                    "target_entry_id": oslo.entry_id,
                }
            ]
        )
        await memory.flush("cy")
        assert [e.text for e in await memory.knowledge("cy")] == ["User lives in Bergen."]
        result = await memory.retrieve("cy", "where does cy live now?")
        assert [hit.text for hit in result.entries] == ["User lives in Bergen."]
    known = [r.known for r in messages_api_server.requests]
    assert known[0] == [] and [k["text"] for k in known[1]] == [oslo.text]
    assert [k["text"] for k in known[2]] == ["User said: I live in Oslo"]


async def test_a_task_that_failed_after_a_batch_reads_the_same_through_every_call(
    db_url: str, claude_env: None, messages_api_server: MessagesAPIServer
) -> None:
    """Its first batch extracted an entry, its second failed: the handle, get_task and
    tasks() all count the entry and the two messages it covered (the handle said 0 and 4)."""
    messages_api_server.enqueue()
    messages_api_server.enqueue_error(529, "overloaded_error", "Overloaded")
    config = MemoryConfig(db_url=db_url, extraction_timeout=10, max_batch_messages=2)
    async with Memory(config=config, extractor=ClaudeExtractor(max_retries=0)) as memory:
        await memory.add_exchange("bo", "I love tea", "ok")
        await memory.add_exchange("bo", "I love jazz", "ok")
        task = memory.process_async("bo")
        with pytest.raises(ProcessingError):
            await task.wait()
        fetched = await memory.get_task("bo", task.task_id)
        (listed,) = [t for t in await memory.tasks("bo") if t.task_id == task.task_id]
        cited = [e for e in await memory.knowledge("bo") if e.task_id == task.task_id]

    seen = {(t.status, t.knowledge_count, t.message_count) for t in (task, fetched, listed)}
    assert seen == {(ProcessStatus.FAILED, len(cited), 2)} and cited


async def test_the_tokens_of_a_task_that_failed_after_spending_some_are_counted(
    db_url: str, claude_env: None, messages_api_server: MessagesAPIServer
) -> None:
    """An answer cut at the batch's budget spent tokens; the re-ask with all of
    max_tokens met a 529, and so did the harmless request after it: the failure that may
    pass records what was spent."""
    cut = truncated_tool_body({"facts": []}, input_tokens=1000, output_tokens=4000)
    messages_api_server.enqueue(200, cut)
    messages_api_server.enqueue_error(529, "overloaded_error", "Overloaded")
    messages_api_server.enqueue_error(529, "overloaded_error", "Overloaded")
    config = MemoryConfig(db_url=db_url, extraction_timeout=10)
    async with Memory(config=config, extractor=ClaudeExtractor(max_retries=0)) as memory:
        await memory.add_exchange("bo", "I love tea", "ok")
        with pytest.raises(ProcessingError, match="529"):
            await memory.process("bo")
        assert len(await memory.buffer("bo")) == 2
    with Audit(db_url=db_url) as audit:
        stats = audit.stats()
    assert (stats["input_tokens"], stats["output_tokens"]) == (1000, 4000)


async def test_one_extractor_serves_two_memories_each_on_its_own_loop(
    tmp_path: Path, claude_env: None, messages_api_server: MessagesAPIServer
) -> None:
    """Each Memory extracts on an event loop of its own; an SDK client's connections belong
    to one loop, so the extractor builds one a loop (the second Memory's calls failed)."""
    extractor = ClaudeExtractor(max_retries=0, timeout=10)
    first = Memory(db_path=str(tmp_path / "a.db"), extractor=extractor, embedder=False)
    second = Memory(db_path=str(tmp_path / "b.db"), extractor=extractor, embedder=False)
    async with first, second:
        await first.add_exchange("ann", "I live in Oslo", "ok")
        await second.add_exchange("bob", "I live in Rome", "ok")
        assert await first.process("ann") == 1
        assert await second.process("bob") == 1
        await first.close()
        await second.add_exchange("bob", "I like tea", "ok")
        assert await second.process("bob") == 1
    assert len(messages_api_server.requests) == 3


async def test_an_empty_target_and_a_blank_fact_are_repaired_and_none_quarantined(
    db_url: str, claude_env: None, messages_api_server: MessagesAPIServer
) -> None:
    """Guarantee 11: an answer valid against the tool's schema that spells an absent
    target as "" and gives a fact blank text is used. The target counts as none (an
    "update" of nothing is recorded as new) and the blank fact is dropped, each repair
    recorded, where the batch used to fail until its messages were quarantined."""
    messages_api_server.enqueue_facts(
        [
            {"text": "User loves tea.", "source_message_ids": ["m1"], "target_entry_id": ""},
            {"text": " ", "source_message_ids": ["m1"], "action": "new"},
            {
                "text": "User lives in Oslo.",
                "source_message_ids": ["m3"],
                "action": "update",
                "target_entry_id": "",
            },
        ]
    )
    config = MemoryConfig(db_url=db_url, extraction_timeout=10)
    extractor = ClaudeExtractor(max_retries=0)
    async with Memory(config=config, extractor=extractor, embedder=False) as memory:
        await memory.add_exchange("di", "I love tea", "ok")
        await memory.add_exchange("di", "I moved to Oslo", "Nice")
        assert await memory.process("di") == 2
        assert await memory.quarantined("di") == [] and await memory.buffer("di") == []
        entries = {e.text: e.entry_id for e in await memory.knowledge("di")}
        engine = memory._engine
        assert engine is not None
        events = engine.store.events_of("di")
        extracted = [e for e in events if isinstance(e, UserLog.KnowledgeExtracted)]
    assert len(messages_api_server.requests) == 1, "the answer was used, not the batch split"
    assert [e.repairs for e in extracted] == [["fact 1 had no text; it was dropped"]]
    assert sorted(entries) == ["User lives in Oslo.", "User loves tea."]
    with Audit(db_url=db_url) as audit:
        assert audit.explain("di", entries["User loves tea."]).repairs == []
        assert audit.explain("di", entries["User lives in Oslo."]).repairs == [
            "was 'update' of no entry, not a current entry; recorded as new"
        ]
