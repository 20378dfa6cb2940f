"""Where the store opens, as users give it: a URL that names no driver gets psycopg 3 (the
driver of memvee's ``postgres`` extra); text that is no URL, an in-memory SQLite database,
a path with a NUL character and a URL given as a path are refused before anything opens;
a URL is shown with its passwords hidden."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from events import (
    EventStore,
    InvalidInputError,
    StorageError,
    check_db_path,
    driver_url,
    redacted_url,
    sqlite_url,
    url_secrets,
)
from memvee import Memory, MemoryConfig
from memvee.audit import Audit
from memvee.extractors import OfflineExtractor


@pytest.mark.parametrize(
    ("given", "used"),
    [
        (
            "postgresql://u:secret@db.example:5432/mem",
            "postgresql+psycopg://u:secret@db.example:5432/mem",
        ),
        ("postgres://u:secret@db.example/mem", "postgresql+psycopg://u:secret@db.example/mem"),
        (
            "postgresql://localhost/mem?sslmode=require",
            "postgresql+psycopg://localhost/mem?sslmode=require",
        ),
    ],
)
def test_a_postgresql_url_without_a_driver_uses_psycopg_3(given: str, used: str) -> None:
    assert driver_url(given) == used


@pytest.mark.parametrize(
    "given",
    [
        "postgresql+psycopg://u:p@h/db",
        "postgresql+psycopg2://u:p@h/db",
        "sqlite:////tmp/memvee.db",
    ],
)
def test_a_url_naming_its_driver_is_kept(given: str) -> None:
    assert driver_url(given) == given


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("not a url", "is not a database URL (dialect"),
        ("postgresql://me:s3cret@db.example:port/mem", "its port is no number"),
    ],
)
def test_text_that_is_no_database_url_is_refused_without_repeating_it(
    given: str, says: str
) -> None:
    with pytest.raises(InvalidInputError, match=r"^db_url ") as refused:
        driver_url(given, name="db_url")
    assert says in str(refused.value)
    assert "s3cret" not in str(refused.value) and refused.value.__cause__ is None


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////data/x.db?timeout=5",
        "sqlite:////data/x.db?check_same_thread=false&cached_statements=10",
        "sqlite:///file:/data/x.db?mode=ro&uri=true",
        "sqlite:///file:/data/x.db?uri=true&timeout=5",
    ],
)
def test_the_sqlite_url_parameters_sqlalchemy_or_sqlite_read_are_taken(url: str) -> None:
    assert driver_url(url) == url


@pytest.mark.parametrize(
    ("database", "query", "says"),
    [
        ("x.db", "bogus=1", "unknown SQLite URL parameter 'bogus'"),
        ("x.db", "timeout=5&timout=5", "unknown SQLite URL parameter 'timout'"),
        ("x.db", "mode=ro", "the SQLite URL parameter 'mode' is read only with uri=true"),
        ("x.db", "uri=maybe&mode=ro", "the SQLite URL parameter 'uri' takes true or false"),
        ("x.db", "mode=ro&uri=true", "uri=true needs a file: name"),
        ("x.db", "uri=true", "uri=true needs a file: name"),
        ("file:x.db", "", "a file: name needs uri=true"),
        ("file:x.db", "timeout=5&uri=false", "a file: name needs uri=true"),
    ],
)
def test_a_sqlite_url_sqlite_would_not_read_as_written_is_refused_naming_why_before_anything_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database: str, query: str, says: str
) -> None:
    """SQLAlchemy dropped an unknown parameter without a word (a misspelt option, or a
    mode=ro that opened the file for writing after all); SQLite took ``x.db?mode=ro`` for
    the file's whole name and wrote there, while the claims and checks looked at ``x.db``;
    SQLAlchemy takes a ``file:`` name without uri=true for a relative path named
    ``file:x.db``."""
    monkeypatch.chdir(tmp_path)
    name = database.replace("x.db", str(tmp_path / "x.db"))
    url = f"sqlite:///{name}" + (f"?{query}" if query else "")
    for refuse in (
        lambda u: driver_url(u, name="db_url"),
        EventStore,
        lambda u: MemoryConfig(db_url=u),
    ):
        with pytest.raises(InvalidInputError, match=says):
            refuse(url)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file:mem?mode=memory&uri=true"]
)
def test_an_in_memory_sqlite_database_is_refused_before_anything_opens(url: str) -> None:
    """MemoryConfig took one, and only the open refused it."""
    for refuse in (EventStore, driver_url, lambda u: MemoryConfig(db_url=u)):
        with pytest.raises(InvalidInputError, match="needs a SQLite file"):
            refuse(url)


@pytest.mark.parametrize(
    "url",
    [
        "bogus://u:secret@h/db",
        "mysql+nodriver://u:secret@h/db",
        "mysql://u:secret@h/db",  # known to SQLAlchemy: it failed on its missing driver
        "oracle://u:secret@h/db",
    ],
)
def test_a_url_of_a_database_memvee_does_not_use_is_one_refusal_at_once(url: str) -> None:
    for refuse in (EventStore, driver_url, lambda u: MemoryConfig(db_url=u)):
        with pytest.raises(InvalidInputError, match=r"memvee cannot use a .* database") as caught:
            refuse(url)
        assert "secret" not in str(caught.value)


def test_an_in_memory_database_given_as_a_path_is_refused_before_a_file_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It used to make a file named ``:memory:`` in the working folder."""
    monkeypatch.chdir(tmp_path)
    for refuse in (sqlite_url, lambda p: MemoryConfig(db_path=p)):
        with pytest.raises(InvalidInputError, match="not an in-memory database"):
            refuse(":memory:")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("folder", ["mode=memory", "a:memory:b"])
def test_a_file_whose_path_holds_what_names_an_in_memory_database_is_refused_before_it_opens(
    tmp_path: Path, folder: str
) -> None:
    """The event store's library reads ``:memory:`` or ``mode=memory`` anywhere in a URL as
    an in-memory database: every thread shared one connection, with no write lock, so a
    failed write's rows were committed by another thread's commit."""
    path = tmp_path / folder / "m.db"
    for refuse in (sqlite_url, lambda p: MemoryConfig(db_path=p)):
        with pytest.raises(InvalidInputError, match="rename the folder or file"):
            refuse(path)
    assert list(tmp_path.iterdir()) == [], "no folder made"
    path.parent.mkdir()
    urls = [f"sqlite:///{path}", f"sqlite:///file:{tmp_path}/x.db?uri=true&modeof={path}"]
    for url in urls:
        for refuse in (EventStore, driver_url, lambda u: MemoryConfig(db_url=u)):
            with pytest.raises(InvalidInputError, match="rename the folder or file"):
                refuse(url)
    assert list(path.parent.iterdir()) == [] and not (tmp_path / "x.db").exists()


def test_a_database_path_with_a_nul_character_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="NUL character"):
        sqlite_url("memory\x00.db")


@pytest.mark.parametrize(
    "url", ["sqlite:///memory\x00.db", "sqlite:///file:memory\x00.db?uri=true"]
)
def test_a_sqlite_url_naming_a_file_with_a_nul_character_is_refused_before_anything_opens(
    tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No file name holds a NUL: the URL is refused as the path is, by every way in, not
    with the file system's raw ValueError once the store opens."""
    monkeypatch.chdir(tmp_path)
    for refuse in (EventStore, driver_url, lambda u: MemoryConfig(db_url=u)):
        with pytest.raises(InvalidInputError, match="NUL character"):
            refuse(url)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "path", ["postgresql://me:s3cret@h/mem", "sqlite:///mem.db", "postgres+psycopg://h/mem"]
)
def test_a_database_url_given_as_a_path_is_refused_without_repeating_it(path: str) -> None:
    with pytest.raises(InvalidInputError) as refused:
        check_db_path(path, name="--db", url_name="--db-url")

    assert str(refused.value) == (
        "--db takes the path of a SQLite file, and this one is a database URL: give it as --db-url"
    )


@pytest.mark.parametrize("name", ["notes?v=2.db", "what?.db", "odd?%3F#1.db"])
async def test_a_database_path_with_a_question_mark_is_the_file_of_that_name(
    tmp_path: Path, name: str
) -> None:
    """The path was put in a URL unquoted: ``notes?v=2.db`` was refused for an unknown
    parameter 'v', and ``what?.db`` opened a file named ``what``."""
    config = MemoryConfig(db_path=tmp_path / name)
    async with Memory(config=config, extractor=OfflineExtractor(), embedder=False) as memory:
        await memory.add_exchange("ann", "I live in Oslo.", "Noted.")

    assert (tmp_path / name).is_file()
    assert not (tmp_path / name.partition("?")[0]).exists()
    with Audit(db_path=tmp_path / name, create=False) as audit:
        assert [e.payload["content"] for e in audit.log("ann", types=["MessageAdded"])] == [
            "I live in Oslo.",
            "Noted.",
        ]


@pytest.mark.parametrize("path", ["memvee.db", "C:\\data\\memvee.db", "data/a:b.db", "~/m.db"])
def test_a_path_is_taken_as_a_path(path: str) -> None:
    check_db_path(path)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://me:s3cret@h:5432/mem", "postgresql+psycopg://me:***@h:5432/mem"),
        (
            "postgresql+psycopg://h/mem?password=s3cret&sslmode=require",
            "postgresql+psycopg://h/mem?password=***&sslmode=require",
        ),
        (
            "postgresql+psycopg://h/mem?sslpassword=s3cret",
            "postgresql+psycopg://h/mem?sslpassword=***",
        ),
        ("sqlite:////tmp/m.db", "sqlite:////tmp/m.db"),
    ],
)
def test_a_url_is_shown_with_its_passwords_hidden(url: str, shown: str) -> None:
    assert redacted_url(url) == shown


@pytest.mark.parametrize(
    ("url", "secrets"),
    [
        ("postgresql+psycopg://me:s3cret@h:5432/mem", ("s3cret",)),
        ("postgresql+psycopg://h/mem?password=s3cret&sslpassword=k3y", ("s3cret", "k3y")),
        ("sqlite:////tmp/m.db", ()),
        ("not a url", ()),
        ("postgresql://me:s3cret@h:port/mem", ()),  # refused where it is opened
    ],
)
def test_the_passwords_a_url_carries_are_known_to_keep_them_out_of_logs(
    url: str, secrets: tuple[str, ...]
) -> None:
    assert url_secrets(url) == secrets


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:pa@Secr3tPart@127.0.0.1:1/db",  # the rest would be the host
        "postgresql://app:pa@Secr3t/Part@127.0.0.1:1/db",  # the host and the database
        "postgresql://app:pa@Secr3t?Part@127.0.0.1:1/db",  # the host and the query
    ],
)
def test_a_password_with_an_unencoded_at_is_refused_and_shown_with_none_of_it(url: str) -> None:
    """SQLAlchemy ends the password at its first '@': the rest of it would go to the
    driver as the host, and every message naming the host would show it."""
    for refuse in (EventStore, driver_url, lambda u: MemoryConfig(db_url=u)):
        with pytest.raises(
            InvalidInputError, match=r"write each '@' in the password as %40"
        ) as caught:
            refuse(url)
        assert "Secr3t" not in str(caught.value) and caught.value.__cause__ is None
    assert redacted_url(url) == "postgresql://***"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://app:pa%40Secr3tPart@h/db?application_name=me@work",
        "postgresql+psycopg://me@team:s3cret@h/db",  # a user name's '@' ends at the ':'
        "sqlite:////tmp/at@home/m.db",
    ],
)
def test_an_encoded_at_or_one_outside_the_password_is_taken(url: str) -> None:
    assert driver_url(url) == url
    assert "Secr3t" not in redacted_url(url) and "s3cret" not in redacted_url(url)


def test_a_store_that_cannot_open_names_its_url_without_the_password() -> None:
    url = "postgresql+psycopg://me:s3cret@127.0.0.1:1/mem?password=s3cret&connect_timeout=2"

    with pytest.raises(StorageError) as failed:
        EventStore(url)

    assert "s3cret" not in str(failed.value)
    assert "postgresql+psycopg://me:***@127.0.0.1:1/mem?" in str(failed.value)


def test_a_postgresql_url_without_its_driver_installed_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    found = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "psycopg" else found(name, *args),
    )
    with pytest.raises(StorageError, match=r"install memvee's postgres extra") as refused:
        EventStore("postgresql://u:secret@localhost/mem")
    assert "secret" not in str(refused.value)


async def test_a_folder_name_longer_than_the_file_system_takes_is_the_storage_error_of_its_url(
    tmp_path: Path,
) -> None:
    """Memory(db_path=<a folder of 300 characters>/x.db) failed with the raw OSError of
    making the folder ("File name too long"), where the same path as a db_url is refused
    with a StorageError."""
    path = tmp_path / ("n" * 300) / "x.db"
    with pytest.raises(StorageError, match=r"^cannot open the event store at sqlite:///"):
        await Memory(db_url=f"sqlite:///{path}", embedder=False).open()
    with pytest.raises(StorageError, match=r"^cannot open the event store at sqlite:///"):
        await Memory(db_path=str(path), embedder=False).open()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("under", ["notes.txt", "notes.txt/sub"])
def test_a_database_path_through_a_file_is_refused_as_not_a_folder(
    tmp_path: Path, under: str
) -> None:
    """``notes.txt/memvee.db`` was refused with "File exists: notes.txt", which names no
    problem; the file standing where a folder should be is named as not a folder."""
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(NotADirectoryError) as refused:
        sqlite_url(tmp_path / under / "memvee.db")
    assert refused.value.strerror == "Not a directory"
    assert str(refused.value.filename).startswith(str(tmp_path / "notes.txt"))
    assert (tmp_path / "notes.txt").read_text() == "mine"
