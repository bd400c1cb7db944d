"""Durable queue of outgoing MQTT messages: SQLite in WAL mode, and a bounded memory queue while it cannot be written.

An event is written here (and committed) before it is handed to the MQTT
client, and deleted only when the broker acknowledges it, so events survive
a broker outage and a killed daemon, and go out oldest first (rows are
ordered by an id the spool assigns, increasing). When the spool is full
(``max_events`` rows or ``max_bytes`` of payload) the OLDEST rows are dropped
to make room: the newest events are the ones a gate or an operator is
waiting for. Every drop is counted and logged.

A write that fails (disk full, the file locked by another program, an I/O
error) stops nothing: the message is held in memory with the id it was
given, and so is every message after it, so that they reach the file in
order. They are sent from memory meanwhile, in the same order as the rest,
and written to the file when it takes writes again; retries back off from
``RETRY_MIN_S`` to ``RETRY_MAX_S``. The memory queue is bounded like the file
(drop-oldest, counted and logged). The first failure is logged with its
reason at once, a still-failing spool once a minute, the recovery once.
Deleting an acknowledged message that fails is retried the same way (the
message stays counted until then; after a restart it would be sent again).
Only messages still held in memory when the daemon stops are lost; ``close``
tries once more and reports them.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from edge.stats import Failures, attempts

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    topic   TEXT    NOT NULL,
    payload BLOB    NOT NULL,
    created REAL    NOT NULL
)
"""

#: How long a write waits for a lock held by another connection before it counts as failed. Short: the
#: caller is the inference or main thread, and a message that cannot wait goes to memory instead.
BUSY_TIMEOUT_S = 1.0
#: Back-off between attempts to write the messages held in memory: doubles from min to max.
RETRY_MIN_S, RETRY_MAX_S = 0.5, 30.0
#: Bounds of the memory queue (also never more than the file's own bounds).
MEMORY_MAX_EVENTS, MEMORY_MAX_BYTES = 1000, 16 << 20


class SpoolError(RuntimeError):
    """The spool file cannot be opened."""


@dataclass(frozen=True)
class Message:
    """A spooled message; ``id`` orders messages oldest first."""

    id: int
    topic: str
    payload: bytes
    created: float = field(default=0.0, compare=False)


class Spool:
    """Thread-safe SQLite outbox with a size bound (drop-oldest) and a memory queue for write failures."""

    def __init__(self, path: Path, max_events: int = 10000, max_bytes: int = 100 << 20,
                 memory_max_events: int = MEMORY_MAX_EVENTS, memory_max_bytes: int = MEMORY_MAX_BYTES) -> None:
        self.path = Path(path)
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.memory_max_events = min(memory_max_events, max_events)
        self.memory_max_bytes = min(memory_max_bytes, max_bytes)
        self.dropped = 0  # rows dropped at the file's bound
        self.memory_dropped = 0  # messages dropped at the memory queue's bound
        self.failures = Failures()  # failed writes (inserts and deletes)
        self._read_failures = Failures()
        self._lock = threading.Lock()
        self._memory: OrderedDict[int, Message] = OrderedDict()  # id -> message not yet in the file
        self._memory_bytes = 0
        self._undeleted: set[int] = set()  # acknowledged ids whose delete failed
        self._retry_at = 0.0
        self._retry_delay = RETRY_MIN_S
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                       timeout=BUSY_TIMEOUT_S)
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            # FULL: a committed event survives power loss too, not only a killed process.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
            self._count, self._bytes, top = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0), COALESCE(MAX(id), 0) FROM outbox").fetchone()
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'outbox'")
            # Ids are given here, not by SQLite, so that a message held in memory keeps its place in the order.
            self._next_id = max(int(top), int(seq.fetchone()[0])) + 1
        except (sqlite3.Error, OSError) as exc:
            raise SpoolError(f"{self.path}: cannot open the spool: {exc}") from exc
        if mode.lower() != "wal":
            raise SpoolError(f"{self.path}: the file system does not support SQLite WAL mode (got {mode})")

    def put(self, topic: str, payload: bytes) -> int:
        """Store a message; return its id. Never raises for a failing file: the message is held in memory."""
        with self._lock:
            row_id = self._next_id
            self._next_id += 1
            self._memory[row_id] = Message(row_id, topic, payload, time.time())
            self._memory_bytes += len(payload)
            # Behind messages that wait for a retry it waits too (order); alone, it is written now.
            if len(self._memory) == 1 and not self._undeleted:
                self._write_locked(force=not self.failures.streak)
            self._bound_memory_locked()
        return row_id

    def flush(self, force: bool = False) -> bool:
        """Write what is held in memory and retry failed deletes, when the back-off allows (or ``force``).

        True when nothing is left waiting. The daemon's main loop calls it on every turn.
        """
        with self._lock:
            if not self._memory and not self._undeleted:
                return True
            return self._write_locked(force)

    def _write_locked(self, force: bool) -> bool:
        if not force and time.monotonic() < self._retry_at:
            return False
        held = list(self._memory.values())
        count, size = self._count, self._bytes
        try:
            self._db.execute("BEGIN IMMEDIATE")
            for row_id in sorted(self._undeleted):
                row = self._db.execute("DELETE FROM outbox WHERE id = ? RETURNING LENGTH(payload)",
                                       (row_id,)).fetchone()
                if row is not None:
                    count, size = count - 1, size - row[0]
            for msg in held:
                self._db.execute("INSERT INTO outbox (id, topic, payload, created) VALUES (?, ?, ?, ?)",
                                 (msg.id, msg.topic, msg.payload, msg.created))
                count, size = count + 1, size + len(msg.payload)
            count, size, dropped = self._trim(count, size)
            self._db.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            self._rollback()
            self._failed("cannot write the spool", exc)
            return False
        self._count, self._bytes = count, size
        self.dropped += len(dropped)
        self._memory.clear()
        self._memory_bytes = 0
        self._undeleted.clear()
        self._retry_delay, self._retry_at = RETRY_MIN_S, 0.0
        failed = self.failures.recover()
        if failed:
            log.info("%s: the spool takes writes again after %s; wrote the %d messages held in memory",
                     self.path, attempts(failed), len(held))
        if dropped:
            log.warning("spool full (%d events, %d bytes max): dropped the %d oldest (ids %s), %d dropped so far",
                        self.max_events, self.max_bytes, len(dropped), ",".join(map(str, dropped)), self.dropped)
        return True

    def _trim(self, count: int, size: int) -> tuple[int, int, list[int]]:
        """Delete the oldest rows while over a bound (the newest row is always kept), inside a transaction."""
        dropped = []
        while count > 1 and (count > self.max_events or size > self.max_bytes):
            row_id, length = self._db.execute(
                "SELECT id, LENGTH(payload) FROM outbox ORDER BY id LIMIT 1").fetchone()
            self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
            count, size = count - 1, size - length
            dropped.append(row_id)
        return count, size, dropped

    def _rollback(self) -> None:
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite rolls back by itself when a write fails this way; nothing was committed

    def _failed(self, what: str, exc: BaseException) -> None:
        """Count a failed write, schedule the retry, log when worth it."""
        delay = self._retry_delay
        self._retry_at = time.monotonic() + delay
        self._retry_delay = min(delay * 2, RETRY_MAX_S)
        reason = str(exc) or type(exc).__name__
        if self.failures.fail(reason):
            log.warning("%s: %s (%s): %d messages held in memory (at most %d), %s so far; retrying in %.1f s "
                        "(the same failure is logged again every %.0f s)", self.path, what, reason,
                        len(self._memory), self.memory_max_events, attempts(self.failures.streak), delay,
                        self.failures.log_interval_s)

    def _bound_memory_locked(self) -> None:
        dropped = []
        while len(self._memory) > 1 and (len(self._memory) > self.memory_max_events
                                         or self._memory_bytes > self.memory_max_bytes):
            row_id, msg = self._memory.popitem(last=False)
            self._memory_bytes -= len(msg.payload)
            dropped.append(row_id)
        if dropped:
            self.memory_dropped += len(dropped)
            log.warning("%s: memory queue full while the spool cannot be written (%d messages, %d bytes max): "
                        "dropped the %d oldest (ids %s), %d dropped so far", self.path, self.memory_max_events,
                        self.memory_max_bytes, len(dropped), ",".join(map(str, dropped)), self.memory_dropped)

    def after(self, last_id: int, limit: int) -> list[Message]:
        """Up to ``limit`` messages with id > ``last_id``, oldest first, from the file and from memory."""
        with self._lock:
            try:
                rows = self._db.execute("SELECT id, topic, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                                        (last_id, limit)).fetchall()
            except sqlite3.Error as exc:
                # Nothing goes out: what is in memory is newer than what could not be read.
                if self._read_failures.fail(str(exc)):
                    log.warning("%s: cannot read the spool (%s); sending resumes when it can", self.path, exc)
                return []
            if self._read_failures.recover():
                log.info("%s: the spool reads again", self.path)
            held = [m for m in self._memory.values() if m.id > last_id][:limit]
        msgs = [Message(int(i), t, bytes(p)) for i, t, p in rows] + held
        return sorted(msgs, key=lambda m: m.id)[:limit]

    def delete(self, row_id: int) -> None:
        """Remove an acknowledged message (no-op if already dropped); a failed delete is retried by ``flush``."""
        with self._lock:
            msg = self._memory.pop(row_id, None)
            if msg is not None:
                self._memory_bytes -= len(msg.payload)
                return
            if self._undeleted or self.failures.streak:  # the file is failing: no lock wait here, flush retries
                self._undeleted.add(row_id)
                return
            try:
                row = self._db.execute("DELETE FROM outbox WHERE id = ? RETURNING LENGTH(payload)",
                                       (row_id,)).fetchone()
            except (sqlite3.Error, OSError) as exc:
                self._undeleted.add(row_id)
                self._failed("cannot delete an acknowledged message", exc)
                return
            if row is not None:
                self._count -= 1
                self._bytes -= row[0]

    def __len__(self) -> int:
        """Messages not yet acknowledged: in the file and held in memory."""
        return self._count + len(self._memory)

    @property
    def memory_depth(self) -> int:
        """Messages held in memory because the file could not be written."""
        return len(self._memory)

    @property
    def size_bytes(self) -> int:
        return self._bytes + self._memory_bytes

    def close(self) -> int:
        """Write what is held in memory (one last try) and close; return how many messages that lost."""
        with self._lock:
            if self._memory or self._undeleted:
                self._write_locked(force=True)
            lost = sorted(self._memory)
            self._db.close()
        if lost:
            log.error("%s: %d messages held in memory could not be written to the spool and are lost (ids %s)",
                      self.path, len(lost), ",".join(map(str, lost)))
        return len(lost)
