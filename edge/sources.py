"""Frame sources: video file, image folder, V4L2, RTSP, Raspberry Pi camera.

Each source is an iterator of ``Frame`` objects (image, sequence number,
timestamp, origin) that deals with its own trouble: an undecodable frame or
image is logged with its sequence number and skipped; a stream that drops or
a file that vanishes is reopened with exponential back-off. Only what cannot
work at all (picamera2 missing, a file or folder absent at start) raises
``SourceError``. File and folder timestamps are clip time (start + index /
fps), so a clip replays the same however fast it is read; live sources stamp
frames with the wall clock at capture.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.config import (
    CameraConfig,
    FileCameraConfig,
    FolderCameraConfig,
    PiCameraConfig,
    RtspCameraConfig,
    V4l2CameraConfig,
    redact_url,
)
from edge.images import IMAGE_SUFFIXES, ImageError, decode_image

log = logging.getLogger(__name__)

DEFAULT_FOLDER_FPS = 10.0
#: Consecutive undecodable frames after which a video is taken as truncated there.
MAX_BAD_FRAMES = 10


class SourceError(RuntimeError):
    """The source cannot be used at all (not a passing drop)."""


@dataclass(frozen=True)
class Frame:
    """One captured frame."""

    image: np.ndarray
    seq: int  # counts every frame the source attempted, across loops and reconnects
    ts: float  # seconds since the epoch
    origin: str  # file#index, image path or stream


class Backoff:
    """Exponential back-off between reopen attempts: min, 2*min, ... up to max."""

    def __init__(self, min_s: float, max_s: float) -> None:
        self.min_s, self.max_s = min_s, max_s
        self.delay = min_s

    def next(self) -> float:
        d = self.delay
        self.delay = min(self.max_s, self.delay * 2)
        return d

    def reset(self) -> None:
        self.delay = self.min_s


class Source:
    """Base: iterate ``frames(stop)``; ``finite`` sources end by themselves."""

    finite = False
    #: Frames may be dropped when inference falls behind (a live camera does not wait).
    droppable = True

    def __init__(self, cfg: CameraConfig) -> None:
        self.cfg = cfg
        self.seq = 0
        self.reconnects = 0
        self.errors = 0
        # A Pi camera is never reopened: its configuration has no back-off keys.
        self.backoff = (Backoff(1.0, 30.0) if isinstance(cfg, PiCameraConfig)
                        else Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s))

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        raise NotImplementedError

    def _wait(self, stop: threading.Event, what: str) -> None:
        delay = self.backoff.next()
        log.warning("%s; retrying in %.1f s", what, delay)
        self.reconnects += 1
        stop.wait(delay)


class _Paced(Source):
    """Shared by file and folder: clip timestamps, optional real-time pacing, looping."""

    cfg: FileCameraConfig | FolderCameraConfig

    def __init__(self, cfg: FileCameraConfig | FolderCameraConfig) -> None:
        super().__init__(cfg)
        self.finite = not cfg.loop
        self.droppable = cfg.realtime
        self.t0 = time.time()
        self.clock = 0.0  # clip seconds delivered so far, across loops

    def _stamp(self, stop: threading.Event, fps: float) -> float:
        """Timestamp of the next frame; in real-time mode, wait until it is due."""
        ts = self.t0 + self.clock
        if self.cfg.realtime:
            stop.wait(max(0.0, ts - time.time()))
        self.clock += 1.0 / fps
        return ts


class FileSource(_Paced):
    """A video file (anything OpenCV's FFmpeg backend decodes)."""

    def __init__(self, cfg: FileCameraConfig) -> None:
        super().__init__(cfg)
        if not Path(cfg.path).is_file():
            raise SourceError(f"camera.path: video file not found: {cfg.path}")

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        path = self.cfg.path
        while not stop.is_set():
            cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
            if not cap.isOpened():
                self.errors += 1
                what = "vanished" if not Path(path).exists() else "cannot be opened"
                self._wait(stop, f"camera.path {path}: {what} (at seq {self.seq})")
                continue
            self.backoff.reset()
            fps = self.cfg.fps or cap.get(cv2.CAP_PROP_FPS) or DEFAULT_FOLDER_FPS
            expected = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            index = bad = good = 0
            while not stop.is_set() and bad < MAX_BAD_FRAMES:
                ok, image = cap.read()
                if not ok:
                    if index >= expected:
                        break
                    self.errors += 1
                    log.warning("%s: frame %d (seq %d) cannot be decoded, skipped", path, index, self.seq)
                    bad += 1
                else:
                    bad = 0
                    good += 1
                    yield Frame(image, self.seq, self._stamp(stop, fps), f"{path}#{index}")
                index += 1
                self.seq += 1
            cap.release()
            if stop.is_set():
                return
            if index < expected or bad:
                log.warning("%s: ended at frame %d of %d (truncated or corrupt)", path, index, expected)
            if not self.cfg.loop:
                log.info("%s: end of file after %d frames", path, good)
                return
            if good == 0:
                self._wait(stop, f"camera.path {path}: no decodable frame")


class FolderSource(_Paced):
    """A folder of images, in file-name order, at ``camera.fps``."""

    def __init__(self, cfg: FolderCameraConfig) -> None:
        super().__init__(cfg)
        if not Path(cfg.path).is_dir():
            raise SourceError(f"camera.path: image folder not found: {cfg.path}")

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        folder = Path(self.cfg.path)
        fps = self.cfg.fps or DEFAULT_FOLDER_FPS
        while not stop.is_set():
            try:
                paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            except OSError as exc:
                self.errors += 1
                self._wait(stop, f"camera.path {folder}: cannot be listed ({exc.strerror}, at seq {self.seq})")
                continue
            good = 0
            for p in paths:
                if stop.is_set():
                    return
                image = self._decode(p)
                if image is not None:
                    good += 1
                    yield Frame(image, self.seq, self._stamp(stop, fps), str(p))
                self.seq += 1
            if not self.cfg.loop:
                log.info("%s: end of folder after %d images", folder, good)
                return
            if good:
                self.backoff.reset()
            else:
                self._wait(stop, f"camera.path {folder}: no decodable image")

    def _decode(self, path: Path) -> np.ndarray | None:
        """The image, or None after logging why not: unreadable, undecodable, or refused before decoding
        for its size (``edge.images``), so that one such file cannot take the daemon down."""
        try:
            return decode_image(path)
        except ImageError as exc:
            self.errors += 1
            log.warning("%s (seq %d): %s, skipped", path, self.seq, exc.reason)
            return None


class StreamSource(Source):
    """An RTSP URL or a V4L2 device through OpenCV, reopened with back-off when it drops."""

    cfg: RtspCameraConfig | V4l2CameraConfig

    def __init__(self, cfg: RtspCameraConfig | V4l2CameraConfig) -> None:
        super().__init__(cfg)
        self.name = redact_url(cfg.url) if isinstance(cfg, RtspCameraConfig) else cfg.device

    def _open(self) -> cv2.VideoCapture:
        cfg = self.cfg
        if isinstance(cfg, RtspCameraConfig):
            timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(cfg.open_timeout_s * 1000),
                        cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(cfg.read_timeout_s * 1000)]
            # OpenCV's FFmpeg backend takes demuxer options only from this variable.
            os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = f"rtsp_transport;{cfg.rtsp_transport}"
            return cv2.VideoCapture(cfg.url, cv2.CAP_FFMPEG, timeouts)
        dev = cfg.device
        cap = cv2.VideoCapture(int(dev) if dev.isdigit() else dev, cv2.CAP_V4L2)
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, cfg.width), (cv2.CAP_PROP_FRAME_HEIGHT, cfg.height),
                            (cv2.CAP_PROP_FPS, cfg.fps)):
            if value:
                cap.set(prop, value)
        return cap

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        while not stop.is_set():
            cap = self._open()
            if not cap.isOpened():
                self.errors += 1
                self._wait(stop, f"{self.cfg.type} {self.name}: cannot be opened (at seq {self.seq})")
                continue
            log.info("%s %s: opened", self.cfg.type, self.name)
            n = 0
            while not stop.is_set():
                ok, image = cap.read()
                if not ok or image is None:
                    break
                if n == 0:
                    self.backoff.reset()  # only a stream that delivers counts as back
                n += 1
                yield Frame(image, self.seq, time.time(), self.name)
                self.seq += 1
            cap.release()
            if not stop.is_set():
                self.errors += 1
                self._wait(stop, f"{self.cfg.type} {self.name}: stream dropped after {n} frames (seq {self.seq})")


class PiCameraSource(Source):
    """The Raspberry Pi camera through picamera2 (imported only when chosen)."""

    cfg: PiCameraConfig

    def __init__(self, cfg: PiCameraConfig) -> None:
        super().__init__(cfg)
        try:
            from picamera2 import Picamera2  # noqa: F401  (checked here, used in frames)
        except ImportError as exc:
            raise SourceError(
                "camera.type 'picamera' needs the picamera2 package: `sudo apt install python3-picamera2` "
                "and a virtual environment made with --system-site-packages"
            ) from exc

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        from picamera2 import Picamera2

        cam = Picamera2()
        main: dict[str, Any] = {"format": "RGB888"}  # picamera2's RGB888 is B, G, R in memory: what OpenCV expects
        if self.cfg.width and self.cfg.height:
            main["size"] = (self.cfg.width, self.cfg.height)
        controls = {"FrameRate": self.cfg.fps} if self.cfg.fps else {}
        cam.configure(cam.create_video_configuration(main=main, controls=controls))
        cam.start()
        try:
            while not stop.is_set():
                image = cam.capture_array("main")
                yield Frame(image, self.seq, time.time(), "picamera")
                self.seq += 1
        finally:
            cam.stop()
            cam.close()


def open_source(cfg: CameraConfig) -> Source:
    """The source for ``camera.type``; SourceError when it cannot work at all."""
    kinds = {"file": FileSource, "folder": FolderSource, "rtsp": StreamSource, "v4l2": StreamSource,
             "picamera": PiCameraSource}
    return kinds[cfg.type](cfg)
