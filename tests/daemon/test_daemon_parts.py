"""Daemon parts without a broker: frame queue, motion gate, crops, stats, and no TensorFlow on the device."""
from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np

from edge.config import MotionConfig
from edge.daemon import _END, FrameQueue, MotionGate, Stats, jpeg_crop
from edge.tracker import Observation
from harness import ROOT


def test_frame_queue_drops_oldest_and_counts() -> None:
    q, stop = FrameQueue(2), threading.Event()
    for i in range(5):
        q.put(i, wait=False, stop=stop)
    assert len(q) == 2 and q.dropped == 3
    assert [q.get(0.01), q.get(0.01), q.get(0.01)] == [3, 4, None]


def test_frame_queue_waits_when_asked_and_end_marker_is_never_dropped() -> None:
    q, stop = FrameQueue(1), threading.Event()
    q.put("a", wait=True, stop=stop)
    t = threading.Thread(target=q.put, args=("b", True, stop))
    t.start()
    t.join(0.3)
    assert t.is_alive()  # waits for room instead of dropping
    assert q.get(1) == "a"
    t.join(2)
    q.put(_END, wait=False, stop=stop)
    assert q.dropped == 0 and q.get(0.1) == "b" and q.get(0.1) is _END


def test_motion_gate() -> None:
    gate = MotionGate(MotionConfig(enabled=True))
    road = np.full((240, 320, 3), 100, np.uint8)
    noisy = (road + np.random.default_rng(0).integers(-3, 4, road.shape)).astype(np.uint8)
    car = road.copy()
    car[100:180, 120:260] = 30
    assert gate.moved(road)  # no reference yet
    gate.accept(road)
    assert not gate.moved(road) and not gate.moved(noisy)  # sensor noise is not motion
    assert gate.moved(car)


def test_jpeg_crop_and_stats() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    crop = jpeg_crop(Observation("AB12CDE", 0.9, (50, 40, 150, 60), image=image), 80)
    assert crop[:2] == b"\xff\xd8"
    assert jpeg_crop(Observation("X", 0.9, (0, 0, 10, 10)), 80) is None
    s = Stats()
    s.add("inferred", 3)
    for ms in (1, 2, 3, 4, 100):
        s.latency("detect", ms)
    snap = s.snapshot()
    assert snap["frames_inferred"] == 3 and snap["latency_ms"]["detect"]["p50"] == 3.0
    assert snap["latency_ms"]["read"] == {"p50": None, "p95": None}
    assert s.snapshot()["latency_ms"]["detect"]["p50"] is None  # windows reset per report


def test_daemon_imports_no_tensorflow() -> None:
    code = ("import sys, edge.daemon, edge.config, edge.sources, edge.tracker, edge.spool, edge.publish\n"
            "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'trainer'))))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == ""
