"""Projections as older memvees left them on SQLite, for the tests of their upgrade."""

from __future__ import annotations

import unicodedata
import zlib

import Stemmer

from events import EventStore
from events.user_log import LIVE_KNOWLEDGE
from projections import Projector

__all__ = ["SCHEMA_OF_INDEXED_LAYOUT", "layout_17", "mark_as_layout_17"]

SCHEMA_OF_INDEXED_LAYOUT = {
    "ascii|nfkd-casefold-unmarked-nfc|then-cut|marks-in-words|unspaced-bigrams-and-singles"
    "|strokes|cut 2046 bytes": 14,
    "ascii|nfkd-casefold-unmarked-nfc|then-cut|marks-in-words|unspaced-bigrams-and-singles"
    "|strokes|cut 2046 bytes|current marked": 15,
    "ascii|nfkd-casefold-unmarked-nfc|then-cut|marks-in-words|unspaced-bigrams-and-singles"
    "|strokes|cut 2046 bytes|current marked by version": 17,
    "ascii|nfkd-casefold-unmarked-nfc|then-cut|marks-in-words|unspaced-bigrams-and-singles"
    "|strokes|cut 2046 bytes|current marked by its version's first write": 18,
}
"""The schema version that came with each way of indexing words (a later version may
change other tables and keep the words as they are: 16 marked repeats in the citations)."""


def layout_17() -> int:
    """The layout memvee of schema 17 stored on SQLite (this installation's stemmer and
    Unicode): its index marked current entries by their knowledge version's name."""
    marked_by_name = next(k for k, v in SCHEMA_OF_INDEXED_LAYOUT.items() if v == 17)
    words = f"{Stemmer.version()}|unicode {unicodedata.unidata_version}|{marked_by_name}"
    return 17 << 20 | zlib.crc32(words.encode()) & 0xFFFFF


def mark_as_layout_17(store: EventStore, projector: Projector) -> None:
    """Leave the index as memvee of layout 17 did: current entries marked by their
    knowledge version's name (live ones bare of it), the tables stamped 17."""
    tables = projector.tables
    k, knowledge = projector.search.knowledge_fts.name, tables.knowledge.name
    with store.transaction() as connection:
        connection.exec_driver_sql(
            f"UPDATE {k} SET owner = substr(owner, 1, 32) || (SELECT 'now' || "
            f"CASE n.knowledge_version WHEN '{LIVE_KNOWLEDGE}' THEN '' "
            f"ELSE lower(hex(n.knowledge_version)) END FROM {knowledge} AS n "
            f"WHERE n.entry_id = {k}.item_id) WHERE owner LIKE '%now_%'"
        )
        connection.exec_driver_sql(
            f"UPDATE {tables.position.name} SET position = {layout_17()} WHERE name = 'schema'"
        )
