"""Durable queue of outgoing MQTT messages: SQLite in WAL mode.

An event is written here (and committed) before it is handed to the MQTT
client, and deleted only when the broker acknowledges it, so events survive
a broker outage and a killed daemon, and go out oldest first (rows are
ordered by an autoincrement id). When the spool is full (``max_events`` rows
or ``max_bytes`` of payload) the OLDEST rows are dropped to make room: the
newest events are the ones a gate or an operator is waiting for. Every drop
is counted and logged.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    topic   TEXT    NOT NULL,
    payload BLOB    NOT NULL,
    created REAL    NOT NULL
)
"""


class SpoolError(RuntimeError):
    """The spool file cannot be opened or written."""


@dataclass(frozen=True)
class Message:
    """A spooled message; ``id`` orders messages oldest first."""

    id: int
    topic: str
    payload: bytes


class Spool:
    """Thread-safe SQLite outbox with a size bound (drop-oldest)."""

    def __init__(self, path: Path, max_events: int = 10000, max_bytes: int = 100 << 20) -> None:
        self.path = Path(path)
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.dropped = 0
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            # FULL: a committed event survives power loss too, not only a killed process.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
            self._count, self._bytes = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()
        except (sqlite3.Error, OSError) as exc:
            raise SpoolError(f"{self.path}: cannot open the spool: {exc}") from exc
        if mode.lower() != "wal":
            raise SpoolError(f"{self.path}: the file system does not support SQLite WAL mode (got {mode})")

    def put(self, topic: str, payload: bytes) -> int:
        """Store a message durably; return its id. Drops the oldest messages when over the bound."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                cur = self._db.execute("INSERT INTO outbox (topic, payload, created) VALUES (?, ?, ?)",
                                       (topic, payload, time.time()))
                self._count += 1
                self._bytes += len(payload)
                dropped = self._trim()
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK") if self._db.in_transaction else None
                raise SpoolError(f"{self.path}: cannot write the spool: {exc}") from exc
            row_id = int(cur.lastrowid)
        if dropped:
            log.warning("spool full (%d events, %d bytes max): dropped the %d oldest (ids %s), %d dropped so far",
                        self.max_events, self.max_bytes, len(dropped), ",".join(map(str, dropped)), self.dropped)
        return row_id

    def _trim(self) -> list[int]:
        """Delete the oldest rows while over a bound (the newest row is always kept)."""
        dropped = []
        while self._count > 1 and (self._count > self.max_events or self._bytes > self.max_bytes):
            row_id, size = self._db.execute(
                "SELECT id, LENGTH(payload) FROM outbox ORDER BY id LIMIT 1").fetchone()
            self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
            self._count -= 1
            self._bytes -= size
            dropped.append(row_id)
        self.dropped += len(dropped)
        return dropped

    def after(self, last_id: int, limit: int) -> list[Message]:
        """Up to ``limit`` messages with id > ``last_id``, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT id, topic, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                                    (last_id, limit)).fetchall()
        return [Message(int(i), t, bytes(p)) for i, t, p in rows]

    def delete(self, row_id: int) -> None:
        """Remove an acknowledged message (no-op if already dropped)."""
        with self._lock:
            cur = self._db.execute("DELETE FROM outbox WHERE id = ? RETURNING LENGTH(payload)", (row_id,))
            row = cur.fetchone()
            if row is not None:
                self._count -= 1
                self._bytes -= row[0]

    def __len__(self) -> int:
        return self._count

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        with self._lock:
            self._db.close()
