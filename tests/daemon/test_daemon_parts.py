"""Daemon parts without a broker: frame queue, frame and motion gates, event messages and topics, crops, stats,
failure counting, and no TensorFlow on the device."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from edge.config import DetectionConfig, MotionConfig, MqttConfig, TrackingConfig
from edge.events import Topics, crop_encoder, discovery_messages, event_messages, jpeg_crop
from edge.motion import END, FrameGate, FrameQueue, MotionGate
from edge.stats import Failures, Stats, stats_message
from edge.tracker import Event, Observation
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
    q.put(END, wait=False, stop=stop)
    assert q.dropped == 0 and q.get(0.1) == "b" and q.get(0.1) is END


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
    # What the search spent, per inferred frame of the window.
    s.add("inferred", 2)
    s.add("detector_runs", 5)
    s.add("reader_runs", 3)
    s.add("search_macs", 700_000_000)
    assert s.snapshot()["search_per_frame"] == {"detector_runs": 2.5, "reader_runs": 1.5, "gmac": 0.35}


def test_daemon_imports_no_tensorflow() -> None:
    code = ("import sys, edge.daemon, edge.config, edge.sources, edge.tracker, edge.spool, edge.publish, edge.events, "
            "edge.motion, edge.stats\n"
            "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'trainer'))))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == ""


def test_frame_gate_applies_the_stride_then_the_motion_gate() -> None:
    gate = FrameGate(DetectionConfig(frame_stride=2, motion=MotionConfig(enabled=True, max_skip_s=5)))
    road = np.full((240, 320, 3), 100, np.uint8)
    car = road.copy()
    car[100:180, 120:260] = 30
    assert gate.skip(road, 0.0, tracking=False) is None  # the first frame: no reference yet
    gate.inferred(road, 0.0)
    assert gate.skip(road, 0.1, tracking=False) == "stride"
    assert gate.skip(road, 0.2, tracking=False) == "motion"
    assert gate.skip(road, 0.3, tracking=False) == "stride"
    assert gate.skip(road, 0.4, tracking=True) is None  # a tracked vehicle is inferred even when still
    assert gate.skip(car, 0.5, tracking=False) == "stride"
    assert gate.skip(car, 0.6, tracking=False) is None
    gate.inferred(car, 0.6)
    assert gate.skip(car, 0.7, tracking=False) == "stride"
    assert gate.skip(car, 0.8, tracking=False) == "motion"
    gate.skip(car, 0.9, tracking=False)
    assert gate.skip(car, 5.6, tracking=False) is None  # max_skip_s: inferred anyway
    plain = FrameGate(DetectionConfig())
    assert [plain.skip(road, t, tracking=False) for t in (0.0, 0.1)] == [None, None]


def _event(crop: bytes | None) -> Event:
    return Event("new", "gate-20250114T081502123Z-3fa9c1", "gate", "AB12CDE", "AB12 CDE", "gb_current", "GB",
                 0.94, 1736842502.123, 1736842502.323, 3, (412.0, 300.5, 530.2, 331.0), 0.97, crop)


def test_topics_are_named_in_one_place() -> None:
    t = Topics.from_config(MqttConfig(device_id="gate"))
    assert (t.status, t.plates, t.stats) == ("anpr/gate/status", "anpr/gate/plates", "anpr/gate/stats")
    assert t.crop("id1") == "anpr/gate/crops/id1"
    assert t.discovery("fps") == "homeassistant/sensor/edge_anpr_gate/fps/config"
    t = Topics.from_config(MqttConfig(device_id="gate", topic_prefix="site/lane2",
                                      discovery={"prefix": "ha"}))
    assert t.plates == "site/lane2/plates" and t.discovery("last_plate") == "ha/sensor/edge_anpr_gate/last_plate/config"


@pytest.mark.parametrize("crop", ["none", "base64", "topic"])
def test_event_messages_wire_format(crop: str) -> None:
    topics = Topics("anpr/gate", "gate")
    jpeg = b"\xff\xd8jpeg"
    msgs = event_messages(_event(None if crop == "none" else jpeg), crop, topics)
    assert [topic for topic, _ in msgs] == ["anpr/gate/plates"] + (
        ["anpr/gate/crops/gate-20250114T081502123Z-3fa9c1"] if crop == "topic" else []) + ["anpr/gate/arrivals"]
    event = json.loads(msgs[0][1])
    fields = {"type", "id", "camera", "text", "display", "format", "country", "confidence", "best_confidence",
              "first_seen", "last_seen", "frame_count", "box"}
    extra = {"none": set(), "base64": {"crop"}, "topic": {"crop_topic"}}[crop]
    assert set(event) == fields | extra
    assert event["first_seen"] == "2025-01-14T08:15:02.123Z" and event["box"] == [412.0, 300.5, 530.2, 331.0]
    if crop == "base64":
        assert base64.b64decode(event["crop"]) == jpeg
    if crop == "topic":
        assert event["crop_topic"] == msgs[1][0] and msgs[1][1] == jpeg


def test_discovery_messages() -> None:
    msgs = dict(discovery_messages(Topics("anpr/gate", "gate"), "1.2.3"))
    assert {"homeassistant/sensor/edge_anpr_gate/last_plate/config",
            "homeassistant/sensor/edge_anpr_gate/fps/config"} <= set(msgs)  # topics only ever grow
    plate = json.loads(msgs["homeassistant/sensor/edge_anpr_gate/last_plate/config"])
    # Fed by the retained last plate, not by every event (tests/test_ha_discovery.py has the rest).
    assert plate["state_topic"] == "anpr/gate/last_plate" and plate["availability_topic"] == "anpr/gate/status"
    assert plate["unique_id"] == "edge_anpr_gate_last_plate" and plate["device"]["sw_version"] == "1.2.3"


def test_crop_encoder_follows_the_crop_policy() -> None:
    assert crop_encoder(TrackingConfig(crop="none")) is None
    encode = crop_encoder(TrackingConfig(crop="topic", crop_quality=50))
    image = np.random.default_rng(0).integers(0, 256, (100, 200, 3), np.uint8)
    obs = Observation("AB12CDE", 0.9, (50, 40, 150, 60), image=image)
    assert encode(obs) == jpeg_crop(obs, 50) and encode(obs)[:2] == b"\xff\xd8"


def test_failures_log_the_first_a_new_reason_and_then_once_per_interval() -> None:
    f = Failures(log_interval_s=3600)
    assert [f.fail("refused"), f.fail("refused"), f.fail("refused")] == [True, False, False]
    assert f.fail("name unknown") and not f.fail("name unknown")
    assert (f.total, f.streak, f.last_reason) == (5, 5, "name unknown")
    assert f.recover() == 5 and f.streak == 0
    assert f.fail("name unknown")  # a new outage is logged at once
    assert f.total == 6 and f.recover() == 1 and f.recover() == 0
    every = Failures(log_interval_s=0)
    assert all(every.fail("refused") for _ in range(3))


def test_stats_message_keeps_its_keys_and_adds_the_failure_counters(tmp_path) -> None:
    from edge.spool import Spool

    spool = Spool(tmp_path / "s.sqlite")
    spool.put("t", b"x")
    publisher = SimpleNamespace(published=4, connects=2, failures=Failures())
    publisher.failures.fail("connection refused")
    msg = stats_message(Stats(), FrameQueue(3), SimpleNamespace(errors=1, reconnects=2),
                        SimpleNamespace(tracks={}), spool, publisher)
    spool.close()
    old = {"uptime_s", "fps_captured", "fps", "frames_captured", "frames_inferred", "frames_skipped_stride",
           "frames_skipped_motion", "frame_errors", "events", "latency_ms", "queue_depth", "queue_size",
           "frames_dropped", "source_errors", "source_reconnects", "tracks_active", "spool_depth", "spool_dropped",
           "published", "mqtt_connects"}
    new = {"spool_write_failures", "spool_memory_depth", "spool_memory_dropped", "broker_failures",
           "broker_last_error", "search_per_frame"}
    assert set(msg) == old | new
    assert msg["search_per_frame"] == {"detector_runs": None, "reader_runs": None, "gmac": None}  # none inferred
    assert msg["queue_size"] == 3 and msg["spool_depth"] == 1 and msg["published"] == 4
    assert msg["broker_failures"] == 1 and msg["broker_last_error"] == "connection refused"
    assert msg["spool_write_failures"] == 0 and msg["spool_memory_depth"] == 0
    json.dumps(msg)  # the message goes out as JSON


def test_a_failing_inference_thread_stops_the_daemon_naming_it(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import signal

    import cv2

    from edge.config import parse_config
    from edge.daemon import Daemon, ExitCode
    from edge.pipeline import FrameReads, SearchCounts
    from edge.publish import Publisher
    from edge.sources import open_source
    from edge.spool import Spool
    from harness import free_port

    caplog.set_level(logging.INFO, "edge.daemon")
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        cv2.imwrite(str(frames / f"{i:03d}.jpg"), np.zeros((64, 64, 3), np.uint8))
    cfg = parse_config({"camera": {"type": "folder", "path": str(frames), "fps": 50, "realtime": False},
                        "mqtt": {"host": "127.0.0.1", "port": free_port(), "device_id": "failtest",
                                 "drain_timeout_s": 0},
                        "spool": {"path": str(tmp_path / "spool.sqlite")}})
    spool = Spool(cfg.spool.path)
    pipeline = SimpleNamespace(formats=None, run=lambda image, frame=None: FrameReads([], SearchCounts()))
    daemon = Daemon(cfg, open_source(cfg.camera), pipeline, spool, Publisher(cfg.mqtt, spool))

    def broken(*args: object) -> list:
        raise RuntimeError("injected tracker failure")

    monkeypatch.setattr(daemon.tracker, "update", broken)  # a bug past the per-frame guard
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        assert daemon.run() == ExitCode.ERROR
    finally:  # run() installed its own handlers in pytest's process
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert "stopping (inference failed)" in caplog.text and "end of source" not in caplog.text
    assert "injected tracker failure" in caplog.text
