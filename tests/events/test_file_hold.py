"""The record of which database file the open stores of a SQLite path hold."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path

import pytest

from events import StorageError
from events.file_hold import HELD_SUFFIX, FileHold


def _ident(path: Path) -> tuple[int, int]:
    found = os.stat(path)
    return found.st_dev, found.st_ino


def test_holders_of_one_file_share_it_and_the_last_removes_the_record(tmp_path: Path) -> None:
    database = tmp_path / "memory.db"
    database.write_bytes(b"")
    first = FileHold.take(database, create=True)
    second = FileHold.take(database, create=True)
    assert first is not None and second is not None
    assert first.ident == second.ident == _ident(database)
    first.release()
    assert (tmp_path / f"memory.db{HELD_SUFFIX}").exists(), "the second still holds it"
    second.release()
    second.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["memory.db"]


def test_a_missing_file_is_made_empty_so_that_the_record_names_it(tmp_path: Path) -> None:
    database = tmp_path / "memory.db"
    hold = FileHold.take(database, create=True)
    assert hold is not None
    assert database.read_bytes() == b""
    assert hold.ident == _ident(database)
    hold.release()


def test_another_file_at_the_path_is_refused_while_the_old_one_is_held(tmp_path: Path) -> None:
    database = tmp_path / "memory.db"
    database.write_bytes(b"")
    old = FileHold.take(database, create=True)
    assert old is not None
    (tmp_path / "backup.db").write_bytes(b"")
    (tmp_path / "backup.db").replace(database)
    with pytest.raises(StorageError, match="still has the file that was there open"):
        FileHold.take(database, create=True)
    old.release()
    new = FileHold.take(database, create=True)
    assert new is not None
    assert new.ident == _ident(database)
    new.release()


def test_a_holder_gone_without_a_release_holds_nothing(tmp_path: Path) -> None:
    """A process that dies loses its lock: the record it left names a file no one holds."""
    database = tmp_path / "memory.db"
    database.write_bytes(b"")
    dead = FileHold.take(database, create=True)
    assert dead is not None
    os.close(dead._descriptor)  # type: ignore[arg-type]  # what the kernel does at exit
    dead._descriptor = None
    (tmp_path / "backup.db").write_bytes(b"")
    (tmp_path / "backup.db").replace(database)
    hold = FileHold.take(database, create=True)
    assert hold is not None
    assert hold.ident == _ident(database)
    hold.release()


def test_a_file_system_without_flock_opens_unguarded_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Some network file systems refuse locks (ENOLCK): the store opens as it did before
    there was a record, never failing with a raw OSError."""

    def no_locks(descriptor: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    database = tmp_path / "m.db"
    with caplog.at_level(logging.WARNING, logger="memvee"):
        assert FileHold.take(database, create=True) is None
    assert "No locks available" in caplog.text


def test_a_hold_shared_again_after_the_others_left_meanwhile_is_recorded_again(
    tmp_path: Path,
) -> None:
    """A holder that failed to hold the file alone held nothing for that moment, so the
    other holder's release took itself for the last and removed the record: shared again,
    the hold records its file anew, and is still seen, so an open of another file put at
    the path is refused while it holds the old one."""
    database = tmp_path / "memory.db"
    database.write_bytes(b"")
    record = tmp_path / f"memory.db{HELD_SUFFIX}"
    opener = FileHold.take(database, create=True)
    other = FileHold.take(database, create=True)
    assert opener is not None and other is not None
    assert not opener.alone()
    other.release()
    assert not record.exists()
    opener.share()
    assert record.read_text() == "{} {}\n".format(*_ident(database))
    newcomer = FileHold.take(database, create=True)
    assert newcomer is not None
    assert not newcomer.alone(), "the opener holds the file too"
    newcomer.share()
    newcomer.release()
    (tmp_path / "backup.db").write_bytes(b"")
    (tmp_path / "backup.db").replace(database)
    with pytest.raises(StorageError, match="still has the file that was there open"):
        FileHold.take(database, create=True)
    opener.release()
    assert not record.exists()


def test_a_hold_shared_again_beside_a_store_of_another_file_put_at_the_path_is_refused(
    tmp_path: Path,
) -> None:
    """Where, while the hold held nothing, the file was replaced at its path and another
    store opened the new one, the two would read each other's write-ahead log: taking
    the hold again is refused."""
    database = tmp_path / "memory.db"
    database.write_bytes(b"")
    opener = FileHold.take(database, create=True)
    assert opener is not None
    opener.let_go()
    (tmp_path / f"memory.db{HELD_SUFFIX}").unlink()  # as the last other holder's release
    (tmp_path / "backup.db").write_bytes(b"")
    (tmp_path / "backup.db").replace(database)
    newcomer = FileHold.take(database, create=True)
    assert newcomer is not None
    with pytest.raises(StorageError, match="another store has opened the new one"):
        opener.share()
    assert not opener.held
    newcomer.release()
