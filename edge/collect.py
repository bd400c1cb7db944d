"""Collection on the device: each vehicle's best plate crop and the frame region around it, with its read.

With ``collect.enabled`` the daemon saves, per vehicle, when its track ends
(its ``end`` event), the read that was the track's best (the highest reader
confidence of the whole pass, which ``new`` may not have seen yet) as:

- ``<id>.crop.jpg``: the plate with the margins of the event crops;
- ``<id>.frame.jpg`` (``collect.keep_frame``): the frame region around the
  plate, the box grown by ``collect.frame_margin`` plate widths on each side
  and clipped to the frame, so that a detector can be fine-tuned on it;
- ``<id>.json``: the sidecar, written last (its presence marks a complete
  vehicle): the voted text and confidence (the event's), the best read and
  its confidence, format, country, times, camera id, and the plate's box in
  the frame, in the crop and in the frame region.

``<id>`` is the event id. Only ended vehicles that sent ``new`` are saved
(the same vehicles a consumer sees); with ``collect.max_confidence`` only
those whose voted confidence is below it (the reads most worth a review).

Every file is written to a temporary name, synced and renamed, so a reader
(or a crash) never sees half a file. The folder is bounded by
``collect.max_mb`` (and ``collect.max_files``): before a vehicle is written,
the oldest vehicles are removed until it fits, so the folder never holds
more than the cap, also at start, where a folder over the cap (a lowered
cap) is brought under it. Only the files named as above are counted and
removed; anything else in the folder is left alone.

Collection never stops or slows the daemon: the inference thread copies the
plate's region out of the frame and hands it to a bounded queue (full: the
vehicle is dropped and counted); the ``collect`` thread encodes and writes.
A folder that cannot be written (disk full, read-only, missing) is logged
with its reason at once, then once a minute while it lasts, and counted
(``collect_errors``); events flow on regardless.

:func:`pack` turns a collection folder into a labelled folder
(``python -m edge collect pack``): see its doc.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import re
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from edge.events import CROP_MARGIN_X, CROP_MARGIN_Y
from edge.stats import Failures, attempts
from edge.tracker import iso_utc

if TYPE_CHECKING:
    from edge.config import CollectConfig
    from edge.tracker import Event, Track

log = logging.getLogger(__name__)

#: File name endings of a collected vehicle; the sidecar is written last.
CROP_SUFFIX, FRAME_SUFFIX, SIDECAR_SUFFIX = ".crop.jpg", ".frame.jpg", ".json"
SUFFIXES = (CROP_SUFFIX, FRAME_SUFFIX, SIDECAR_SUFFIX)
#: Temporary files are ``.<name>.tmp`` beside their final name (removed at start when a crash left one).
TMP_PREFIX, TMP_SUFFIX = ".", ".tmp"
#: Vehicles waiting for the collect thread; a vehicle that finds it full is dropped and counted.
QUEUE_SIZE = 8
#: How long ``close`` waits for the queue to be written.
CLOSE_TIMEOUT_S = 10.0
SIDECAR_VERSION = 1
#: Box type: x1, y1, x2, y2 in pixels.
Box = tuple[float, float, float, float]
Rect = tuple[int, int, int, int]
#: Where a configuration that went through ``parse_config`` never leaves it (it puts it beside the spool).
_DEFAULT_FOLDER = Path("collect")


def _grow(box: Box, mx: float, my: float, size: tuple[int, int]) -> Rect | None:
    """``box`` grown by ``mx``/``my`` pixels on each side, clipped to an image of ``size`` (w, h); None if empty."""
    x1, y1, x2, y2 = box
    w, h = size
    xa, ya = max(0, int(x1 - mx)), max(0, int(y1 - my))
    xb, yb = min(w, int(x2 + mx) + 1), min(h, int(y2 + my) + 1)
    return (xa, ya, xb, yb) if xb > xa and yb > ya else None


def _inside(box: Box, rect: Rect) -> list[float]:
    """``box`` in the coordinates of ``rect``'s top-left corner, clipped to it, rounded to 0.1 px."""
    xa, ya, xb, yb = rect
    x1, y1, x2, y2 = box
    return [round(min(max(v, 0.0), hi), 1)
            for v, hi in ((x1 - xa, xb - xa), (y1 - ya, yb - ya), (x2 - xa, xb - xa), (y2 - ya, yb - ya))]


@dataclass(frozen=True)
class Sample:
    """One vehicle as the inference thread hands it over: its metadata and a copy of the plate's surroundings."""

    stem: str
    meta: dict[str, Any]
    #: The frame's pixels covering the crop and the frame region (a copy: the frame itself is not held).
    area: np.ndarray
    #: Where ``area`` lies in the frame, and the crop's and region's rectangles in the frame.
    area_rect: Rect
    crop_rect: Rect
    frame_rect: Rect | None
    box: Box


class Collector:
    """Saves vehicles into a bounded folder from its own thread (see the module doc). Never raises into the daemon."""

    def __init__(self, cfg: CollectConfig, folder: Path | None = None, queue_size: int = QUEUE_SIZE) -> None:
        self.cfg = cfg
        self.folder = Path(folder or cfg.folder or _DEFAULT_FOLDER)
        self.max_bytes = int(cfg.max_mb * (1 << 20))
        self.max_files = cfg.max_files
        self.saved = 0  # vehicles written
        self.skipped = 0  # vehicles at or above max_confidence
        self.dropped = 0  # vehicles not written: queue full, no frame, or larger than the cap alone
        self.removed = 0  # vehicles removed to stay within the cap
        self.failures = Failures()  # failed writes, removals and folder scans
        self._drops = Failures()  # only for rate-limiting the drop warnings
        #: stem -> (bytes, files) of each vehicle in the folder, oldest first
        self._index: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._bytes = self._files = 0
        self._scanned = False  # the folder's files are indexed (else the cap could not hold for them)
        self._lock = threading.Lock()  # guards the counters and the index read by ``stats``
        self._pending: dict[str, Track] = {}  # event id -> track of a vehicle that sent 'new'
        self._queue: queue.Queue[Sample | None] = queue.Queue(queue_size)
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ the inference thread

    def start(self) -> None:
        """Start the collect thread: it scans the folder and enforces the cap, then writes what comes."""
        self._thread = threading.Thread(target=self._run, name="collect", daemon=True)
        self._thread.start()

    def events(self, events: Iterable[Event], tracks: Iterable[Track]) -> None:
        """Take the tracker's events of one step; ``tracks`` are the tracker's tracks after it.

        A ``new`` event's track is remembered; at its ``end`` the track's best read is queued for writing.
        """
        try:
            for ev in events:
                if ev.type == "new":
                    track = next((t for t in tracks if t.event_id == ev.event_id), None)
                    if track is not None:
                        self._pending[ev.event_id] = track
                elif ev.type == "end":
                    ended = self._pending.pop(ev.event_id, None)
                    if ended is not None:
                        self._submit(ev, ended)
        except Exception:  # a bug here must not stop the camera: count it and go on
            self._fail("cannot take a vehicle", exc_info=True)

    def _submit(self, ev: Event, track: Track) -> None:
        if self.cfg.max_confidence is not None and ev.confidence >= self.cfg.max_confidence:
            with self._lock:
                self.skipped += 1
            return
        sample = self.sample(ev, track)
        if sample is None:
            self._drop(f"{ev.event_id}: no frame to cut the plate from")
            return
        try:
            self._queue.put_nowait(sample)
        except queue.Full:
            self._drop(f"{ev.event_id}: the collect queue is full ({self._queue.maxsize} vehicles waiting)")

    def sample(self, ev: Event, track: Track) -> Sample | None:
        """The vehicle of an ``end`` event with the region of its best read's frame copied out; None without one."""
        best = track.best
        image = best.image if best is not None else None
        if best is None or not isinstance(image, np.ndarray) or image.ndim < 2:
            return None
        size = (image.shape[1], image.shape[0])
        box = best.box
        bw, bh = box[2] - box[0], box[3] - box[1]
        crop_rect = _grow(box, bw * CROP_MARGIN_X, bh * CROP_MARGIN_Y, size)
        if crop_rect is None:
            return None
        frame_rect = None
        if self.cfg.keep_frame:
            m = self.cfg.frame_margin * bw  # plate widths on every side: a plate is wider than tall
            frame_rect = _grow(box, m, m, size)
        rects = [crop_rect] + ([frame_rect] if frame_rect else [])
        area_rect = (min(r[0] for r in rects), min(r[1] for r in rects), max(r[2] for r in rects),
                     max(r[3] for r in rects))
        area = image[area_rect[1]:area_rect[3], area_rect[0]:area_rect[2]].copy()
        meta = {
            "version": SIDECAR_VERSION, "id": ev.event_id, "camera": ev.camera, "text": ev.text,
            "display": ev.display, "format": ev.format, "country": ev.country,
            "confidence": round(ev.confidence, 4), "best_read": best.text,
            "best_confidence": round(best.confidence, 4),
            "char_confidences": list(best.char_confidences) if best.char_confidences else None,
            "first_seen": iso_utc(ev.first_seen), "last_seen": iso_utc(ev.last_seen), "frame_count": ev.frame_count,
            "box": [round(v, 1) for v in box], "frame_size": list(size),
        }
        return Sample(ev.event_id, meta, area, area_rect, crop_rect, frame_rect, box)

    def _drop(self, why: str) -> None:
        with self._lock:
            self.dropped += 1
        if self._drops.fail(why):
            log.warning("vehicle not saved: %s (%d dropped since start)", why, self.dropped)

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Write what is queued (for up to ``timeout`` seconds) and stop the thread."""
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            log.warning("the folder %s takes no writes; %d vehicles not saved", self.folder,
                        self._queue.qsize())
            return
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            log.warning("still writing to %s after %.0f s; stopping without it", self.folder, timeout)

    def stats(self) -> dict[str, int]:
        """The counters and the folder's size now (for the stats message)."""
        with self._lock:
            return {"saved": self.saved, "skipped": self.skipped, "dropped": self.dropped, "removed": self.removed,
                    "errors": self.failures.total, "bytes": self._bytes, "files": self._files}

    # ------------------------------------------------------------------ the collect thread

    def _run(self) -> None:
        self.scan()
        while True:
            sample = self._queue.get()
            if sample is None:
                return
            try:
                self.write(sample)
            except Exception:  # a bug in encoding or writing: this vehicle is lost, collection goes on
                self._fail(f"{sample.stem}: cannot save", exc_info=True)

    def _fail(self, what: str, exc: BaseException | None = None, exc_info: bool = False) -> None:
        reason = f"{what}: {exc}" if exc is not None else what
        if self.failures.fail(reason):
            log.warning("%s (%s); events go on without it", reason, attempts(self.failures.total),
                        exc_info=exc_info)

    def _recovered(self) -> None:
        if self.failures.streak:
            n = self.failures.recover()
            log.info("%s takes writes again after %s", self.folder, attempts(n))

    def scan(self) -> None:
        """Index the folder's vehicles oldest first, remove temporary files a crash left, enforce the cap."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            groups: dict[str, list[os.stat_result]] = {}
            for entry in os.scandir(self.folder):
                if not entry.is_file(follow_symlinks=False):
                    continue
                if entry.name.startswith(TMP_PREFIX) and entry.name.endswith(TMP_SUFFIX):
                    _unlink(Path(entry.path))
                    continue
                stem = _stem(entry.name)
                if stem is not None:
                    groups.setdefault(stem, []).append(entry.stat(follow_symlinks=False))
        except OSError as exc:
            self._fail(f"{self.folder}: cannot read the folder", exc)
            return
        self._scanned = True
        order = sorted(groups, key=lambda s: (max(st.st_mtime for st in groups[s]), s))
        with self._lock:
            for stem in order:
                size = sum(st.st_size for st in groups[stem])
                self._index[stem] = (size, len(groups[stem]))
                self._bytes += size
                self._files += len(groups[stem])
        if self._make_room(0, 0):
            log.info("%s holds %d vehicles, %.1f of %.1f MiB", self.folder, len(self._index),
                     self._bytes / (1 << 20), self.max_bytes / (1 << 20))

    def write(self, sample: Sample) -> bool:
        """Encode and write one vehicle atomically, the sidecar last, after making room; True when written."""
        if not self._scanned:  # the folder could not be read at start: perhaps it can now (mounted late)
            self.scan()
            if not self._scanned:
                return False
        quality = [cv2.IMWRITE_JPEG_QUALITY, self.cfg.quality]
        ax, ay = sample.area_rect[:2]
        meta = dict(sample.meta)
        files: list[tuple[str, bytes]] = []
        for suffix, rect, key in ((CROP_SUFFIX, sample.crop_rect, "crop"), (FRAME_SUFFIX, sample.frame_rect, "frame")):
            if rect is None:
                meta[key], meta[f"{key}_box"], meta[f"{key}_region"] = None, None, None
                continue
            ok, buf = cv2.imencode(".jpg", sample.area[rect[1] - ay:rect[3] - ay, rect[0] - ax:rect[2] - ax], quality)
            if not ok:
                self._drop(f"{sample.stem}: the {key} cannot be encoded as JPEG")
                return False
            name = sample.stem + suffix
            files.append((name, buf.tobytes()))
            meta[key], meta[f"{key}_box"], meta[f"{key}_region"] = name, _inside(sample.box, rect), list(rect)
        files.append((sample.stem + SIDECAR_SUFFIX, (json.dumps(meta, indent=1) + "\n").encode()))
        need = sum(len(data) for _, data in files)
        if need > self.max_bytes or (self.max_files is not None and len(files) > self.max_files):
            self._drop(f"{sample.stem}: {need} bytes in {len(files)} files is more than the whole cap "
                       f"(collect.max_mb / max_files)")
            return False
        with self._lock:
            if sample.stem in self._index:  # the same vehicle again (should not happen): replaced, counted once
                self._forget(sample.stem)
        if not self._make_room(need, len(files)):
            return False
        written: list[Path] = []
        try:
            self.folder.mkdir(parents=True, exist_ok=True)  # it may have been removed, or mounted late
            for name, data in files:
                path = self.folder / name
                _write_atomic(path, data)
                written.append(path)
        except OSError as exc:
            for path in written:  # no half vehicle: a crop without its sidecar would only take room
                _unlink(path)
            self._fail(f"{self.folder}: cannot write a vehicle", exc)  # no id: one reason, one line
            return False
        with self._lock:
            self._index[sample.stem] = (need, len(files))
            self._bytes += need
            self._files += len(files)
            self.saved += 1
        self._recovered()
        log.debug("saved %s %s (confidence %.2f), %.1f MiB in %s", sample.stem, meta["text"],
                  meta["confidence"], self._bytes / (1 << 20), self.folder)
        return True

    def _forget(self, stem: str) -> None:
        size, n = self._index.pop(stem)
        self._bytes -= size
        self._files -= n

    def _make_room(self, need_bytes: int, need_files: int) -> bool:
        """Remove the oldest vehicles until ``need_*`` more fit within the cap; False if a removal failed."""
        def over() -> bool:
            if self._bytes + need_bytes > self.max_bytes:
                return True
            return self.max_files is not None and self._files + need_files > self.max_files

        while self._index and over():
            stem = next(iter(self._index))
            try:
                for suffix in SUFFIXES:
                    path = self.folder / (stem + suffix)
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
            except OSError as exc:
                self._fail(f"{self.folder}: cannot remove the oldest vehicle to stay within the cap", exc)
                return False
            with self._lock:
                self._forget(stem)
                self.removed += 1
        return not over()


def _stem(name: str) -> str | None:
    """The vehicle a collected file belongs to, or None for a file that is not one of ours."""
    for suffix in SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix) and not name.startswith(TMP_PREFIX):
            return name[: -len(suffix)]
    return None


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a synced temporary file renamed over it: all of it or nothing."""
    tmp = path.with_name(TMP_PREFIX + path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        _unlink(tmp)
        raise


# ---------------------------------------------------------------------- packing

#: The packed folder's files: the labels (the format of the shared real sets) and the confidence sidecar.
LABELS, CONFIDENCE = "labels.tsv", "confidence.tsv"
CONFIDENCE_COLUMNS = ("file", "confidence", "crop", "best_read", "best_confidence", "camera", "time", "id", "format",
                      "country")
_TEXT = re.compile(r"^[A-Z0-9]+$")


class PackError(RuntimeError):
    """The collection cannot be packed at all (the message names the folder or file)."""


@dataclass(frozen=True)
class Packed:
    """One vehicle of a packed folder."""

    file: str
    text: str
    box: list[float] | None
    confidence: float
    crop: str
    meta: dict[str, Any]


def _number(meta: dict, key: str) -> float:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key}: expected a number, got {value!r}")
    return float(value)


def _box(meta: dict, key: str, width: int, height: int) -> list[float]:
    box = meta.get(key)
    if not isinstance(box, list) or len(box) != 4:
        raise ValueError(f"{key}: expected [x1, y1, x2, y2], got {box!r}")
    x1, y1, x2, y2 = (_number({"v": v}, "v") for v in box)
    if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
        raise ValueError(f"{key}: {box} does not lie in the {width}x{height} image")
    return [x1, y1, x2, y2]


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) of a collected JPEG; ValueError naming why it cannot be used."""
    if not path.is_file():
        raise ValueError(f"{path.name}: file not found")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"{path.name}: not a readable image")
    return image.shape[1], image.shape[0]


def read_sidecar(path: Path) -> Packed:
    """One collected vehicle from its sidecar; ValueError saying what is wrong (the caller names the file)."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"cannot be read as JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ValueError("not a JSON object")
    text = meta.get("text")
    if not isinstance(text, str) or not _TEXT.match(text):
        raise ValueError(f"text: expected A-Z and 0-9 only, got {text!r}")
    confidence = _number(meta, "confidence")
    crop = meta.get("crop")
    if not isinstance(crop, str) or Path(crop).name != crop or not crop.endswith(CROP_SUFFIX):
        raise ValueError(f"crop: expected a {CROP_SUFFIX} file name, got {crop!r}")
    _image_size(path.parent / crop)
    frame = meta.get("frame")
    if frame is None:
        return Packed(crop, text, None, confidence, crop, meta)
    if not isinstance(frame, str) or Path(frame).name != frame or not frame.endswith(FRAME_SUFFIX):
        raise ValueError(f"frame: expected a {FRAME_SUFFIX} file name, got {frame!r}")
    box = _box(meta, "frame_box", *_image_size(path.parent / frame))
    return Packed(frame, text, box, confidence, crop, meta)


def pack(collect_dir: Path, out_dir: Path, warn: Callable[[str], None]) -> int:
    """Write ``out_dir`` as a labelled folder of what ``collect_dir`` holds; return the vehicles packed.

    ``out_dir/labels.tsv`` has the columns of the shared real sets: a header,
    then ``file<TAB>text`` for a vehicle saved without its frame region (the
    file is the crop) or ``file<TAB>text<TAB>x1<TAB>y1<TAB>x2<TAB>y2`` for one
    with it (the file is the region, the box the plate's in it). The text is
    the vehicle's voted read. Rows go lowest confidence first (the ones most
    likely wrong, to review first). Each vehicle's images are copied as
    ``<id>.jpg`` (the labelled image) and ``crops/<id>.jpg`` (its crop).
    ``out_dir/confidence.tsv`` (header: ``CONFIDENCE_COLUMNS``), in the same
    order, gives each labelled file its voted confidence, its crop, its best
    single read and that read's confidence, camera, time (last seen, UTC),
    event id, format and country.

    A sidecar that cannot be used (not JSON, a field missing or wrong, its
    image missing or unreadable) is reported through ``warn`` naming the file
    and skipped. PackError when ``collect_dir`` is no folder or ``out_dir``
    already holds a labels.tsv: a packed folder may have been reviewed since,
    and packing never overwrites a review.
    """
    if not collect_dir.is_dir():
        raise PackError(f"{collect_dir}: not a folder")
    if (out_dir / LABELS).exists():
        raise PackError(f"{out_dir / LABELS}: already there (pack into a new folder: a review is never overwritten)")
    packed: list[Packed] = []
    for path in sorted(collect_dir.glob("*" + SIDECAR_SUFFIX)):
        if path.name.startswith(TMP_PREFIX):
            continue
        try:
            packed.append(read_sidecar(path))
        except ValueError as exc:
            warn(f"{path}: {exc}; skipped")
    packed.sort(key=lambda p: (p.confidence, p.file))
    try:
        (out_dir / "crops").mkdir(parents=True, exist_ok=True)
        has_box = any(p.box is not None for p in packed)
        labels = ["file\ttext" + ("\tx1\ty1\tx2\ty2" if has_box else "")]
        confidence = ["\t".join(CONFIDENCE_COLUMNS)]
        for p in packed:
            stem = p.file.removesuffix(FRAME_SUFFIX).removesuffix(CROP_SUFFIX)
            name, crop = f"{stem}.jpg", f"crops/{stem}.jpg"
            shutil.copyfile(collect_dir / p.file, out_dir / name)
            shutil.copyfile(collect_dir / p.crop, out_dir / crop)
            row = [name, p.text] + ([f"{v:.0f}" for v in p.box] if p.box is not None else [])
            labels.append("\t".join(row))
            m = p.meta
            confidence.append("\t".join(_cell(v) for v in (
                name, f"{p.confidence:.4f}", crop, m.get("best_read"), m.get("best_confidence"), m.get("camera"),
                m.get("last_seen"), m.get("id"), m.get("format"), m.get("country"))))
        _write_atomic(out_dir / CONFIDENCE, ("\n".join(confidence) + "\n").encode())
        _write_atomic(out_dir / LABELS, ("\n".join(labels) + "\n").encode())  # last: a complete folder
    except OSError as exc:
        raise PackError(f"{out_dir}: cannot write the packed folder: {exc}") from None
    return len(packed)


def _cell(value: object) -> str:
    """A TSV cell: empty for None, never a tab or a line break."""
    return "" if value is None else re.sub(r"[\t\r\n]", " ", str(value))
