"""Retrieval latency, beside a raw FTS5 MATCH on the same file, and the index rebuild.

Knowledge is written through the real engine path, in bulk: an extractor that answers at
once returns 50 varied facts per user message (each citing that message), so 100,000
entries are 2,000 exchanges, flushed ten exchanges at a time. Facts are sentences drawn
from a vocabulary (cities, employers, hobbies, foods, people...), so a question matches
a realistic share of them: a common word such as "live" a tenth or more (with the words
:func:`projections.search_terms` adds for its topic), a name or a city well under 1%.

``await memory.retrieve(user, q, top_k=10)`` is timed end to end (validation, the hop to
the reader thread pool, ranking, the join to the knowledge rows), with lexical ranking
only (``embedder=False``: the floor beside it is a lexical query; the ``hybrid`` section
times the default embedder) for one user holding
1,000, 10,000 and 100,000 entries (quick: 1,000 and 10,000), and for one of 1,000 users
who each hold the same 100 facts (quick: 10). Beside every query, stdlib sqlite3 runs the
bare FTS5 query on the same file with the exact same MATCH string: the floor. Then the
projections of the largest single-user database are rebuilt (:func:`projections.rebuild`)
beside a raw FTS5 index of the same rows built with ``INSERT ... SELECT``.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    BenchConfig,
    Section,
    Workspace,
    cell,
    fmt_ms,
    fmt_num,
    fmt_ratio,
    percentile,
    progress,
)
from events import (
    EventStore,
    ExtractedFact,
    ExtractionBatch,
    ExtractionResult,
    sqlite_url,
    user_log_id,
)
from memvee import Memory, MemoryConfig
from projections import rebuild, search_terms
from projections.ranking import fts_match

__all__ = ["BulkExtractor", "Dataset", "questions", "run"]

_SEED = 20_260_611
_FACTS_PER_MESSAGE = 50
_EXCHANGES_PER_FLUSH = 10
_QUESTION_SET = 50
_USERS_AT_ONCE = 50
_WARMUP_PASSES = 1
_TOP_K = 10
_ASSISTANT_REPLY = "Noted, thanks."
_TOKENIZER = "porter unicode61 remove_diacritics 2"

_RAW_QUERY = (
    "SELECT rowid, bm25(mv_knowledge_fts, 0.0, 1.0, 0.0) FROM mv_knowledge_fts"
    " WHERE mv_knowledge_fts MATCH ? ORDER BY 2 LIMIT ?"
)
_COUNT_QUERY = "SELECT count(*) FROM mv_knowledge_fts WHERE mv_knowledge_fts MATCH ?"

_WORDS: dict[str, str] = {
    "name": (
        "Anna Ben Carla David Elena Farid Greta Hugo Ines Jonas Karin Luca Maja Nils Olga "
        "Pablo Quentin Rosa Stefan Tanja Ulrich Vera Wiktor Xenia Yusuf Zoe Amir Birgit "
        "Chiara Dmitri Emil Fatima Gustav Hanna Ivan Julia Kenji Lena Marco Nadia Oskar "
        "Priya Rafael Sofia Tomas Ursula Viktor Wanda Yara Zeynep Aiko Bruno Clara Diego "
        "Esther Felix Gabriel Helga Igor Jasmin Kofi Lars Mila Noah Ofelia Piotr Rania "
        "Samuel Tereza Uma Valentin Wei Ximena Yosef Zora Arjun Beatriz Cyrus"
    ),
    "city": (
        "Lisbon Porto Madrid Seville Barcelona Paris Lyon Marseille Berlin Hamburg Munich "
        "Cologne Vienna Zurich Geneva Milan Turin Rome Naples Athens Istanbul Sofia Bucharest "
        "Budapest Prague Warsaw Krakow Vilnius Riga Tallinn Helsinki Stockholm Oslo Bergen "
        "Copenhagen Amsterdam Rotterdam Brussels Antwerp Dublin Cork Edinburgh Glasgow "
        "Manchester London Bristol Reykjavik Valencia Bilbao Bordeaux Nantes Leipzig Dresden "
        "Graz Salzburg Ljubljana Zagreb Belgrade Thessaloniki Malaga"
    ),
    "employer": (
        "Acme Globex Initech Umbrella Hooli Vandelay Soylent Stark Wayne Tyrell Cyberdyne "
        "Aperture Wonka Gringotts Oscorp Monarch Dunder Pied Massive Virtucon Nakatomi "
        "Genco Prestige Sterling Bluth Krusty Duff Gekko Ollivander Buynlarge Yoyodyne "
        "Zorg Weyland Abstergo Rekall Sirius Tessier Ajax Octan Lunar"
    ),
    "job": (
        "nurse teacher engineer designer baker plumber lawyer accountant architect "
        "carpenter chemist dentist editor farmer firefighter gardener journalist librarian "
        "mechanic musician painter pharmacist photographer pilot programmer researcher "
        "surgeon translator veterinarian welder"
    ),
    "food": (
        "peanuts sushi pizza lasagna risotto paella falafel hummus ramen curry tacos "
        "burritos dumplings pierogi goulash couscous tagine moussaka souvlaki kebab "
        "croissants waffles pancakes porridge oysters mussels shrimp salmon tuna cod "
        "avocado mango kiwi strawberries blueberries cherries walnuts almonds cashews "
        "chocolate cheesecake tiramisu gelato licorice marzipan truffles asparagus "
        "broccoli spinach mushrooms"
    ),
    "sport": (
        "tennis football basketball volleyball handball squash badminton golf hockey "
        "rugby cricket baseball padel futsal netball lacrosse polo softball curling "
        "bowling"
    ),
    "weekday": "Monday Tuesday Wednesday Thursday Friday Saturday Sunday",
    "hobby": (
        "climbing pottery chess knitting birdwatching gardening fishing sailing surfing "
        "skiing hiking cycling running swimming dancing painting drawing photography "
        "woodworking baking brewing camping kayaking yoga juggling origami calligraphy "
        "astronomy geocaching archery"
    ),
    "pet": "dog cat parrot rabbit hamster tortoise ferret goldfish gecko canary pony iguana",
    "relation": (
        "sister brother daughter son mother father wife husband cousin neighbour colleague friend"
    ),
    "language": (
        "Portuguese Spanish French German Italian Dutch Polish Czech Greek Turkish Swedish "
        "Norwegian Danish Finnish Icelandic Hungarian Romanian Bulgarian Croatian Serbian "
        "Japanese Korean Mandarin Arabic Hindi"
    ),
    "instrument": (
        "piano guitar violin cello flute clarinet saxophone trumpet trombone drums harp "
        "ukulele accordion banjo mandolin"
    ),
    "colour": (
        "red orange yellow green blue purple pink brown grey black white teal turquoise "
        "maroon violet"
    ),
}

_VOCABULARY = {key: tuple(words.split()) for key, words in _WORDS.items()}
"""The words a fact or a question is filled in with, by placeholder."""

_FACTS = (
    "User lives in {city}.",
    "User moved to {city} in {year}.",
    "User works at {employer} as a {job}.",
    "User's {relation} {name} lives in {city}.",
    "User likes {food}.",
    "User is allergic to {food}.",
    "User plays {sport} every {weekday}.",
    "User enjoys {hobby} with {name}.",
    "User has a {pet} called {name}.",
    "User's {relation} is called {name}.",
    "User speaks {language}.",
    "User is learning to play the {instrument}.",
    "User was born in {city} in {year}.",
    "User's favourite colour is {colour}.",
    "User visited {city} with {name} in {year}.",
    "User owes {name} {number} euros.",
    "User's {relation} {name} works at {employer}.",
    "User runs {number} km every {weekday}.",
    "User's {relation} {name} is {age} years old.",
    "User dislikes {food}.",
    "User's flat in {city} has {rooms} rooms.",
    "User met {name} at {employer} in {year}.",
)

_QUESTIONS = (
    "where does she live now?",
    "what food does he like",
    "who is {name}",
    "where does the user work?",
    "what is their job?",
    "does she have any pets?",
    "is he allergic to anything?",
    "which languages does she speak?",
    "when did they move to {city}?",
    "what hobbies does the user enjoy?",
    "how is {name} related to the user?",
    "what instrument is he learning?",
    "what sport does she play on {weekday}?",
    "how much money does the user owe {name}?",
    "what happened in {year}?",
    "what is her favourite colour?",
    "does he know anyone at {employer}?",
    "has she ever been to {city}?",
    "what does {name} do for a living?",
    "would he eat {food}?",
    "who does she go {hobby} with?",
    "what is the name of his {pet}?",
    "where does her {relation} live?",
    "tell me about the user's {relation}",
    "which city was he born in?",
)


def _fill(template: str, rng: random.Random) -> str:
    """``template`` with every placeholder drawn from the vocabulary."""
    values = {key: rng.choice(words) for key, words in _VOCABULARY.items()}
    values |= {
        "year": str(rng.randint(1960, 2025)),
        "number": str(rng.randint(2, 500)),
        "age": str(rng.randint(1, 95)),
        "rooms": str(rng.randint(1, 6)),
    }
    return template.format(**values)


def _facts(rng: random.Random, count: int) -> list[str]:
    return [_fill(rng.choice(_FACTS), rng) for _ in range(count)]


def questions(count: int = _QUESTION_SET, seed: int = _SEED) -> list[str]:
    """``count`` natural-language questions, the same in every run."""
    rng = random.Random(seed)
    return [_fill(rng.choice(_QUESTIONS), rng) for _ in range(count)]


class BulkExtractor:
    """An :class:`events.Extractor` that answers at once with prepared facts.

    ``facts_of`` maps a user message's content to the facts extracted from it; every
    fact cites its own message, so provenance is exercised as with a real extractor.
    """

    name = "bench-bulk"

    def __init__(self, facts_of: Mapping[str, Sequence[str]]) -> None:
        self.facts_of = facts_of

    async def extract(self, batch: ExtractionBatch) -> ExtractionResult:
        """The prepared facts of each user message of the batch; no I/O, no awaiting."""
        facts = tuple(
            ExtractedFact(text, (m.message_id,))
            for m in batch.messages
            if m.role == "user"
            for text in self.facts_of.get(m.content, ())
        )
        return ExtractionResult(facts=facts, extractor=self.name)

    async def aclose(self) -> None:
        """Nothing to release."""
        return None


@dataclass(frozen=True, slots=True)
class Dataset:
    """``users`` users holding ``per_user`` entries each; the first one is queried."""

    users: int
    per_user: int

    @property
    def entries(self) -> int:
        """Entries in the whole database."""
        return self.users * self.per_user

    @property
    def key(self) -> str:
        """The statistics prefix: ``retrieve.1u.100000`` or ``retrieve.1000u.100``."""
        return f"retrieve.{self.users}u.{self.per_user}"

    @property
    def label(self) -> str:
        """The table's first column."""
        if self.users == 1:
            return f"1 user, {self.per_user:,} entries"
        return f"{self.users:,} users x {self.per_user:,} ({self.entries:,} in all)"

    def messages(self) -> dict[str, list[str]]:
        """Each user message's content, mapped to the facts extracted from it.

        With several users every user sends the same messages, so they hold the same
        facts. A message says its first three facts in words, so messages match too.
        """
        rng = random.Random(f"{_SEED}-{self.per_user}")
        out: dict[str, list[str]] = {}
        left = self.per_user
        while left > 0:
            facts = _facts(rng, min(_FACTS_PER_MESSAGE, left))
            content = " ".join(facts[:3]).replace("User's", "My").replace("User", "I")
            # Two messages may say the same; then the later one's facts count for both.
            content = f"{content} ({len(out) + 1})"
            out[content] = facts
            left -= len(facts)
        return out


def _user(n: int) -> str:
    return f"bench-user-{n}"


def _config(path: Path) -> MemoryConfig:
    # Writing with durability="normal" only makes building faster; reads do not sync.
    return MemoryConfig(db_path=str(path), durability="normal")


async def _fill_user(memory: Memory, user_id: str, contents: list[str]) -> None:
    for start in range(0, len(contents), _EXCHANGES_PER_FLUSH):
        for content in contents[start : start + _EXCHANGES_PER_FLUSH]:
            await memory.add_exchange(user_id, content, _ASSISTANT_REPLY)
        await memory.flush(user_id)


async def _build(path: Path, dataset: Dataset, facts_of: Mapping[str, list[str]]) -> None:
    """Write the dataset through the engine: exchanges, then processing runs."""
    contents = list(facts_of)
    async with Memory(
        config=_config(path), extractor=BulkExtractor(facts_of), embedder=False
    ) as memory:
        for first in range(0, dataset.users, _USERS_AT_ONCE):
            chunk = range(first, min(first + _USERS_AT_ONCE, dataset.users))
            await asyncio.gather(*(_fill_user(memory, _user(n), contents) for n in chunk))


def _count_entries(path: Path) -> int:
    connection = sqlite3.connect(path)
    try:
        return int(connection.execute("SELECT count(*) FROM mv_knowledge").fetchone()[0])
    finally:
        connection.close()


@dataclass(slots=True)
class _Round:
    """One round's latencies (seconds) and anomalies."""

    retrieve: list[float]
    raw: list[float]
    with_messages: list[float]
    mismatches: int = 0
    message_searches: int = 0


async def _measure(
    path: Path,
    facts_of: Mapping[str, list[str]],
    sequence: list[tuple[str, str]],
    rounds: int,
) -> list[_Round]:
    """Time ``sequence`` (question, MATCH string) in ``rounds`` rounds, interleaving the
    raw query, ``retrieve`` and ``retrieve(include_messages=True)`` query by query."""
    user = _user(0)
    raw = sqlite3.connect(path, check_same_thread=False)
    clock = time.perf_counter
    out: list[_Round] = []
    try:
        async with Memory(
            config=_config(path), extractor=BulkExtractor(facts_of), embedder=False
        ) as memory:
            warmup = list(dict.fromkeys(sequence)) * _WARMUP_PASSES
            for question, match in warmup:
                raw.execute(_RAW_QUERY, (match, _TOP_K)).fetchall()
                await memory.retrieve(user, question, top_k=_TOP_K)
                await memory.retrieve(user, question, top_k=_TOP_K, include_messages=True)
            for _ in range(rounds):
                current = _Round([], [], [])
                for question, match in sequence:
                    before = clock()
                    rows = raw.execute(_RAW_QUERY, (match, _TOP_K)).fetchall()
                    current.raw.append(clock() - before)
                    before = clock()
                    result = await memory.retrieve(user, question, top_k=_TOP_K)
                    current.retrieve.append(clock() - before)
                    before = clock()
                    await memory.retrieve(user, question, top_k=_TOP_K, include_messages=True)
                    current.with_messages.append(clock() - before)
                    current.mismatches += len(result.entries) != len(rows)
                    current.message_searches += len(result.entries) < _TOP_K
                out.append(current)
    finally:
        raw.close()
    return out


def _match_counts(path: Path, matches: list[str]) -> list[int]:
    connection = sqlite3.connect(path)
    try:
        return [int(connection.execute(_COUNT_QUERY, (m,)).fetchone()[0]) for m in matches]
    finally:
        connection.close()


def _retrieve_dataset(
    cfg: BenchConfig, folder: Path, dataset: Dataset, section: Section, queries: int
) -> None:
    """Build ``dataset`` in ``folder``, then time its queries into ``section``."""
    path = folder / "memvee.db"
    facts_of = dataset.messages()
    progress(f"retrieve: writing {dataset.label} through the engine")
    started = time.perf_counter()
    asyncio.run(_build(path, dataset, facts_of))
    built_s = time.perf_counter() - started
    stored = _count_entries(path)
    if stored != dataset.entries:
        section.notes.append(f"{dataset.label}: {stored:,} entries stored, not {dataset.entries:,}")
    log_id = str(user_log_id(_user(0)))
    asked = questions()
    match_of = {q: fts_match(log_id, search_terms(q)) for q in asked}
    rng = random.Random(_SEED + dataset.entries)
    sequence = [(q, match_of[q]) for q in (rng.choice(asked) for _ in range(queries))]
    counts = _match_counts(path, list(match_of.values()))
    progress(
        f"retrieve: {dataset.label} written in {built_s:,.1f} s; "
        f"{cfg.rounds} rounds of {queries} queries"
    )
    rounds = asyncio.run(_measure(path, facts_of, sequence, cfg.rounds))
    key = dataset.key
    for current in rounds:
        p50 = percentile(current.retrieve, 50) * 1000
        raw_p50 = percentile(current.raw, 50) * 1000
        section.stat(f"{key}.p50", "ms").add(p50)
        section.stat(f"{key}.p99", "ms").add(percentile(current.retrieve, 99) * 1000)
        section.stat(f"{key}.raw_p50", "ms").add(raw_p50)
        section.stat(f"{key}.raw_p99", "ms").add(percentile(current.raw, 99) * 1000)
        section.stat(f"{key}.ratio", "x").add(p50 / raw_p50)
        section.stat(f"{key}.msg_p50", "ms").add(percentile(current.with_messages, 50) * 1000)
        section.stat(f"{key}.msg_p99", "ms").add(percentile(current.with_messages, 99) * 1000)
    mismatches = sum(r.mismatches for r in rounds)
    if mismatches:
        section.notes.append(
            f"{dataset.label}: {mismatches} retrieves returned another number of entries "
            "than the raw MATCH"
        )
    stats = section.stats
    searched = statistics.median(r.message_searches for r in rounds) / queries
    share = statistics.median(counts) / dataset.per_user
    section.rows.append(
        [
            dataset.label,
            f"{share:.1%}\n[dim]max {max(counts) / dataset.per_user:.0%}[/dim]",
            cell(stats[f"{key}.p50"], fmt_ms),
            cell(stats[f"{key}.p99"], fmt_ms),
            cell(stats[f"{key}.raw_p50"], fmt_ms),
            cell(stats[f"{key}.raw_p99"], fmt_ms),
            cell(stats[f"{key}.ratio"], fmt_ratio),
            cell(stats[f"{key}.msg_p50"], fmt_ms),
            cell(stats[f"{key}.msg_p99"], fmt_ms),
            f"{searched:.0%}",
        ]
    )


def _raw_fts_build(path: Path) -> float:
    """Seconds to index every entry and message in fresh FTS5 tables, one transaction."""
    connection = sqlite3.connect(path, isolation_level=None)
    tables = ("bench_raw_knowledge_fts", "bench_raw_messages_fts")
    try:
        for table in tables:
            connection.execute(f"DROP TABLE IF EXISTS {table}")
        started = time.perf_counter()
        connection.execute("BEGIN")
        for table in tables:
            connection.execute(
                f"CREATE VIRTUAL TABLE {table} USING fts5("
                f"owner, body, item_id UNINDEXED, tokenize='{_TOKENIZER}')"
            )
        connection.execute(
            f"INSERT INTO {tables[0]} (owner, body, item_id) "
            "SELECT replace(log_id, '-', ''), text, entry_id FROM mv_knowledge ORDER BY rowid"
        )
        connection.execute(
            f"INSERT INTO {tables[1]} (owner, body, item_id) "
            "SELECT replace(log_id, '-', ''), content, message_id FROM mv_messages ORDER BY rowid"
        )
        connection.execute("COMMIT")
        seconds = time.perf_counter() - started
        for table in tables:
            connection.execute(f"DROP TABLE {table}")
        return seconds
    finally:
        connection.close()


def _rebuild_rounds(cfg: BenchConfig, path: Path, entries: int, section: Section) -> int:
    """Rebuild every projection of ``path`` in rounds, each after a raw FTS5 build."""
    store = EventStore(sqlite_url(path), durability="normal")
    events = 0
    try:
        for round_no in range(1, cfg.rounds + 1):
            progress(f"retrieve: index rebuild round {round_no}/{cfg.rounds}")
            raw_s = _raw_fts_build(path)
            started = time.perf_counter()
            events = rebuild(store)
            rebuild_s = time.perf_counter() - started
            section.stat("retrieve.rebuild.seconds", "s").add(rebuild_s)
            section.stat("retrieve.rebuild.events_rate", "events/s").add(events / rebuild_s)
            section.stat("retrieve.rebuild.entries_rate", "entries/s").add(entries / rebuild_s)
            section.stat("retrieve.rebuild.raw_seconds", "s").add(raw_s)
            section.stat("retrieve.rebuild.raw_rate", "entries/s").add(entries / raw_s)
            section.stat("retrieve.rebuild.ratio", "x").add(rebuild_s / raw_s)
    finally:
        store.close()
    stored = _count_entries(path)
    if stored != entries:
        section.notes.append(f"after the rebuild {stored:,} entries, not {entries:,}")
    return events


def run(cfg: BenchConfig, workspace: Workspace) -> list[Section]:
    """Time retrieve beside a raw MATCH for each dataset, then rebuild the largest."""
    sizes = [1_000, 10_000] if cfg.quick else [1_000, 10_000, 100_000]
    many = Dataset(1_000, cfg.pick(100, 10))
    queries = cfg.pick(200, 50)
    section = Section(
        f"Retrieving knowledge: await memory.retrieve(user, question, top_k={_TOP_K}) "
        f"beside a raw FTS5 MATCH on the same file ({queries} questions per round)",
        [
            "entries",
            "matching\n(median)",
            "retrieve\np50 ms",
            "retrieve\np99 ms",
            "raw MATCH\np50 ms",
            "raw MATCH\np99 ms",
            "p50 ÷ raw\nMATCH p50",
            "+messages\np50 ms",
            "+messages\np99 ms",
            "messages\nsearched",
        ],
    )
    rebuild_section = Section(
        f"Rebuilding the projections and search index of one user's {sizes[-1]:,} entries "
        "(projections.rebuild), beside a raw FTS5 index of the same rows",
        [
            "entries",
            "events",
            "rebuild\ns",
            "rebuild\nevents/s",
            "rebuild\nentries/s",
            "raw FTS5\nbuild s",
            "raw FTS5\nentries/s",
            "rebuild ÷\nraw",
        ],
    )
    events = 0
    for size in sizes:
        dataset = Dataset(1, size)
        with workspace.scratch("retrieve") as folder:
            _retrieve_dataset(cfg, folder, dataset, section, queries)
            if size == sizes[-1]:
                events = _rebuild_rounds(cfg, folder / "memvee.db", size, rebuild_section)
    with workspace.scratch("retrieve-users") as folder:
        _retrieve_dataset(cfg, folder, many, section, queries)
    section.facts["retrieve.largest"] = str(sizes[-1])
    section.facts["retrieve.many"] = f"{many.users},{many.per_user}"
    section.notes.append(
        f"{len(questions())} fixed questions (e.g. {questions()[0]!r}), {queries} drawn per "
        "round; matching = share of the queried user's entries the MATCH finds (median "
        "question, max below). Raw MATCH = stdlib sqlite3 on the same file: SELECT rowid, "
        "bm25(...) ... MATCH ? ORDER BY 2 LIMIT 10, the same MATCH string as retrieve; "
        "retrieve ranks top_k x 4 = 40 candidates and joins the knowledge rows. +messages "
        "= include_messages=True; messages are searched only when entries leave room in "
        "top_k (messages searched = share of the questions). Built with 50 facts per user "
        "message through the engine at durability normal. Medians of the rounds."
    )
    stats = rebuild_section.stats
    rebuild_section.rows.append(
        [
            fmt_num(sizes[-1]),
            fmt_num(events),
            cell(stats["retrieve.rebuild.seconds"], lambda v: fmt_num(v, 2)),
            cell(stats["retrieve.rebuild.events_rate"], fmt_num),
            cell(stats["retrieve.rebuild.entries_rate"], fmt_num),
            cell(stats["retrieve.rebuild.raw_seconds"], lambda v: fmt_num(v, 2)),
            cell(stats["retrieve.rebuild.raw_rate"], fmt_num),
            cell(stats["retrieve.rebuild.ratio"], fmt_ratio),
        ]
    )
    rebuild_section.notes.append(
        "Rebuild drops and refolds every projection (messages, buffer, tasks, knowledge and "
        "both FTS5 tables) from the log. Raw FTS5 build = stdlib sqlite3 creating two fresh "
        "FTS5 tables with the same tokenizer and filling them with INSERT ... SELECT from "
        "the knowledge and message rows, one transaction; the floor of the index part."
    )
    return [section, rebuild_section]
