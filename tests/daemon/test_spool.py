"""Spool: durable, WAL, oldest first, deleted on ack, bounded with drop-oldest."""
from __future__ import annotations

import sqlite3
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
    for i in range(4):
        s.put("t", bytes(10))
    assert len(s) == 2 and s.size_bytes == 20 and s.dropped == 2
    s.put("t", bytes(100))  # larger than the bound alone: kept, the rest goes
    assert len(s) == 1 and s.dropped == 4


def test_unwritable_spool_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(SpoolError, match="cannot open the spool"):
        Spool(tmp_path / "file" / "s.sqlite")
