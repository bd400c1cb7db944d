"""The edge daemon: capture -> inference -> tracking -> spool -> MQTT, each stage in its own thread.

This module only wires the parts together: the source (``edge.sources``),
the frame queue, stride and motion gate (``edge.motion``), the pipeline, the
tracker, the event messages and topics (``edge.events``), the spool
(``edge.spool``), the publisher (``edge.publish``) and the counters
(``edge.stats``).

Threads and what joins them:

- capture: reads the source into a bounded frame queue; for a live source a
  full queue drops its oldest frame (counted as ``frames_dropped``), for a
  file source in non-real-time mode it waits instead;
- inference: frame stride and motion gate, detector, reader, tracker; the
  tracker's events are looked up in the known-plate lists (``edge.known``),
  decided on by the relay when it is enabled (``edge.relay``, which may pulse
  at once), and committed to the spool right there, before anything is sent
  (held in memory while the spool cannot be written);
- collect (only with ``collect.enabled``, ``edge.collect``): writes each
  ended vehicle's crop and frame region, handed over by the inference thread
  through a small bounded queue (full: dropped and counted, never waited for);
- main: pumps the spool to the broker, publishes stats, reads the
  known-plate lists again on SIGHUP (a list that cannot be read is logged,
  and those in use stay), handles SIGTERM /
  SIGINT and end of a finite source: remaining tracks end, the spool drains
  for up to ``mqtt.drain_timeout_s``, ``offline`` is published, exit.

Under systemd (``Type=notify``) the daemon sends ``READY=1`` once its threads
run, ``STOPPING=1`` when it stops, and ``WATCHDOG=1`` from the inference loop
while the main loop is alive too: a hung detector, reader or publisher stops
the keep-alives and systemd restarts the service.

Exit codes: see ``ExitCode``.
"""
from __future__ import annotations

import enum
import logging
import signal
import sys
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import cv2

from edge.collect import Collector
from edge.config import AppConfig, ConfigError, KnownPlatesConfig, LoggingConfig, load_config
from edge.events import Topics, crop_encoder, daemon_discovery, event_messages, retained_messages
from edge.formats import FormatError, FormatSet
from edge.known import KnownPlates, KnownPlatesError
from edge.known import reload as reload_known
from edge.model import ModelError
from edge.motion import END, FrameGate, FrameQueue
from edge.pipeline import Pipeline
from edge.publish import Publisher
from edge.relay import Relay, RelayError
from edge.sdnotify import Watchdog, notify
from edge.sources import Frame, Source, SourceError, open_source
from edge.spool import Spool, SpoolError
from edge.stats import Stats, stats_message
from edge.tracker import Event, Observation, Tracker

log = logging.getLogger("edge.daemon")


class ExitCode(enum.IntEnum):
    OK = 0  # stopped by SIGTERM/SIGINT, or a finite source ended and every event was delivered
    ERROR = 1  # an unexpected error (logged with its traceback)
    CONFIG = 2  # invalid configuration or usage (the message names the key)
    MODELS = 3  # the model set cannot be loaded (the message names the file)
    SOURCE = 4  # the source cannot be used at all (file/folder missing at start, picamera2 missing)
    SPOOL = 5  # the spool file cannot be opened, or events it could not take were lost at stop
    UNDELIVERED = 6  # a finite source ended but events are still spooled (broker unreachable); sent next start


def package_version() -> str:
    try:
        return version("edge-anpr")
    except PackageNotFoundError:
        return "0+unknown"


def setup_logging(cfg: LoggingConfig) -> None:
    """Log lines to stdout (journald picks them up under systemd)."""
    fmt = "%(levelname)s %(name)s: %(message)s"
    if cfg.timestamps:
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(stream=sys.stdout, level=cfg.level, format=fmt, force=True)


class Daemon:
    """Wires source, pipeline, tracker, spool and publisher; ``run`` returns an exit code."""

    def __init__(self, cfg: AppConfig, source: Source, pipeline: Pipeline, spool: Spool, publisher: Publisher,
                 known: KnownPlates | None = None, relay: Relay | None = None) -> None:
        """``known``: the known-plate lists (default: read from ``cfg``); ``relay``: the relay, when enabled."""
        self.cfg = cfg
        self.known = known if known is not None else KnownPlates.from_config(cfg.known_plates)
        self.relay = relay
        self.config_path: Path | None = None  # the configuration file, read again on SIGHUP (run)
        self.reload = threading.Event()  # SIGHUP: the main loop reads the known-plate lists again
        self.source = source
        self.pipeline = pipeline
        self.spool = spool
        self.publisher = publisher
        self.topics = Topics.from_config(cfg.mqtt)
        self.stats = Stats()
        self.queue = FrameQueue(cfg.camera.queue_size)
        self.gate = FrameGate(cfg.detection)
        self.stop = threading.Event()  # SIGTERM / SIGINT
        self.tracker = Tracker(cfg.tracking, cfg.camera.id, crop_encoder(cfg.tracking), formats=pipeline.formats)
        self.inferred = 0  # frames through the pipeline: a video's frame numbers (edge.search)
        self.collector = Collector(cfg.collect) if cfg.collect.enabled else None
        self.error: BaseException | None = None
        self.failed = ""  # the thread that stopped the daemon with an error: "capture" or "inference"
        self.watchdog = Watchdog()
        self._main_beat = time.monotonic()  # the main loop's last turn, so the inference loop feeds for both

    def _feed_watchdog(self) -> None:
        """Keep systemd's watchdog fed while both the inference loop (the caller) and the main loop turn."""
        if time.monotonic() - self._main_beat < 2 * self.watchdog.period:
            self.watchdog.feed()

    # capture thread
    def _capture(self) -> None:
        try:
            for frame in self.source.frames(self.stop):
                self.stats.add("captured")
                self.queue.put(frame, wait=not self.source.droppable, stop=self.stop)
        except Exception as exc:  # a bug or an unexpected backend error: stop the daemon, keep the spool
            log.exception("capture failed")
            self.error, self.failed = exc, "capture"
        finally:
            self.queue.put(END, wait=True, stop=self.stop)

    # inference thread
    def _infer_loop(self) -> None:
        try:
            while not self.stop.is_set():
                self._feed_watchdog()
                item = self.queue.get(timeout=0.2)
                if item is END:
                    break
                if item is None:
                    if not self.source.finite:  # a silent live camera: tracks still age by the clock
                        self._emit(self.tracker.expire(time.time()))
                    continue
                assert isinstance(item, Frame)
                self._process(item)
        except Exception as exc:
            log.exception("inference failed")
            self.error, self.failed = exc, "inference"
        finally:
            self._emit(self.tracker.finish())

    def _process(self, frame: Frame) -> None:
        skip = self.gate.skip(frame.image, frame.ts, tracking=bool(self.tracker.tracks))
        if skip is not None:
            self.stats.add(f"skipped_{skip}")
            self._emit(self.tracker.expire(frame.ts))
            return
        t0 = time.perf_counter()
        try:
            # The loop numbers the inferred frames; the number picks each frame's tiles in turn (edge.search).
            result = self.pipeline.run(frame.image, frame=self.inferred)
        except Exception:  # one bad frame must not stop the camera
            self.stats.add("frame_errors")
            log.exception("frame seq %d (%s): inference failed, skipped", frame.seq, frame.origin)
            return
        self.inferred += 1
        reads, counts = result.reads, result.counts
        t2 = time.perf_counter()
        t1 = t0 + counts.detector_ms / 1000
        self.gate.inferred(frame.image, frame.ts)
        min_confidence = self.cfg.detection.min_confidence
        obs = [Observation(r.text, r.confidence, r.detection.box, r.char_confidences or None, image=frame.image,
                           format=r.format)
               for r in reads if r.confidence >= min_confidence]
        events = self.tracker.update(obs, frame.ts)
        t3 = time.perf_counter()
        self._emit(events)
        self.stats.add("inferred")
        self.stats.add("detector_runs", counts.detector_runs)
        self.stats.add("reader_runs", counts.reader_runs)
        self.stats.add("search_macs", counts.macs)
        for stage, ms in (("detect", t1 - t0), ("read", t2 - t1), ("track", t3 - t2), ("total", t3 - t0)):
            self.stats.latency(stage, ms * 1000)
        log.debug("frame seq %d: %d plates %s", frame.seq, len(reads), [r.text for r in reads])

    def _emit(self, events: list[Event]) -> None:
        """Commit events to the spool (before any publishing); a failing spool holds them in memory."""
        for ev in events:
            found = self.known.lookup_event(ev)
            # The gate before the spool: the decision and pulse take microseconds, a spool write a disk sync.
            decision = self.relay.handle(ev, found) if self.relay is not None else None
            for topic, payload in event_messages(ev, self.cfg.tracking.crop, self.topics, found.match):
                self.spool.put(topic, payload)
            if decision is not None:
                self.spool.put(self.topics.relay, decision.payload())
            # Last plate and crop: retained, only the latest counts, so straight to the broker (not spooled).
            self.publisher.publish_retained(retained_messages(ev, self.cfg.tracking.crop, self.topics, found.match))
            self.stats.add("events")
            log.info("event %s %s id=%s frames=%d confidence=%.2f (spooled: %d)", ev.type, ev.text, ev.event_id,
                     ev.frame_count, ev.confidence, len(self.spool))
        if self.collector is not None and events:  # after the spool: collection never delays an event
            self.collector.events(events, self.tracker.tracks)

    def _known_section(self) -> KnownPlatesConfig:
        """The known-plate lists to read on SIGHUP: the configuration file's section as it is now (plates written
        there, and the files it names), or, when it cannot be read, the section it had at start."""
        if self.config_path is None:
            return self.cfg.known_plates
        try:
            return load_config(self.config_path).known_plates
        except ConfigError as exc:
            log.error("%s: not read again, its known plates as at start stay in use: %s", self.config_path, exc)
            return self.cfg.known_plates

    def stats_payload(self) -> dict:
        """The stats message now."""
        return stats_message(self.stats, self.queue, self.source, self.tracker, self.spool, self.publisher,
                             self.collector)

    def run(self) -> int:
        """Run until SIGTERM/SIGINT or the end of a finite source; return the exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: self._on_signal(signum))
        signal.signal(signal.SIGHUP, lambda _signum, _frame: self.reload.set())
        self.publisher.start()
        capture = threading.Thread(target=self._capture, name="capture", daemon=True)
        infer = threading.Thread(target=self._infer_loop, name="inference", daemon=True)
        if self.collector is not None:
            self.collector.start()
        capture.start()
        infer.start()
        log.info("running: camera %s (%s %s), %d events spooled from before", self.cfg.camera.id,
                 self.cfg.camera.type, self.source.__class__.__name__, len(self.spool))
        notify("READY=1")
        interval = self.cfg.mqtt.stats_interval_s
        next_stats = time.monotonic() + min(interval, 5.0)
        try:
            while not self.stop.is_set() and infer.is_alive():
                self._main_beat = time.monotonic()
                if self.reload.is_set():  # SIGHUP; a list that cannot be read keeps the lists in use
                    self.reload.clear()
                    log.info("received SIGHUP: reading the known plates again")
                    self.known = reload_known(self.known, self._known_section())
                    # A group added or gone: its Home Assistant trigger too.
                    self.publisher.set_discovery(daemon_discovery(self.cfg, self.publisher.version, self.known.groups))
                self.publisher.pump()
                if time.monotonic() >= next_stats:
                    self.publisher.publish_stats(self.stats_payload())
                    next_stats = time.monotonic() + interval
                self.stop.wait(0.05)
            reason = "signal" if self.stop.is_set() else f"{self.failed} failed" if self.error else "end of source"
            log.info("stopping (%s)", reason)
            notify("STOPPING=1")
            self.stop.set()
            infer.join(timeout=30)  # ends the remaining tracks into the spool
            if self.collector is not None:
                self.collector.close()  # the vehicles those ends queued
            # A stream source may sit in a read for its read timeout; other types have none.
            capture.join(timeout=getattr(self.cfg.camera, "read_timeout_s", 0.0) + 5)

            def wait(seconds: float) -> None:  # a long drain is progress, not a hang
                self.watchdog.feed()
                time.sleep(seconds)

            self.spool.flush(force=True)  # one more try for what a failing spool holds in memory
            delivered = self.publisher.drain(self.cfg.mqtt.drain_timeout_s, wait)
            self.publisher.publish_stats(self.stats_payload())
        finally:
            self.publisher.stop()
            lost = self.spool.close()
            if self.relay is not None:
                self.relay.close()
        if self.error is not None:
            return ExitCode.ERROR
        if lost:
            return ExitCode.SPOOL
        if not delivered:
            log.warning("%d events stay spooled in %s; they are sent at the next start", len(self.spool),
                        self.cfg.spool.path)
            if reason == "end of source":
                return ExitCode.UNDELIVERED
        log.info("stopped")
        return ExitCode.OK

    def _on_signal(self, signum: int) -> None:
        log.info("received %s", signal.Signals(signum).name)
        self.stop.set()


def run(cfg: AppConfig, config_path: Path | None = None) -> int:
    """Build everything from the configuration and run; errors at start map to exit codes. ``config_path``:
    the file ``cfg`` came from, read again on SIGHUP for its ``known_plates`` section."""
    setup_logging(cfg.logging)
    # Errors only: OpenCV's backend-probing warnings on each reconnect attempt mislead more than they help.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    log.info("edge-anpr %s starting", package_version())
    try:
        extra = FormatSet.load(cfg.detection.countries) if cfg.detection.countries else None
    except FormatError as exc:
        log.error("detection.countries: %s", exc)
        return ExitCode.CONFIG
    try:  # each known-plate group gets its Home Assistant trigger
        known = KnownPlates.from_config(cfg.known_plates)
    except KnownPlatesError as exc:
        log.error("known_plates.files: %s", exc)
        return ExitCode.CONFIG
    groups = known.groups
    try:
        pipeline = Pipeline.from_config(cfg.detection, extra)
    except ModelError as exc:
        log.error("detection.models: %s", exc)
        return ExitCode.MODELS
    try:
        source = open_source(cfg.camera)
    except SourceError as exc:
        log.error("%s", exc)
        return ExitCode.SOURCE
    try:
        spool = Spool(cfg.spool.path, cfg.spool.max_events, int(cfg.spool.max_megabytes * (1 << 20)))
    except SpoolError as exc:
        log.error("spool.path: %s", exc)
        return ExitCode.SPOOL
    try:
        relay = Relay.from_config(cfg.relay)
    except RelayError as exc:
        log.error("%s", exc)
        spool.close()
        return ExitCode.CONFIG
    publisher = Publisher(cfg.mqtt, spool, package_version(), daemon_discovery(cfg, package_version(), groups))
    daemon = Daemon(cfg, source, pipeline, spool, publisher, known, relay)
    daemon.config_path = config_path
    return daemon.run()
