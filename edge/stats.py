"""The daemon's counters and the stats message (``<prefix>/stats``).

:class:`Stats` holds the inference thread's counters and per-stage
latencies; :class:`Failures` counts failures of one kind (broker connection
attempts, spool writes) with the last reason, and tells when the next one is
worth a log line, so that an outage logs its reason at once and then a
reminder a minute, not a line per retry. :func:`stats_message` is the one
place the message's keys are named.
"""
from __future__ import annotations

import math
import threading
import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from edge.collect import Collector
    from edge.motion import FrameQueue
    from edge.publish import Publisher
    from edge.sources import Source
    from edge.spool import Spool
    from edge.tracker import Tracker

#: Seconds between two log lines about the same ongoing failure (the first is logged at once).
FAILURE_LOG_INTERVAL_S = 60.0


class Failures:
    """Failures of one kind: how many, the last reason, and whether the next one should be logged.

    Thread-safe: paho's network thread, the inference thread and the main
    thread each record failures of their own kind.
    """

    def __init__(self, log_interval_s: float = FAILURE_LOG_INTERVAL_S) -> None:
        self.log_interval_s = log_interval_s
        self.total = 0  # since start
        self.streak = 0  # since the last success
        self.last_reason: str | None = None
        self._logged_at = -math.inf
        self._logged_reason: str | None = None
        self._lock = threading.Lock()

    def fail(self, reason: str) -> bool:
        """Record one failure; True when it should be logged.

        Logged: the first failure after a success, a failure whose reason
        differs from the last one logged, and otherwise one every
        ``log_interval_s``.
        """
        now = time.monotonic()
        with self._lock:
            self.total += 1
            self.streak += 1
            self.last_reason = reason
            if self.streak == 1 or reason != self._logged_reason or now - self._logged_at >= self.log_interval_s:
                self._logged_at, self._logged_reason = now, reason
                return True
            return False

    def recover(self) -> int:
        """End a run of failures (the thing works again); return how many failures it had."""
        with self._lock:
            streak, self.streak = self.streak, 0
            self._logged_reason = None
            return streak


def attempts(n: int) -> str:
    """``1 failed attempt``, ``3 failed attempts``: for log lines."""
    return f"{n} failed attempt{'' if n == 1 else 's'}"


class Stats:
    """Counters and per-stage latencies shared by the threads; ``snapshot`` reports and resets windows."""

    STAGES = ("detect", "read", "track", "total")
    COUNTERS = ("captured", "inferred", "skipped_stride", "skipped_motion", "frame_errors", "events",
                "detector_runs", "reader_runs", "search_macs")

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self.counts = dict.fromkeys(self.COUNTERS, 0)
        self._lat: dict[str, list[float]] = {s: [] for s in self.STAGES}
        self._last = (self.started, 0, 0)  # time, captured, inferred at the last snapshot
        self._spent: dict[str, int] = {}  # the search's counters at the last snapshot

    def add(self, key: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``key`` (one of ``COUNTERS``)."""
        with self._lock:
            self.counts[key] += n

    def latency(self, stage: str, ms: float) -> None:
        """Record one latency of ``stage`` (one of ``STAGES``) in milliseconds."""
        with self._lock:
            lat = self._lat[stage]
            if len(lat) < 10000:  # bounded between snapshots
                lat.append(ms)

    def snapshot(self) -> dict:
        """Counters, rates and latency percentiles since the previous snapshot (whose windows it resets)."""
        now = time.monotonic()
        with self._lock:
            t, cap, inf = self._last
            dt = max(now - t, 1e-6)
            out = {
                "uptime_s": round(now - self.started, 1),
                "fps_captured": round((self.counts["captured"] - cap) / dt, 2),
                "fps": round((self.counts["inferred"] - inf) / dt, 2),
                "frames_captured": self.counts["captured"],
                "frames_inferred": self.counts["inferred"],
                "frames_skipped_stride": self.counts["skipped_stride"],
                "frames_skipped_motion": self.counts["skipped_motion"],
                "frame_errors": self.counts["frame_errors"],
                "events": self.counts["events"],
                "latency_ms": {s: _percentiles(v) for s, v in self._lat.items()},
            }
            # What the detection search spent per inferred frame since the last snapshot (edge.search).
            spent = {k: self.counts[k] - self._spent.get(k, 0) for k in ("detector_runs", "reader_runs", "search_macs")}
            frames = self.counts["inferred"] - inf
            out["search_per_frame"] = {
                "detector_runs": round(spent["detector_runs"] / frames, 2) if frames else None,
                "reader_runs": round(spent["reader_runs"] / frames, 2) if frames else None,
                "gmac": round(spent["search_macs"] / frames / 1e9, 3) if frames else None,
            }
            self._spent = {k: self.counts[k] for k in spent}
            self._last = (now, self.counts["captured"], self.counts["inferred"])
            self._lat = {s: [] for s in self.STAGES}
        return out


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None}
    p50, p95 = np.percentile(values, [50, 95])
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2)}


def stats_message(stats: Stats, queue: FrameQueue, source: Source, tracker: Tracker, spool: Spool,
                  publisher: Publisher, collector: Collector | None = None) -> dict:
    """The stats message: ``stats``' snapshot and the state of every part (keys documented in the README);
    the ``collect_*`` keys only with collection on."""
    out = stats.snapshot()
    out |= {
        "queue_depth": len(queue),
        "queue_size": queue.size,
        "frames_dropped": queue.dropped,
        "source_errors": source.errors,
        "source_reconnects": source.reconnects,
        "tracks_active": len(tracker.tracks),
        "spool_depth": len(spool),
        "spool_dropped": spool.dropped,
        "spool_write_failures": spool.failures.total,
        "spool_memory_depth": spool.memory_depth,
        "spool_memory_dropped": spool.memory_dropped,
        "published": publisher.published,
        "mqtt_connects": publisher.connects,
        "broker_failures": publisher.failures.total,
        "broker_last_error": publisher.failures.last_reason,
    }
    if collector is not None:
        c = collector.stats()
        out |= {
            "collect_saved": c["saved"],
            "collect_skipped": c["skipped"],
            "collect_dropped": c["dropped"],
            "collect_removed": c["removed"],
            "collect_errors": c["errors"],
            "collect_bytes": c["bytes"],
            "collect_files": c["files"],
        }
    return out
