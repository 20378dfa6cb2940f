"""The projection reader: lookups by id stay inside the user they are asked for."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from memvee.extractors import OfflineExtractor
from projections import ProjectionReader


async def test_ids_of_another_user_find_nothing_and_own_ids_come_in_log_order(
    make_memory: Callable[..., Any],
) -> None:
    memory = await make_memory(extractor=OfflineExtractor())
    for user in ("ann", "bob"):
        await memory.add_exchange(user, "I live in Oslo.", "Nice.")
        await memory.add_exchange(user, "I work at Acme.", "Good.")
        await memory.flush(user)
    engine = memory._engine
    assert engine is not None
    reader = ProjectionReader(engine.tables)
    ann_messages = [m.message_id for m in await memory.messages("ann")]
    ann_entries = [e.entry_id for e in await memory.knowledge("ann")]
    with engine.store.engine.connect() as connection:
        assert reader.messages(connection, "bob", ids=ann_messages) == []
        assert reader.entries(connection, "bob", ann_entries) == []
        found = reader.messages(connection, "ann", ids=ann_messages[::-1])
        assert [m.message_id for m in found] == ann_messages
        assert {e.entry_id for e in reader.entries(connection, "ann", ann_entries)} == set(
            ann_entries
        )
        assert [m.seq for m in reader.messages(connection, "ann", seqs=[3, 1])] == [1, 3]
