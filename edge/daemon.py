"""The edge daemon: capture -> inference -> tracking -> spool -> MQTT, each stage in its own thread.

Threads and what joins them:

- capture: reads the source into a bounded frame queue; for a live source a
  full queue drops its oldest frame (counted as ``frames_dropped``), for a
  file source in non-real-time mode it waits instead;
- inference: frame stride and motion gate, detector, reader, tracker; the
  tracker's events are committed to the spool right there, before anything
  is sent;
- main: pumps the spool to the broker, publishes stats, handles SIGTERM /
  SIGINT and end of a finite source: remaining tracks end, the spool drains
  for up to ``mqtt.drain_timeout_s``, ``offline`` is published, exit.

Under systemd (``Type=notify``) the daemon sends ``READY=1`` once its threads
run, ``STOPPING=1`` when it stops, and ``WATCHDOG=1`` from the inference loop
while the main loop is alive too: a hung detector, reader or publisher stops
the keep-alives and systemd restarts the service.

Exit codes: see ``ExitCode``.
"""
from __future__ import annotations

import base64
import enum
import json
import logging
import signal
import sys
import threading
import time
from collections import deque
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import cv2
import numpy as np

from edge.config import AppConfig, LoggingConfig, MotionConfig
from edge.model import ModelError
from edge.formats import FormatError, FormatSet
from edge.pipeline import Pipeline
from edge.publish import Publisher
from edge.sdnotify import Watchdog, notify
from edge.sources import Frame, Source, SourceError, open_source
from edge.spool import Spool, SpoolError
from edge.tracker import Event, Observation, Tracker

log = logging.getLogger("edge.daemon")

DEFAULT_MODELS = Path(__file__).resolve().parent / "models"
_END = object()  # queue marker: the source has ended


class ExitCode(enum.IntEnum):
    OK = 0  # stopped by SIGTERM/SIGINT, or a finite source ended and every event was delivered
    ERROR = 1  # an unexpected error (logged with its traceback)
    CONFIG = 2  # invalid configuration or usage (the message names the key)
    MODELS = 3  # the model set cannot be loaded (the message names the file)
    SOURCE = 4  # the source cannot be used at all (file/folder missing at start, picamera2 missing)
    SPOOL = 5  # the spool file cannot be opened or written
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


class FrameQueue:
    """Bounded FIFO between capture and inference; drop-oldest when full, or wait."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.dropped = 0
        self._items: deque = deque()
        self._cond = threading.Condition()

    def put(self, item: object, wait: bool, stop: threading.Event) -> None:
        with self._cond:
            while wait and len(self._items) >= self.size and not stop.is_set():
                self._cond.wait(0.1)
            if len(self._items) >= self.size and item is not _END:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._cond.notify_all()

    def get(self, timeout: float) -> object | None:
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def __len__(self) -> int:
        return len(self._items)


class MotionGate:
    """Cheap change detector on a small grayscale thumbnail."""

    def __init__(self, cfg: MotionConfig) -> None:
        self.cfg = cfg
        self._ref: np.ndarray | None = None

    def moved(self, image: np.ndarray) -> bool:
        """Whether ``image`` differs from the last frame passed to ``accept``."""
        thumb = self._thumb(image)
        if self._ref is None or thumb.shape != self._ref.shape:
            return True
        changed = np.count_nonzero(cv2.absdiff(thumb, self._ref) > self.cfg.pixel_delta)
        return changed >= self.cfg.min_changed * thumb.size

    def accept(self, image: np.ndarray) -> None:
        """Make ``image`` the reference (it was inferred)."""
        self._ref = self._thumb(image)

    def _thumb(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        tw = min(self.cfg.width, w)
        small = cv2.resize(image, (tw, max(1, round(h * tw / w))), interpolation=cv2.INTER_AREA)
        gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small
        return cv2.GaussianBlur(gray, (5, 5), 0)


class Stats:
    """Counters and per-stage latencies shared by the threads; ``snapshot`` reports and resets windows."""

    STAGES = ("detect", "read", "track", "total")

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self.counts = dict.fromkeys(("captured", "inferred", "skipped_stride", "skipped_motion", "frame_errors",
                                     "events"), 0)
        self._lat: dict[str, list[float]] = {s: [] for s in self.STAGES}
        self._last = (self.started, 0, 0)  # time, captured, inferred at the last snapshot

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def latency(self, stage: str, ms: float) -> None:
        with self._lock:
            lat = self._lat[stage]
            if len(lat) < 10000:  # bounded between snapshots
                lat.append(ms)

    def snapshot(self) -> dict:
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
            self._last = (now, self.counts["captured"], self.counts["inferred"])
            self._lat = {s: [] for s in self.STAGES}
        return out


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None}
    p50, p95 = np.percentile(values, [50, 95])
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2)}


def jpeg_crop(obs: Observation, quality: int) -> bytes | None:
    """JPEG of the plate box with a margin, from the frame it was read in."""
    image = obs.image
    if not isinstance(image, np.ndarray):
        return None
    x1, y1, x2, y2 = obs.box
    mx, my = (x2 - x1) * 0.15, (y2 - y1) * 0.3
    h, w = image.shape[:2]
    xa, ya = max(0, int(x1 - mx)), max(0, int(y1 - my))
    xb, yb = min(w, int(x2 + mx) + 1), min(h, int(y2 + my) + 1)
    if xb <= xa or yb <= ya:
        return None
    ok, buf = cv2.imencode(".jpg", image[ya:yb, xa:xb], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return buf.tobytes() if ok else None


class Daemon:
    """Wires source, pipeline, tracker, spool and publisher; ``run`` returns an exit code."""

    def __init__(self, cfg: AppConfig, source: Source, pipeline: Pipeline, spool: Spool, publisher: Publisher) -> None:
        self.cfg = cfg
        self.source = source
        self.pipeline = pipeline
        self.spool = spool
        self.publisher = publisher
        self.stats = Stats()
        self.queue = FrameQueue(cfg.camera.queue_size)
        self.stop = threading.Event()  # SIGTERM / SIGINT
        self.gate = MotionGate(cfg.detection.motion) if cfg.detection.motion.enabled else None
        crop = None
        if cfg.tracking.crop != "none":
            crop = lambda obs: jpeg_crop(obs, cfg.tracking.crop_quality)  # noqa: E731
        self.tracker = Tracker(cfg.tracking, cfg.camera.id, crop, formats=pipeline.formats)
        self.error: BaseException | None = None
        self._last_inferred_ts = 0.0
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
            self.error = exc
        finally:
            self.queue.put(_END, wait=True, stop=self.stop)

    # inference thread
    def _infer_loop(self) -> None:
        try:
            n = 0
            while not self.stop.is_set():
                self._feed_watchdog()
                item = self.queue.get(timeout=0.2)
                if item is _END:
                    break
                if item is None:
                    if not self.source.finite:  # a silent live camera: tracks still age by the clock
                        self._emit(self.tracker.expire(time.time()))
                    continue
                assert isinstance(item, Frame)
                n += 1
                self._process(item, n)
        except Exception as exc:
            log.exception("inference failed")
            self.error = exc
        finally:
            self._emit(self.tracker.finish())

    def _process(self, frame: Frame, n: int) -> None:
        det_cfg = self.cfg.detection
        if (n - 1) % det_cfg.frame_stride:
            self.stats.add("skipped_stride")
            self._emit(self.tracker.expire(frame.ts))
            return
        if self.gate is not None and not self.tracker.tracks:
            due = frame.ts - self._last_inferred_ts >= det_cfg.motion.max_skip_s
            if not due and not self.gate.moved(frame.image):
                self.stats.add("skipped_motion")
                self._emit(self.tracker.expire(frame.ts))
                return
        t0 = time.perf_counter()
        try:
            detections = self.pipeline.detect(frame.image)
            t1 = time.perf_counter()
            reads = self.pipeline.read_detections(frame.image, detections)
        except Exception:  # one bad frame must not stop the camera
            self.stats.add("frame_errors")
            log.exception("frame seq %d (%s): inference failed, skipped", frame.seq, frame.origin)
            return
        t2 = time.perf_counter()
        if self.gate is not None:
            self.gate.accept(frame.image)
        self._last_inferred_ts = frame.ts
        obs = [Observation(r.text, r.confidence, r.detection.box, r.char_confidences or None, image=frame.image,
                           format=r.format)
               for r in reads if r.confidence >= det_cfg.min_confidence]
        events = self.tracker.update(obs, frame.ts)
        t3 = time.perf_counter()
        self._emit(events)
        self.stats.add("inferred")
        for stage, ms in (("detect", t1 - t0), ("read", t2 - t1), ("track", t3 - t2), ("total", t3 - t0)):
            self.stats.latency(stage, ms * 1000)
        log.debug("frame seq %d: %d plates %s", frame.seq, len(reads), [r.text for r in reads])

    def _emit(self, events: list[Event]) -> None:
        """Commit events to the spool (before any publishing)."""
        prefix = self.publisher.prefix
        for ev in events:
            payload = ev.as_json()
            if ev.crop is not None and self.cfg.tracking.crop == "base64":
                payload["crop"] = base64.b64encode(ev.crop).decode("ascii")
            elif ev.crop is not None and self.cfg.tracking.crop == "topic":
                payload["crop_topic"] = f"{prefix}/crops/{ev.event_id}"
            self.spool.put(f"{prefix}/plates", json.dumps(payload).encode())
            if ev.crop is not None and self.cfg.tracking.crop == "topic":
                self.spool.put(payload["crop_topic"], ev.crop)
            self.stats.add("events")
            log.info("event %s %s id=%s frames=%d confidence=%.2f (spooled: %d)", ev.type, ev.text, ev.event_id,
                     ev.frame_count, ev.confidence, len(self.spool))

    def stats_payload(self) -> dict:
        out = self.stats.snapshot()
        out |= {
            "queue_depth": len(self.queue),
            "queue_size": self.queue.size,
            "frames_dropped": self.queue.dropped,
            "source_errors": self.source.errors,
            "source_reconnects": self.source.reconnects,
            "tracks_active": len(self.tracker.tracks),
            "spool_depth": len(self.spool),
            "spool_dropped": self.spool.dropped,
            "published": self.publisher.published,
            "mqtt_connects": self.publisher.connects,
        }
        return out

    def run(self) -> int:
        """Run until SIGTERM/SIGINT or the end of a finite source; return the exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: self._on_signal(signum))
        self.publisher.start()
        capture = threading.Thread(target=self._capture, name="capture", daemon=True)
        infer = threading.Thread(target=self._infer_loop, name="inference", daemon=True)
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
                self.publisher.pump()
                if time.monotonic() >= next_stats:
                    self.publisher.publish_stats(self.stats_payload())
                    next_stats = time.monotonic() + interval
                self.stop.wait(0.05)
            reason = "signal" if self.stop.is_set() else "end of source"
            log.info("stopping (%s)", reason)
            notify("STOPPING=1")
            self.stop.set()
            infer.join(timeout=30)  # ends the remaining tracks into the spool
            capture.join(timeout=self.cfg.camera.read_timeout_s + 5)

            def wait(seconds: float) -> None:  # a long drain is progress, not a hang
                self.watchdog.feed()
                time.sleep(seconds)

            delivered = self.publisher.drain(self.cfg.mqtt.drain_timeout_s, wait)
            self.publisher.publish_stats(self.stats_payload())
        finally:
            self.publisher.stop()
            self.spool.close()
        if isinstance(self.error, SpoolError):
            return ExitCode.SPOOL
        if self.error is not None:
            return ExitCode.ERROR
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


def run(cfg: AppConfig) -> int:
    """Build everything from the configuration and run; errors at start map to exit codes."""
    setup_logging(cfg.logging)
    # Errors only: OpenCV's backend-probing warnings on each reconnect attempt mislead more than they help.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    log.info("edge-anpr %s starting", package_version())
    models = cfg.detection.models or DEFAULT_MODELS
    try:
        extra = FormatSet.load(cfg.detection.countries) if cfg.detection.countries else None
    except FormatError as exc:
        log.error("detection.countries: %s", exc)
        return ExitCode.CONFIG
    try:
        pipeline = Pipeline.from_dir(models, cfg.detection.threads, cfg.detection.accelerator,
                                     refine=cfg.detection.refine, tiles=cfg.detection.tiles,
                                     tiles_per_frame=cfg.detection.tiles_per_frame,
                                     max_runs=cfg.detection.max_detector_runs, extra_formats=extra)
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
    publisher = Publisher(cfg.mqtt, spool, package_version())
    try:
        return Daemon(cfg, source, pipeline, spool, publisher).run()
    except SpoolError as exc:
        log.error("spool: %s", exc)
        return ExitCode.SPOOL
