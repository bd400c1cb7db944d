"""Spool: durable, WAL, oldest first, deleted on ack, bounded with drop-oldest; a file that cannot be written
(locked by another program, full) holds messages in a bounded memory queue until it can."""
from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from edge.spool import Spool, SpoolError


def test_wal_durable_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    s = Spool(path)
    ids = [s.put("t/plates", f"m{i}".encode()) for i in range(5)]
    assert ids == sorted(ids) and len(s) == 5
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    s.delete(ids[1])
    assert [m.payload for m in s.after(0, 10)] == [b"m0", b"m2", b"m3", b"m4"]
    assert [m.id for m in s.after(ids[2], 1)] == [ids[3]]
    s.close()
    # A new process (or a restart after a kill) finds what was not acknowledged.
    s2 = Spool(path)
    assert len(s2) == 4 and s2.size_bytes == 8
    assert [m.topic for m in s2.after(0, 10)] == ["t/plates"] * 4
    s2.delete(12345)  # an id already gone is fine
    assert len(s2) == 4


def test_bound_drops_oldest_and_counts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    s = Spool(tmp_path / "s.sqlite", max_events=3)
    for i in range(5):
        s.put("t", f"m{i}".encode())
    assert [m.payload for m in s.after(0, 10)] == [b"m2", b"m3", b"m4"]
    assert s.dropped == 2 and len(s) == 3
    assert "spool full" in caplog.text and "dropped the 1 oldest" in caplog.text


def test_byte_bound(tmp_path: Path) -> None:
    s = Spool(tmp_path / "s.sqlite", max_bytes=25)
    for _ in range(4):
        s.put("t", bytes(10))
    assert len(s) == 2 and s.size_bytes == 20 and s.dropped == 2
    s.put("t", bytes(100))  # larger than the bound alone: kept, the rest goes
    assert len(s) == 1 and s.dropped == 4


def test_unwritable_spool_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(SpoolError, match="cannot open the spool"):
        Spool(tmp_path / "file" / "s.sqlite")


@contextmanager
def locked(path: Path) -> Iterator[sqlite3.Connection]:
    """Another program holding the spool file's write lock (an exclusive transaction) for the block."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        yield other
    finally:
        other.execute("ROLLBACK")
        other.close()


def rows(path: Path) -> list[tuple[int, bytes]]:
    with sqlite3.connect(path) as db:
        return [(i, bytes(p)) for i, p in db.execute("SELECT id, payload FROM outbox ORDER BY id")]


def test_ids_never_repeat_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    s = Spool(path)
    ids = [s.put("t", b"m") for _ in range(3)]
    for i in ids:
        s.delete(i)
    s.close()
    assert Spool(path).put("t", b"m") == ids[-1] + 1  # an empty spool after a restart goes on counting


def test_a_locked_spool_holds_messages_in_memory_in_order(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "edge.spool")
    path = tmp_path / "s.sqlite"
    s = Spool(path)
    first = s.put("t", b"a")
    with locked(path):
        later = [s.put("t", b"b"), s.put("t", b"c")]  # no exception: held in memory
        assert s.memory_depth == 2 and len(s) == 3 and s.failures.total >= 1
        assert "cannot write the spool (database is locked)" in caplog.text
        assert [(m.id, m.payload) for m in s.after(0, 10)] == [(first, b"a"), (later[0], b"b"), (later[1], b"c")]
        assert [m.payload for m in s.after(first, 1)] == [b"b"]
        assert not s.flush()  # still locked, or not yet due
        s.delete(later[0])  # acknowledged from memory: gone, never written
        assert len(s) == 2 and s.memory_depth == 1
    assert s.flush(force=True) and s.memory_depth == 0 and len(s) == 2
    assert "takes writes again" in caplog.text
    assert rows(path) == [(first, b"a"), (later[1], b"c")]  # each with the id it was given, in order
    s.put("t", b"d")
    s.close()
    assert [m.payload for m in Spool(path).after(0, 10)] == [b"a", b"c", b"d"]


def test_a_full_spool_file_drops_the_oldest_held_in_memory_and_recovers(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "s.sqlite"
    s = Spool(path, memory_max_events=3)
    s.put("t", b"a")
    pages = s._db.execute("PRAGMA page_count").fetchone()[0]
    s._db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "database or disk is full" from here on
    held = [s.put("t", bytes([i]) * 5000) for i in range(5)]
    assert "database or disk is full" in caplog.text
    assert s.memory_depth == 3 and s.memory_dropped == 2 and "memory queue full" in caplog.text
    assert [m.id for m in s.after(0, 10)][1:] == held[2:]  # the newest survive, as in the file
    assert not s.flush(force=True)
    s._db.execute("PRAGMA max_page_count = 1073741823")  # space again
    assert s.flush(force=True)
    assert [i for i, _ in rows(path)][1:] == held[2:] and s.failures.streak == 0 and s.failures.total >= 2


def test_a_failed_delete_is_retried(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    s = Spool(path)
    a, b = s.put("t", b"a"), s.put("t", b"b")
    with locked(path):
        s.delete(a)  # acknowledged while the file is locked: no exception
        s.delete(b)
        assert len(s) == 2 and s.failures.total == 1  # the second waits for the retry, not for the lock
        c = s.put("t", b"c")  # behind the pending deletes: held, in order
        assert s.memory_depth == 1
    assert s.flush(force=True)
    assert rows(path) == [(c, b"c")] and len(s) == 1


def test_close_reports_what_it_could_not_write(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "s.sqlite"
    s = Spool(path)
    with locked(path):
        held = s.put("t", b"a")
        assert s.close() == 1
    assert f"could not be written to the spool and are lost (ids {held})" in caplog.text
    s = Spool(path)
    with locked(path):
        s.put("t", b"a")
    assert s.close() == 0 and len(rows(path)) == 1  # written on the way out
