"""Which captured frames reach inference: the frame queue, the frame stride and the motion gate.

- :class:`FrameQueue`: the bounded FIFO between the capture and inference
  threads; a live source drops its oldest frame when inference falls behind
  (counted), a file source in non-real-time mode waits instead;
- :class:`MotionGate`: a cheap change detector on a small grayscale thumbnail;
- :class:`FrameGate`: ``detection.frame_stride`` and the motion gate together,
  as the inference loop applies them.
"""
from __future__ import annotations

import threading
from collections import deque

import cv2
import numpy as np

from edge.config import DetectionConfig, MotionConfig

#: Queue marker: the source has ended. Never dropped, however full the queue.
END = object()


class FrameQueue:
    """Bounded FIFO between capture and inference; drop-oldest when full, or wait."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.dropped = 0
        self._items: deque = deque()
        self._cond = threading.Condition()

    def put(self, item: object, wait: bool, stop: threading.Event) -> None:
        """Append ``item``; when full, wait for room (``wait``, until ``stop``) or drop the oldest."""
        with self._cond:
            while wait and len(self._items) >= self.size and not stop.is_set():
                self._cond.wait(0.1)
            if len(self._items) >= self.size and item is not END:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._cond.notify_all()

    def get(self, timeout: float) -> object | None:
        """The oldest item, or None when none arrives within ``timeout`` seconds."""
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
        return bool(changed >= self.cfg.min_changed * thumb.size)

    def accept(self, image: np.ndarray) -> None:
        """Make ``image`` the reference (it was inferred)."""
        self._ref = self._thumb(image)

    def _thumb(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        tw = min(self.cfg.width, w)
        small = cv2.resize(image, (tw, max(1, round(h * tw / w))), interpolation=cv2.INTER_AREA)
        gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small
        return cv2.GaussianBlur(gray, (5, 5), 0)


class FrameGate:
    """``detection.frame_stride`` and the motion gate: which frames of the queue are inferred."""

    def __init__(self, cfg: DetectionConfig) -> None:
        self.cfg = cfg
        self.motion = MotionGate(cfg.motion) if cfg.motion.enabled else None
        self._n = 0
        self._last_inferred_ts = 0.0

    def skip(self, image: np.ndarray, ts: float, tracking: bool) -> str | None:
        """Why this frame is not inferred (``"stride"``, ``"motion"``), or None to infer it.

        The motion gate applies only while no vehicle is tracked (a car that
        stops must stay tracked), and lets a frame through at least every
        ``motion.max_skip_s`` so that slow light changes are followed.
        """
        self._n += 1
        if (self._n - 1) % self.cfg.frame_stride:
            return "stride"
        if self.motion is not None and not tracking:
            due = ts - self._last_inferred_ts >= self.cfg.motion.max_skip_s
            if not due and not self.motion.moved(image):
                return "motion"
        return None

    def inferred(self, image: np.ndarray, ts: float) -> None:
        """Record that this frame was inferred: the motion gate's new reference."""
        if self.motion is not None:
            self.motion.accept(image)
        self._last_inferred_ts = ts
