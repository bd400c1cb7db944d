"""The real daemon with a spool file it cannot write (locked by another program): it keeps running, holds the
events in memory, logs and counts it, and delivers every event exactly once. Against a real mosquitto."""
from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from edge.spool import Spool
from harness import Broker, DaemonProc, Subscriber, base_config, deliver_to_a_new_broker, free_port, wait_for


def lock(path: Path) -> sqlite3.Connection:
    """Another program holding the spool file's write lock: an exclusive transaction, open until rolled back."""
    Spool(path).close()  # the file exists, in WAL mode, with its table: the daemon opens it as it finds it
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    return other


def rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]


def test_locked_spool_holds_events_in_memory_until_it_can_write_them(clip: Path, truth: dict,
                                                                     tmp_path: Path) -> None:
    port = free_port()  # no broker yet: the events can only wait
    cfg = base_config(clip, port, tmp_path, mqtt={"drain_timeout_s": 60})
    path = Path(cfg["spool"]["path"])
    other = lock(path)
    try:
        d = DaemonProc(cfg, tmp_path)
        d.wait_log(r"cannot write the spool \(database is locked\)", 60)
        d.wait_log(r"event end MXE7315", 60)
        assert d.proc.poll() is None, "the daemon must keep running"
        assert other.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
    finally:
        other.execute("ROLLBACK")
        other.close()
    d.wait_log(r"the spool takes writes again after \d+ failed attempts?; wrote the \d+ messages held in memory", 60)
    assert rows(path) == 9  # on disk now (6 on plates, 3 on arrivals): a kill from here on loses nothing
    sub = deliver_to_a_new_broker(d, port, tmp_path)
    logged = [(t, i) for t, _, i in d.logged_events()]
    assert len(logged) == 6 and [(e["type"], e["id"]) for e in sub.events()] == logged  # none lost, none twice
    stats = sub.stats()[-1]
    assert stats["spool_write_failures"] >= 1 and stats["spool_memory_depth"] == 0 and stats["spool_depth"] == 0
    assert rows(path) == 0
    assert d.log().count("cannot write the spool") == 1  # logged once, not per retry


def test_events_held_in_memory_are_sent_while_the_spool_stays_locked(clip: Path, truth: dict, broker: Broker,
                                                                     subscriber: Subscriber, tmp_path: Path) -> None:
    cfg = base_config(clip, broker.port, tmp_path)
    path = Path(cfg["spool"]["path"])
    other = lock(path)
    try:
        d = DaemonProc(cfg, tmp_path)
        # A gate waiting for a plate need not wait for the disk: every event arrives with the spool still locked.
        wait_for(lambda: len(subscriber.events()) == 6, 60, "every event while the spool is locked")
        assert d.proc.poll() is None or d.proc.returncode == 0, d.log()
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert d.wait(60) == 0, d.log()
    wait_for(lambda: "offline" in subscriber.statuses(), 10, "status offline")
    logged = [(t, i) for t, _, i in d.logged_events()]
    assert [(e["type"], e["id"]) for e in subscriber.events()] == logged
    assert [e["text"] for e in subscriber.events() if e["type"] == "new"] == truth["plates"]
    assert subscriber.stats()[-1]["spool_write_failures"] >= 1
    assert rows(path) == 0 and "cannot write the spool (database is locked)" in d.log()


def test_events_the_spool_never_took_are_reported_lost_at_stop(clip: Path, truth: dict, tmp_path: Path) -> None:
    cfg = base_config(clip, free_port(), tmp_path, mqtt={"drain_timeout_s": 1})  # and no broker either
    path = Path(cfg["spool"]["path"])
    other = lock(path)
    try:
        d = DaemonProc(cfg, tmp_path)
        assert d.wait(60) == 5, d.log()  # the exit code says events were lost
    finally:
        other.execute("ROLLBACK")
        other.close()
    log = d.log()
    lost = re.search(r"(\d+) messages held in memory could not be written to the spool and are lost \(ids (\S+)\)",
                     log)
    # 6 events on plates and the 3 new again on arrivals.
    assert lost and int(lost.group(1)) == 9 and len(lost.group(2).split(",")) == 9, log
    assert "stopping (end of source)" in log and rows(path) == 0
