"""Per-vehicle evaluation of the real daemon on labelled photos.

    python -m edge.vehicle_eval --set FOLDER [--set FOLDER ...] [--out result.json]

Each FOLDER holds images and a labels.tsv: a header line, then one row per
image, ``file<TAB>text[<TAB>x1<TAB>y1<TAB>x2<TAB>y2]``. One image is one
vehicle: when a file has several rows, its first label counts and the others
are ignored (counted on stderr). Labels are compared the way ``evaluate``
compares them: upper-case, A-Z and 0-9 only. A missing image, an
undecodable one (or one refused for its size, see ``edge.images``) or a bad
row is an error naming the file and the line (exit 2).

What it does, per set:

1. turns the folder into a camera clip: each photo letterboxed into 1280x720
   (grey padding), shown for --hold-s at --fps with a slow centred zoom
   (1.00 -> 1.06) and up to 2 px of random jitter per frame (--seed), then
   --gap-s of plain grey (128) frames; MPEG-4 (mp4v) in an AVI, written by
   OpenCV. Photos with the same label are spaced further apart than the
   daemon's tracking.reappear_window_s where the clip is long enough, since
   the daemon deliberately stays silent about a plate it has just seen;
2. starts a private mosquitto on a free loopback port, subscribes to
   <prefix>/plates (QoS 1), and runs the real daemon
   (``python -m edge run``) on the clip as a subprocess: file source, not
   real time (no frame dropped), a temporary spool, discovery off. Detection
   and tracking settings come from --config when given (only camera, the
   MQTT connection, topics, spool path and logging are replaced), else the
   defaults; --models overrides detection.models;
3. scores each vehicle from the events received. A ``new`` event belongs to
   the vehicle on screen at the event's first_seen; the outcomes are:

     right   the first ``new`` sent for the vehicle has the label's text
     wrong   a ``new`` came for it, but the first one's text differs
     missed  no ``new`` came while it was on screen

   extra: further ``new`` events for a vehicle that already had one, and
   ``new`` events whose first_seen falls in a grey gap (or outside the clip).
   lost: event ids with a ``new`` but no ``end``, or an ``end`` but no
   ``new`` (the daemon sends one ``end`` per ``new``: an unmatched one means
   a message was lost).

Time alignment: the daemon stamps file frames ``t0 + frame index / fps``,
where t0 is the wall clock when it opened the source (after loading the
models). Its log line ``MQTT broker ..., topics ...`` comes right after that;
its time bounds t0 from above, and every first_seen minus t0 is a whole
number of frames, so t0 is the latest ``first_seen - k / fps`` not after that
log line, unless the daemon took longer than a frame period (100 ms at
10 fps) between opening the source and writing that line (it opens a spool
and starts the MQTT client: tens of milliseconds). For that case t0 is moved
back by up to a gap's worth of frames, as little as puts the fewest events
in grey gaps (nothing can be read on a grey frame, so with the right t0 no
event starts there). The JSON keeps t0 and that shift.

Prints one table row per set (vehicles, right/wrong/missed in % of vehicles,
extra and lost events, wall time) and writes per-vehicle rows with --out.
Exit codes: 0 whatever the accuracy (it measures), 2 for bad input, 1 when
mosquitto or the daemon could not run or the daemon did not finish in time.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import PASSWORD_ENV, ConfigError, parse_config
from edge.images import ImageError, decode_image
from edge.mosquitto import start_broker

#: Where the daemon is started from (``python -m edge run``).
ROOT = Path(__file__).resolve().parents[1]

FRAME_SIZE = (1280, 720)  # width, height
GREY = 128
ZOOM = 0.06  # 1.00 -> 1.06 over the hold
JITTER_PX = 2
OUTCOMES = ("right", "wrong", "missed")
_ALNUM = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
# Logged by the daemon after it opened the source (publisher start, then the main loop).
_AFTER_OPEN = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) INFO edge\.\w+: (MQTT broker .*topics|running: )")


class LabelError(ValueError):
    """The labelled folder cannot be used; the message names the file and the line."""


class RunError(RuntimeError):
    """mosquitto or the daemon could not run, or the daemon did not finish in time."""


def log(msg: str) -> None:
    """Progress on stderr."""
    print(f"vehicle_eval: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- labelled folder

@dataclass(frozen=True)
class Vehicle:
    """One labelled photo: one vehicle."""

    file: str
    label: str
    line: int  # in labels.tsv
    path: Path
    box: tuple[float, float, float, float] | None = None


def normalize(text: str) -> str:
    """Upper-case, A-Z and 0-9 only: the event text form (the same rule as ``edge.plates.normalize``)."""
    return "".join(c for c in text.upper() if c in _ALNUM)


def read_labels(folder: Path) -> tuple[list[Vehicle], int]:
    """The vehicles of ``folder/labels.tsv`` (first row of each file) and how many further rows were ignored."""
    tsv = folder / "labels.tsv"
    if not folder.is_dir():
        raise LabelError(f"{folder}: not a folder")
    if not tsv.is_file():
        raise LabelError(f"{tsv}: no labels.tsv in this folder")
    try:
        lines = tsv.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelError(f"{tsv}: cannot be read ({exc})") from None
    vehicles: list[Vehicle] = []
    seen: set[str] = set()
    ignored = 0
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        where = f"{tsv}:{n}"
        if len(parts) not in (2, 6):
            raise LabelError(f"{where}: expected file<TAB>text[<TAB>x1<TAB>y1<TAB>x2<TAB>y2], "
                             f"got {len(parts)} fields: {line!r}")
        name, text = parts[0].strip(), normalize(parts[1])
        if not name:
            raise LabelError(f"{where}: empty file name")
        if not text:
            raise LabelError(f"{where}: {name}: the label {parts[1]!r} has no A-Z or 0-9 character")
        box = None
        if len(parts) == 6:
            try:
                box = tuple(float(v) for v in parts[2:6])
            except ValueError:
                raise LabelError(f"{where}: {name}: the box {parts[2:6]} is not four numbers") from None
        path = folder / name
        if not path.is_file():
            raise LabelError(f"{where}: {path}: image file not found")
        if name in seen:
            ignored += 1
            continue
        seen.add(name)
        vehicles.append(Vehicle(name, text, n, path, box))  # type: ignore[arg-type]
    if not vehicles:
        raise LabelError(f"{tsv}: no rows after the header")
    return vehicles, ignored


# ---------------------------------------------------------------- the clip

@dataclass
class Shown:
    """A vehicle's place in the clip: frames [first_frame, first_frame + hold frames)."""

    index: int
    file: str
    label: str
    line: int
    first_frame: int
    start_s: float
    end_s: float  # exclusive: the first grey frame
    #: Same label shown within the reappear window before it: the daemon stays silent by design.
    close_repeat: bool = False


@dataclass
class Layout:
    """Where each vehicle is in the clip; vehicle i is shown from frame i * period."""

    fps: float
    hold_frames: int
    gap_frames: int
    shown: list[Shown] = field(default_factory=list)

    @property
    def period(self) -> int:
        return self.hold_frames + self.gap_frames

    @property
    def n_frames(self) -> int:
        return len(self.shown) * self.period

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.fps

    def vehicle_at(self, frame: int) -> int | None:
        """Index of the vehicle on screen at ``frame``; None in a grey gap or outside the clip."""
        if frame < 0 or frame >= self.n_frames or frame % self.period >= self.hold_frames:
            return None
        return frame // self.period


def frames_of(seconds: float, fps: float) -> int:
    return round(seconds * fps)


def schedule(vehicles: list[Vehicle], fps: float, hold_s: float, gap_s: float,
             reappear_window_s: float = 0.0) -> Layout:
    """Lay the vehicles out in label order, moving a repeated label later when it would come back too soon.

    The daemon gives no ``new`` for a plate seen again within
    ``reappear_window_s`` of its last sighting (a parked car is not a new
    vehicle), so two photos of one plate shown close together would score a
    miss that says nothing about reading.
    """
    layout = Layout(fps, max(1, frames_of(hold_s, fps)), max(0, frames_of(gap_s, fps)))
    period_s = layout.period / fps
    # Track i last seen at start_i + hold - 1 frame; the next one first seen at start_j: j - i slots apart.
    min_slots = math.floor((reappear_window_s + layout.hold_frames / fps - 1 / fps) / period_s) + 1
    pending = deque(vehicles)
    deferred: list[Vehicle] = []
    last_slot: dict[str, int] = {}
    order: list[tuple[Vehicle, bool]] = []

    def ok(v: Vehicle, slot: int) -> bool:
        return slot - last_slot.get(v.label, -min_slots) >= min_slots

    while pending or deferred:
        slot = len(order)
        pick = next((v for v in deferred if ok(v, slot)), None)
        if pick is not None:
            deferred.remove(pick)
        else:
            while pending and not ok(pending[0], slot):
                deferred.append(pending.popleft())
            pick = pending.popleft() if pending else deferred.pop(0)
        order.append((pick, not ok(pick, slot)))
        last_slot[pick.label] = slot
    for i, (v, close) in enumerate(order):
        first = i * layout.period
        layout.shown.append(Shown(i, v.file, v.label, v.line, first, round(first / fps, 4),
                                  round((first + layout.hold_frames) / fps, 4), close))
    return layout


def letterbox(image: np.ndarray, size: tuple[int, int] = FRAME_SIZE) -> np.ndarray:
    """``image`` scaled to fit ``size`` (width, height), centred on mid grey."""
    w, h = size
    ih, iw = image.shape[:2]
    scale = min(w / iw, h / ih)
    nw, nh = max(1, round(iw * scale)), max(1, round(ih * scale))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    canvas = np.full((h, w, 3), GREY, np.uint8)
    x, y = (w - nw) // 2, (h - nh) // 2
    canvas[y:y + nh, x:x + nw] = resized
    return canvas


def _decode(path: Path, line: int) -> np.ndarray:
    """The photo of labels.tsv line ``line``; LabelError naming the line, the file and why it cannot be used."""
    try:
        return decode_image(path)
    except ImageError as exc:
        raise LabelError(f"{path.parent / 'labels.tsv'}:{line}: {exc}") from None


def build_clip(vehicles: list[Vehicle], path: Path, fps: float = 10.0, hold_s: float = 1.0, gap_s: float = 2.0,
               seed: int = 0, reappear_window_s: float = 0.0,
               progress: Callable[[str], None] | None = None) -> Layout:
    """Write the camera clip of ``vehicles`` to ``path`` (mp4v) and return where each vehicle is shown."""
    layout = schedule(vehicles, fps, hold_s, gap_s, reappear_window_s)
    by_file = {v.file: v for v in vehicles}
    rng = np.random.default_rng(seed)
    w, h = FRAME_SIZE
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, FRAME_SIZE)
    if not writer.isOpened():
        raise RunError(f"{path}: OpenCV cannot write an mp4v video here")
    grey = np.full((h, w, 3), GREY, np.uint8)
    if progress:
        progress(f"building clip {path.name}: {len(layout.shown)} vehicles, {layout.n_frames} frames "
                 f"({layout.duration_s:.0f} s at {fps:g} fps)")
    try:
        for s in layout.shown:
            v = by_file[s.file]
            base = letterbox(_decode(v.path, v.line))
            for j in range(layout.hold_frames):
                zoom = 1 + ZOOM * j / max(1, layout.hold_frames - 1)
                dx, dy = rng.integers(-JITTER_PX, JITTER_PX + 1, size=2)
                m = np.array([[zoom, 0, (1 - zoom) * w / 2 + dx], [0, zoom, (1 - zoom) * h / 2 + dy]], np.float32)
                writer.write(cv2.warpAffine(base, m, FRAME_SIZE, flags=cv2.INTER_LINEAR,
                                            borderMode=cv2.BORDER_CONSTANT, borderValue=(GREY, GREY, GREY)))
            for _ in range(layout.gap_frames):
                writer.write(grey)
            if progress and (s.index + 1) % 50 == 0:
                progress(f"  {s.index + 1}/{len(layout.shown)} vehicles written")
    finally:
        writer.release()
    return layout


# ---------------------------------------------------------------- scoring

def parse_iso(stamp: str) -> float:
    """Seconds since the epoch of an ISO 8601 UTC stamp such as ``2025-01-14T08:15:02.123Z``."""
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def clip_start(events: list[dict], after_open: float, fps: float) -> float:
    """t0 of the daemon's clip clock: the latest ``first_seen - k / fps`` not after ``after_open``.

    ``after_open``: the time of a daemon log line written just after it opened
    the source (see the module doc). Stamps are truncated to milliseconds,
    hence the 2 ms of slack.
    """
    if not events:
        return after_open
    ref = min(parse_iso(e["first_seen"]) for e in events)
    k = math.ceil((ref - after_open - 0.002) * fps)
    return ref - k / fps


def align(layout: Layout, events: list[dict], after_open: float) -> tuple[float, int]:
    """(t0, frames it was moved back): ``clip_start``, moved back by the fewest frames (at most a gap) that
    leave the fewest events in grey gaps."""
    t0 = clip_start(events, after_open, layout.fps)
    frames = [round((parse_iso(e["first_seen"]) - t0) * layout.fps) for e in events]
    best = min(range(layout.gap_frames + 1),
               key=lambda j: (sum(layout.vehicle_at(f + j) is None for f in frames), j))
    return t0 - best / layout.fps, best


def score(layout: Layout, events: list[dict], t0: float) -> dict:
    """Per-vehicle outcomes from the events received (arrival order), with the clip clock started at ``t0``.

    Re-deliveries (the same ``id`` and ``type``) count once.
    """
    fps = layout.fps
    seen: set[tuple[str, str]] = set()
    unique = []
    for e in events:
        key = (e.get("id", ""), e.get("type", ""))
        if key not in seen:
            seen.add(key)
            unique.append(e)
    rows: list[dict[str, Any]] = [
        {"index": s.index, "file": s.file, "line": s.line, "label": s.label, "outcome": "missed",
         "window_s": [s.start_s, s.end_s], "new_texts": [], "end_texts": [], "ids": [], "close_repeat": s.close_repeat}
        for s in layout.shown]
    extra: list[dict] = []
    news: dict[str, dict] = {}
    ends: dict[str, dict] = {}
    for e in unique:
        frame = round((parse_iso(e["first_seen"]) - t0) * fps)
        vi = layout.vehicle_at(frame)
        kind = e.get("type")
        if kind == "new":
            news[e["id"]] = e
        elif kind == "end":
            ends[e["id"]] = e
        else:
            continue
        if vi is None:
            if kind == "new":
                extra.append({"id": e["id"], "text": e["text"], "clip_s": round(frame / fps, 3), "why": "gap"})
            continue
        row = rows[vi]
        if kind == "end":
            row["end_texts"].append(e["text"])
            continue
        if row["new_texts"]:
            extra.append({"id": e["id"], "text": e["text"], "clip_s": round(frame / fps, 3), "why": "repeat",
                          "vehicle": vi})
        else:
            row["outcome"] = "right" if e["text"] == row["label"] else "wrong"
        row["new_texts"].append(e["text"])
        row["ids"].append(e["id"])
    lost = ([{"id": i, "text": e["text"], "why": "new without end"} for i, e in news.items() if i not in ends]
            + [{"id": i, "text": e["text"], "why": "end without new"} for i, e in ends.items() if i not in news])
    n = len(rows)
    counts = {o: sum(r["outcome"] == o for r in rows) for o in OUTCOMES}
    return {
        "vehicles": n,
        **counts,
        **{f"{o}_pct": round(100 * counts[o] / n, 1) if n else 0.0 for o in OUTCOMES},
        "extra": len(extra),
        "lost": len(lost),
        "events_new": len(news),
        "events_end": len(ends),
        "close_repeats": sum(r["close_repeat"] for r in rows),
        "extra_events": extra,
        "lost_events": lost,
        "rows": rows,
    }


# ---------------------------------------------------------------- the daemon

def daemon_config(user: dict | None, base_dir: Path, clip: Path, fps: float, port: int, prefix: str,
                  spool: Path, models: Path | None) -> dict:
    """The daemon's configuration: the user's (or the defaults) with camera, MQTT connection, spool and logging
    replaced. Validated here so that a bad --config is a usage error; ConfigError names the key."""
    raw = dict(user or {})
    raw["camera"] = {"id": "eval", "type": "file", "path": str(clip), "realtime": False, "fps": fps}
    mqtt_raw = dict(raw.get("mqtt") or {}) if isinstance(raw.get("mqtt"), dict) else {}
    # The user's broker credentials and TLS mean nothing to the private broker (and may name unset variables).
    for key in ("host", "port", "device_id", "topic_prefix", "username", "password", "tls", "discovery"):
        mqtt_raw.pop(key, None)
    raw["mqtt"] = mqtt_raw
    spool_raw = dict(raw.get("spool") or {}) if isinstance(raw.get("spool"), dict) else {}
    spool_raw["path"] = str(spool)
    raw["spool"] = spool_raw
    raw["logging"] = {"level": "INFO", "timestamps": True}  # the alignment reads the daemon's log times
    cfg = parse_config(raw, base_dir)
    if models is not None:
        cfg.detection.models = models.resolve()
    cfg.mqtt.password = None  # parse_config takes ANPR_MQTT_PASSWORD; the dump would mask it, not drop it
    out = cfg.model_dump(mode="json")
    out["mqtt"] |= {"host": "127.0.0.1", "port": port, "device_id": "vehicle-eval", "topic_prefix": prefix,
                    "discovery": {"enabled": False}, "stats_interval_s": 5.0,
                    "drain_timeout_s": max(30.0, cfg.mqtt.drain_timeout_s)}
    return out


class Collector:
    """A paho subscriber on the set's topics; subscribed (SUBACK received) before the daemon starts."""

    def __init__(self, port: int, prefix: str, client_id: str) -> None:
        self.prefix = prefix
        self.events: list[dict] = []
        self.stats: dict = {}
        self.offline = threading.Event()
        self.subscribed = threading.Event()
        self.last_message = time.monotonic()
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(
            [(f"{prefix}/plates", 1), (f"{prefix}/status", 1), (f"{prefix}/stats", 0)])
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.client.on_message = self._on_message
        try:
            self.client.connect("127.0.0.1", port)
        except OSError as exc:
            raise RunError(f"the subscriber cannot connect to mosquitto on 127.0.0.1:{port}: {exc}") from None
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata, msg: mqtt.MQTTMessage) -> None:
        self.last_message = time.monotonic()
        if msg.topic.endswith("/status"):
            if msg.payload == b"offline":
                self.offline.set()
            return
        try:
            payload = json.loads(msg.payload)
        except ValueError:
            return
        with self._lock:
            if msg.topic.endswith("/plates"):
                self.events.append(payload)
            else:
                self.stats = payload

    def snapshot(self) -> tuple[list[dict], dict]:
        with self._lock:
            return list(self.events), dict(self.stats)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def after_open_time(daemon_log: Path) -> float:
    """Wall time of the first daemon log line written after it opened the source (see the module doc)."""
    for line in daemon_log.read_text(errors="replace").splitlines():
        m = _AFTER_OPEN.match(line)
        if m:
            local = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")  # the daemon logs local time
            return local.timestamp() + int(m.group(2)) / 1000
    raise RunError(f"cannot align clip time: no 'MQTT broker ... topics' or 'running:' line in {daemon_log}")


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def run_daemon(config: dict, workdir: Path, port: int, prefix: str, n_frames: int, timeout_s: float,
               daemon_log: Path, tag: str) -> tuple[list[dict], float, int]:
    """Run ``python -m edge run`` on the configured clip; return the events received, the time of its first log
    line after it opened the source (see ``after_open_time``) and its exit code."""
    cfg_path = workdir / "daemon.yaml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    collector = Collector(port, prefix, f"vehicle-eval-{tag}-{os.getpid()}")
    try:
        if not collector.subscribed.wait(10):
            raise RunError(f"could not subscribe to {prefix}/plates on 127.0.0.1:{port}")
        env = {k: v for k, v in os.environ.items() if k != PASSWORD_ENV}
        with open(daemon_log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(cfg_path)], cwd=ROOT,
                                    env=env, stdout=out, stderr=subprocess.STDOUT)
            log(f"daemon running (pid {proc.pid}) on {n_frames} frames; timeout {timeout_s:.0f} s")
            start = time.monotonic()
            next_report = start + 10
            while proc.poll() is None:
                now = time.monotonic()
                if now - start > timeout_s:
                    proc.terminate()
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                    raise RunError(f"timeout: the daemon did not finish the clip within {timeout_s:.0f} s "
                                   f"(raise --timeout-s); last log lines:\n{_tail(daemon_log)}")
                if now >= next_report:
                    events, stats = collector.snapshot()
                    done = stats.get("frames_inferred", 0) + stats.get("frames_skipped_stride", 0) \
                        + stats.get("frames_skipped_motion", 0)
                    log(f"  {now - start:.0f} s: frames {done}/{n_frames}, events so far "
                        f"new {sum(e.get('type') == 'new' for e in events)}, "
                        f"end {sum(e.get('type') == 'end' for e in events)}")
                    next_report = now + 10
                time.sleep(0.2)
        code = proc.returncode
        if code != 0:
            raise RunError(f"the daemon exited with code {code} (see README 'exit codes'); last log lines:\n"
                           f"{_tail(daemon_log)}")
        # The daemon exits once the broker acknowledged everything; the subscriber's copies follow closely.
        collector.offline.wait(10)
        while time.monotonic() - collector.last_message < 0.5:
            time.sleep(0.1)
        events, _ = collector.snapshot()
    finally:
        collector.close()
    return events, after_open_time(daemon_log), code


# ---------------------------------------------------------------- command

@dataclass
class Options:
    fps: float = 10.0
    hold_s: float = 1.0
    gap_s: float = 2.0
    seed: int = 0
    limit: int | None = None
    models: Path | None = None
    config: dict | None = None
    config_dir: Path = Path(".")
    timeout_s: float | None = None
    keep: Path | None = None


def evaluate_set(folder: Path, vehicles: list[Vehicle], port: int, tag: str, opts: Options) -> dict:
    """Build the set's clip, run the daemon on it and score it."""
    name = folder.name or str(folder)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edge-vehicle-eval-") as tmp:
        workdir = Path(tmp)
        keep = opts.keep
        clip = (keep / f"{tag}.avi") if keep else workdir / "clip.avi"
        daemon_log = (keep / f"{tag}.daemon.log") if keep else workdir / "daemon.log"
        prefix = f"anpr/vehicle-eval-{tag}"
        config = daemon_config(opts.config, opts.config_dir, clip.resolve(), opts.fps, port, prefix,
                               workdir / "spool.sqlite", opts.models)
        tracking = config["tracking"]
        if opts.gap_s <= tracking["lost_after_s"]:
            log(f"warning: --gap-s {opts.gap_s:g} is not longer than tracking.lost_after_s "
                f"{tracking['lost_after_s']:g}: consecutive vehicles may share one track")
        layout = build_clip(vehicles, clip, opts.fps, opts.hold_s, opts.gap_s, opts.seed,
                            tracking["reappear_window_s"], log)
        built = time.monotonic()
        if layout.shown and sum(s.close_repeat for s in layout.shown):
            log(f"warning: {sum(s.close_repeat for s in layout.shown)} photos repeat a label within "
                f"tracking.reappear_window_s ({tracking['reappear_window_s']:g} s): the daemon stays silent "
                "on those by design (flagged close_repeat)")
        if keep:
            (keep / f"{tag}.config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            (keep / f"{tag}.truth.json").write_text(json.dumps([asdict(s) for s in layout.shown], indent=1))
        timeout = opts.timeout_s or 120 + 0.5 * layout.n_frames
        events, after_open, code = run_daemon(config, workdir, port, prefix, layout.n_frames, timeout, daemon_log,
                                              tag)
    done = time.monotonic()
    t0, shift = align(layout, events, after_open)
    if shift:
        log(f"note: clip start moved back {shift} frames from the daemon's log time to fit the events")
    result = score(layout, events, t0)
    log(f"{name}: {result['vehicles']} vehicles, right {result['right']}, wrong {result['wrong']}, missed "
        f"{result['missed']}, extra {result['extra']}, lost {result['lost']} ({done - started:.0f} s)")
    return {
        "set": str(folder), "name": name,
        **{k: v for k, v in result.items() if k not in ("extra_events", "lost_events", "rows")},
        "wall_s": round(done - started, 1), "build_s": round(built - started, 1), "daemon_s": round(done - built, 1),
        "daemon_exit": code, "frames": layout.n_frames, "clip_s": round(layout.duration_s, 1),
        "clip_start_utc": _utc(t0), "after_open_log_utc": _utc(after_open),
        "alignment_shift_frames": shift,
        "extra_events": result["extra_events"], "lost_events": result["lost_events"], "rows": result["rows"],
    }


def _utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds")


def format_table(results: list[dict]) -> str:
    """One row per set, as a Markdown table."""
    head = "| set | vehicles | right new % | wrong % | missed % | extra events | lost events | wall s |"
    lines = [head, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        lines.append(f"| {r['name']} | {r['vehicles']} | {r['right_pct']:.1f} | {r['wrong_pct']:.1f} | "
                     f"{r['missed_pct']:.1f} | {r['extra']} | {r['lost']} | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m edge.vehicle_eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", type=Path, action="append", required=True, metavar="FOLDER",
                    help="labelled folder: images and labels.tsv (repeatable; one table row each)")
    ap.add_argument("--models", type=Path, help="model set directory (default: detection.models of --config, "
                    "else the shipped models in edge/models)")
    ap.add_argument("--config", type=Path, help="daemon YAML whose detection and tracking settings to use "
                    "(camera, MQTT connection, spool and logging are replaced); default: the defaults")
    ap.add_argument("--limit", type=int, help="only the first N vehicles of each set (labels.tsv order)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the per-frame jitter (default 0)")
    ap.add_argument("--hold-s", type=float, default=1.0, help="seconds each photo is shown (default 1.0)")
    ap.add_argument("--gap-s", type=float, default=2.0, help="seconds of grey after each photo (default 2.0; "
                    "keep it longer than tracking.lost_after_s)")
    ap.add_argument("--fps", type=float, default=10.0, help="clip frame rate (default 10)")
    ap.add_argument("--timeout-s", type=float, help="give up on a set's daemon run after this long "
                    "(default 120 s + 0.5 s per frame)")
    ap.add_argument("--out", type=Path, help="write the results with per-vehicle rows as JSON here")
    ap.add_argument("--keep", type=Path, metavar="DIR", help="keep each set's clip, truth, daemon config and "
                    "daemon log in DIR")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if not 0 < args.fps <= 120 or args.hold_s <= 0 or args.gap_s < 0 or round(args.hold_s * args.fps) < 1:
        ap.error("--fps must be in (0, 120], --hold-s at least one frame, --gap-s 0 or more")
    if args.limit is not None and args.limit < 1:
        ap.error("--limit must be 1 or more")
    opts = Options(args.fps, args.hold_s, args.gap_s, args.seed, args.limit, args.models, None, Path("."),
                   args.timeout_s, args.keep)
    try:
        if args.models is not None:
            missing = [n for n in ("detector.tflite", "reader.tflite") if not (args.models / n).is_file()]
            if not args.models.is_dir() or missing:
                raise LabelError(f"--models {args.models}: " + (f"no {', '.join(missing)} in this folder"
                                                                 if args.models.is_dir() else "not a folder"))
        if args.config is not None:
            try:
                opts.config = yaml.safe_load(args.config.read_text())
            except (OSError, yaml.YAMLError) as exc:
                raise LabelError(f"--config {args.config}: cannot be read as YAML ({exc})") from None
            if not isinstance(opts.config, dict):
                raise LabelError(f"--config {args.config}: not a mapping of sections")
            opts.config_dir = args.config.resolve().parent
        # Every set is checked before any clip is built: a typo in the last one costs nothing.
        sets = []
        for folder in args.set:
            vehicles, ignored = read_labels(folder)
            if ignored:
                log(f"{folder}: {ignored} further rows for files already labelled were ignored (first label counts)")
            sets.append((folder, vehicles[:args.limit] if args.limit else vehicles))
        try:
            daemon_config(opts.config, opts.config_dir, Path("clip.avi"), opts.fps, 1883, "anpr/check",
                          Path("spool.sqlite"), opts.models)
        except ConfigError as exc:
            raise LabelError(f"--config {args.config}: {exc}") from None
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
    except LabelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    measured_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results = []
    with tempfile.TemporaryDirectory(prefix="edge-vehicle-eval-broker-") as tmp:
        try:
            broker, port = start_broker(Path(tmp))
        except SystemExit as exc:  # edge.mosquitto reports a missing or failing mosquitto this way
            print(f"{exc}", file=sys.stderr)
            return 1
        log(f"mosquitto on 127.0.0.1:{port}")
        try:
            names: dict[str, int] = {}
            for folder, vehicles in sets:
                base = re.sub(r"[^A-Za-z0-9_.-]", "_", folder.resolve().name) or "set"
                names[base] = names.get(base, 0) + 1
                tag = base if names[base] == 1 else f"{base}-{names[base]}"
                results.append(evaluate_set(folder, vehicles, port, tag, opts))
        except LabelError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except RunError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            broker.terminate()
            try:
                broker.wait(10)
            except subprocess.TimeoutExpired:
                broker.kill()
    print(format_table(results))
    print(f"measured {measured_at}; right/wrong/missed: % of vehicles by the first 'new' event on screen; extra: "
          "further 'new' for a vehicle or 'new' in a grey gap; lost: 'new' without 'end' or the reverse")
    if args.out:
        settings = {"fps": opts.fps, "hold_s": opts.hold_s, "gap_s": opts.gap_s, "seed": opts.seed,
                    "limit": opts.limit, "models": str(opts.models) if opts.models else None,
                    "config": str(args.config) if args.config else None}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"measured_at": measured_at, "settings": settings, "sets": results},
                                       indent=1))
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
