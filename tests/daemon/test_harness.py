"""The real daemon on a clip with known plates, against a real mosquitto, with faults.

Each test starts its own broker on a free loopback port and ``python -m edge
run`` as a subprocess, and asserts on what a paho subscriber receives.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from harness import Broker, DaemonProc, Subscriber, base_config, free_port, make_certificates, wait_for

EVENT_FIELDS = {"type", "id", "camera", "text", "display", "format", "confidence", "best_confidence",
                "first_seen", "last_seen", "frame_count", "box"}


def by_id(events: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for e in events:
        out.setdefault(e["id"], []).append(e)
    return out


def unique_in_order(events: list[dict]) -> list[tuple[str, str]]:
    """(type, id) of each message the first time it arrives (at-least-once may repeat one)."""
    seen: list[tuple[str, str]] = []
    for e in events:
        if (e["type"], e["id"]) not in seen:
            seen.append((e["type"], e["id"]))
    return seen


def check_event(e: dict, plates: list[str], width: int, height: int) -> None:
    assert set(e) >= EVENT_FIELDS, e
    assert e["type"] in ("new", "end") and e["camera"] == "lane1" and e["text"] in plates
    assert 0 < e["confidence"] <= 1 and 0 < e["best_confidence"] <= 1 and e["frame_count"] >= 2
    first = dt.datetime.fromisoformat(e["first_seen"].replace("Z", "+00:00"))
    last = dt.datetime.fromisoformat(e["last_seen"].replace("Z", "+00:00"))
    assert first.tzinfo == dt.UTC and first <= last
    x1, y1, x2, y2 = e["box"]
    assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height


def test_clip_gives_one_new_and_one_end_per_vehicle(clip: Path, truth: dict, broker: Broker,
                                                    subscriber: Subscriber, tmp_path: Path) -> None:
    cfg = base_config(clip, broker.port, tmp_path, tracking={"crop": "base64"})
    d = DaemonProc(cfg, tmp_path)
    assert d.wait(120) == 0, d.log()
    wait_for(lambda: "offline" in subscriber.statuses(), 10, "status offline")
    events = subscriber.events()
    groups = by_id(events)
    assert len(events) == 2 * len(truth["plates"]), events
    assert sorted(g[0]["text"] for g in groups.values()) == sorted(truth["plates"])
    for msgs in groups.values():
        assert [m["type"] for m in msgs] == ["new", "end"]  # zero duplicates, new first
        new, end = msgs
        assert new["text"] == end["text"] and end["frame_count"] >= new["frame_count"]
        assert end["last_seen"] >= new["last_seen"] and end["first_seen"] == new["first_seen"]
        for m in msgs:
            check_event(m, truth["plates"], *truth["size"])
            crop = cv2.imdecode(np.frombuffer(base64.b64decode(m["crop"]), np.uint8), cv2.IMREAD_COLOR)
            assert crop is not None and crop.shape[0] > 5
    # Vehicles in the order they passed.
    assert [g[0]["text"] for g in groups.values()] == truth["plates"]
    assert subscriber.statuses()[0] == "online" and subscriber.statuses()[-1] == "offline"
    stats = subscriber.stats()
    assert stats and stats[-1]["frames_inferred"] == truth["frames"] and stats[-1]["frames_dropped"] == 0
    # 3 new and 3 end on plates, and each new again on arrivals.
    assert stats[-1]["spool_depth"] == 0 and stats[-1]["published"] == 9
    assert stats[-1]["broker_failures"] == 0 and stats[-1]["broker_last_error"] is None
    assert stats[-1]["spool_write_failures"] == stats[-1]["spool_memory_depth"] == 0
    assert {"p50", "p95"} <= set(stats[-1]["latency_ms"]["detect"]) and "uptime_s" in stats[-1]
    disco = {m.topic for m in subscriber.messages if m.topic.startswith("homeassistant/")}
    assert {t.split("/")[-2] for t in disco if t.startswith("homeassistant/sensor/edge_anpr_test/")} == {
        "last_plate", "fps", "source_errors", "source_reconnects", "frames_dropped", "spool_depth"}
    assert "end of file" in d.log()
    # What a client connecting now is told: retained status, discovery, last plate and its crop.
    late = Subscriber(broker.port).start()
    try:
        wait_for(lambda: late.statuses() == ["offline"] and len(late.messages) == 1 + len(disco) + 2, 5,
                 "retained messages")
    finally:
        late.stop()
    assert all(m.retain for m in late.messages) and not late.events()
    assert json.loads(late.on("last_plate")[0].payload)["id"] == [e for e in events if e["type"] == "new"][-1]["id"]


def test_credentials_with_the_password_from_the_environment(clip: Path, truth: dict, tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker", users={"cam": "s3cret"}).start()
    sub = Subscriber(broker.port, auth=("cam", "s3cret")).start()
    try:
        cfg = base_config(clip, broker.port, tmp_path, mqtt={"username": "cam", "password": "wrong-in-file"})
        d = DaemonProc(cfg, tmp_path, env={"ANPR_MQTT_PASSWORD": "s3cret"})
        assert d.wait(120) == 0, d.log()
        wait_for(lambda: "offline" in sub.statuses(), 10, "status offline")
    finally:
        sub.stop()
        broker.stop()
    assert [e["text"] for e in sub.events() if e["type"] == "new"] == truth["plates"]
    assert "s3cret" not in d.log()


@pytest.mark.skipif(not shutil.which("openssl"), reason="needs the openssl CLI to make test certificates")
def test_tls_with_a_private_ca_and_crops_on_their_topic(clip: Path, truth: dict, tmp_path: Path) -> None:
    certs = make_certificates(tmp_path / "certs")
    broker = Broker(tmp_path / "broker", tls=certs).start()
    sub = Subscriber(broker.port, ca=certs["ca"]).start()
    try:
        cfg = base_config(clip, broker.port, tmp_path, mqtt={"tls": {"ca_certs": str(certs["ca"])}},
                          tracking={"crop": "topic"})
        d = DaemonProc(cfg, tmp_path)
        assert d.wait(120) == 0, d.log()
        wait_for(lambda: "offline" in sub.statuses(), 10, "status offline")
    finally:
        sub.stop()
        broker.stop()
    events = sub.events()
    assert [e["text"] for e in events if e["type"] == "new"] == truth["plates"]
    # Crops on their own topic: raw JPEG, one per event message, named by the event id.
    crops = [m for m in sub.messages if "/crops/" in m.topic]
    assert sorted(m.topic for m in crops) == sorted(e["crop_topic"] for e in events)
    assert all(m.topic.endswith(e["id"]) for e in events for m in crops if m.topic == e["crop_topic"])
    assert all(m.payload[:2] == b"\xff\xd8" for m in crops) and "crop" not in events[0]


def test_broker_stopped_mid_run_and_restarted(clip: Path, truth: dict, tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker", persistence=True).start()
    sub = Subscriber(broker.port, persistent=True).start()  # its queue survives the broker restart
    try:
        cfg = base_config(clip, broker.port, tmp_path, camera={"realtime": True}, mqtt={"drain_timeout_s": 60})
        d = DaemonProc(cfg, tmp_path)
        wait_for(lambda: any(e["type"] == "new" for e in sub.events()), 30, "the first event")
        broker.stop()
        d.wait_log(r"event end MXE7315", 30)  # the rest of the clip passes while the broker is away
        assert len(sub.events()) < 6
        assert d.proc.poll() is None, "the daemon must wait for the broker"
        broker.start()
        assert d.wait(60) == 0, d.log()
        wait_for(lambda: len(unique_in_order(sub.events())) == 6, 15, "every event after the restart")
    finally:
        sub.stop()
        broker.stop()
    logged = [(t, i) for t, _, i in d.logged_events()]
    assert unique_in_order(sub.events()) == logged  # none lost, oldest first
    assert "MQTT disconnected" in d.log() and d.log().count("MQTT connected") >= 2


def test_sigkill_then_restart_delivers_the_spool(clip: Path, truth: dict, tmp_path: Path) -> None:
    port = free_port()
    cfg = base_config(clip, port, tmp_path, mqtt={"drain_timeout_s": 60})
    d1 = DaemonProc(cfg, tmp_path, "first")  # no broker yet: everything stays in the spool
    d1.wait_log(r"event end MXE7315", 60)
    d1.kill()
    spooled = [(t, i) for t, _, i in d1.logged_events()]
    assert len(spooled) == 6
    rows = sqlite3.connect(cfg["spool"]["path"]).execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    assert rows == 9  # each event on plates, and each new again on arrivals
    broker = Broker(tmp_path / "broker", port=port).start()
    sub = Subscriber(port).start()
    try:
        d2 = DaemonProc(cfg, tmp_path, "second")
        assert d2.wait(120) == 0, d2.log()
    finally:
        sub.stop()
        broker.stop()
    got = unique_in_order(sub.events())
    again = [(t, i) for t, _, i in d2.logged_events()]
    assert got[:6] == spooled and got[6:] == again  # the killed run's events first, oldest first
    assert "9 events spooled from before" in d2.log()  # messages: 6 on plates, 3 on arrivals


def test_corrupt_and_truncated_images_are_logged_and_skipped(clip: Path, truth: dict, broker: Broker,
                                                             subscriber: Subscriber, tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    shutil.copytree(clip / "frames", frames)
    data = (frames / "0010.jpg").read_bytes()
    (frames / "0010.jpg").write_bytes(data[: len(data) // 3])  # truncated mid-scan
    (frames / "0026.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")  # corrupt
    (frames / "0042.jpg").write_bytes(b"")  # empty
    cfg = base_config(clip, broker.port, tmp_path, camera={"type": "folder", "path": str(frames), "fps": 10})
    d = DaemonProc(cfg, tmp_path)
    assert d.wait(120) == 0, d.log()
    log = d.log()
    assert "0026.jpg (seq 26): not a decodable image" in log and "0042.jpg (seq 42): not a decodable" in log
    wait_for(lambda: len(subscriber.events()) == 6, 10, "all events")
    assert sorted({e["text"] for e in subscriber.events()}) == sorted(truth["plates"])
    # A JPEG cut short may still decode (grey bottom); either way the daemon went on.
    assert subscriber.stats()[-1]["frame_errors"] == 0


def test_truncated_video_ends_cleanly(clip: Path, truth: dict, broker: Broker, subscriber: Subscriber,
                                      tmp_path: Path) -> None:
    video = tmp_path / "cut.avi"
    data = (clip / "clip.avi").read_bytes()
    video.write_bytes(data[: int(len(data) * 0.55)])  # the third vehicle is cut off
    cfg = base_config(clip, broker.port, tmp_path, camera={"path": str(video)})
    d = DaemonProc(cfg, tmp_path)
    assert d.wait(120) == 0, d.log()
    assert "truncated or corrupt" in d.log()
    wait_for(lambda: "offline" in subscriber.statuses(), 10, "status offline")
    texts = [e["text"] for e in subscriber.events() if e["type"] == "new"]
    assert texts[:2] == truth["plates"][:2] and len(texts) <= 3


def test_vanishing_file_source_keeps_the_daemon_running(clip: Path, truth: dict, broker: Broker,
                                                        subscriber: Subscriber, tmp_path: Path) -> None:
    video = tmp_path / "loop.avi"
    shutil.copy(clip / "clip.avi", video)
    cfg = base_config(clip, broker.port, tmp_path, camera={"path": str(video), "loop": True, "realtime": True,
                                                           "reconnect_min_s": 0.5, "reconnect_max_s": 1})
    d = DaemonProc(cfg, tmp_path)
    wait_for(lambda: subscriber.events(), 30, "a first event")
    hidden = tmp_path / "hidden.avi"
    video.rename(hidden)  # vanishes; noticed when the pass ends and it is reopened
    d.wait_log(r"loop.avi: vanished \(at seq \d+\); retrying", 30)
    n_stats = len(subscriber.stats())
    wait_for(lambda: len(subscriber.stats()) >= n_stats + 2, 10, "stats while the source is away")
    assert d.proc.poll() is None and subscriber.statuses()[-1] == "online"
    captured = subscriber.stats()[-1]["frames_captured"]
    hidden.rename(video)
    wait_for(lambda: subscriber.stats()[-1]["frames_captured"] > captured + 5, 20, "frames after it came back")
    d.signal(signal.SIGTERM)
    assert d.wait(30) == 0, d.log()
    wait_for(lambda: subscriber.statuses()[-1] == "offline", 10, "status offline after SIGTERM")
    assert subscriber.stats()[-1]["source_errors"] >= 1
    groups = by_id(subscriber.events())
    assert all([m["type"] for m in msgs] == ["new", "end"] for msgs in groups.values()), groups


def test_spool_at_its_bound_keeps_the_newest(clip: Path, truth: dict, tmp_path: Path) -> None:
    port = free_port()
    cfg = base_config(clip, port, tmp_path, spool={"max_events": 2}, mqtt={"drain_timeout_s": 60})
    d = DaemonProc(cfg, tmp_path)  # no broker: events pile up in the spool
    # Three vehicles: six events, nine messages (a `new` also goes to arrivals), seven of them dropped.
    wait_for(lambda: len(d.logged_events()) == 6 and d.log().count("spool full") == 7, 60, "six events spooled")
    logged = [(t, i) for t, _, i in d.logged_events()]
    broker = Broker(tmp_path / "broker", port=port).start()
    sub = Subscriber(port).start()
    try:
        assert d.wait(60) == 0, d.log()
        wait_for(lambda: sub.stats() and sub.stats()[-1]["spool_dropped"] == 7, 10, "final stats")
    finally:
        sub.stop()
        broker.stop()
    # The two newest messages survived: the last vehicle's arrival and its `end`.
    arrivals = [(e["type"], e["id"]) for e in (json.loads(m.payload) for m in sub.on("arrivals"))]
    assert unique_in_order(sub.events()) == logged[-1:] and list(dict.fromkeys(arrivals)) == logged[-2:-1]
    assert "dropped the 1 oldest" in d.log()


@pytest.mark.skipif(not (shutil.which("rtsp-server-perl") and shutil.which("ffmpeg")),
                    reason="needs rtsp-server-perl and ffmpeg (apt-get install rtsp-server-perl ffmpeg)")
def test_rtsp_drop_and_return(clip: Path, truth: dict, broker: Broker, subscriber: Subscriber,
                              tmp_path: Path) -> None:
    client_port, source_port = free_port(), free_port()

    def serve() -> tuple[subprocess.Popen, subprocess.Popen]:
        # The servers keep their own copies of the log file.
        with open(tmp_path / "rtsp.log", "ab") as log:
            server = subprocess.Popen(["rtsp-server-perl", "--clientport", str(client_port), "--serverport",
                                       str(source_port), "--client_listen_address", "127.0.0.1",
                                       "--source_listen_address", "127.0.0.1", "--rtp_start_port",
                                       str(20000 + client_port % 20000)], stdout=log, stderr=log)
            wait_for(lambda: _accepting(source_port), 10, "the RTSP server")
            # Every frame a key frame: a client that joins (or rejoins) mid-stream decodes whole frames at
            # once, instead of a few smeared ones that the tiny harness reader would misread as a plate.
            camera = subprocess.Popen(["ffmpeg", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i",
                                       str(clip / "clip.avi"), "-c:v", "mpeg4", "-q:v", "2", "-g", "1", "-f", "rtsp",
                                       f"rtsp://127.0.0.1:{source_port}/cam"], stdout=log, stderr=log)
        return server, camera

    def stop(procs) -> None:
        for p in procs:
            p.terminate()
            p.wait(10)

    procs = serve()
    try:
        cfg = base_config(clip, broker.port, tmp_path, tracking={"reappear_window_s": 0})
        # The whole camera section: the clip's file keys (path, realtime) are not keys of an rtsp camera.
        cfg["camera"] = {"id": "lane1", "type": "rtsp", "url": f"rtsp://127.0.0.1:{client_port}/cam",
                         "rtsp_transport": "udp", "read_timeout_s": 2, "open_timeout_s": 3,
                         "reconnect_min_s": 0.5, "reconnect_max_s": 1}
        d = DaemonProc(cfg, tmp_path)
        d.wait_log(r"rtsp \S+: opened", 30)
        wait_for(lambda: subscriber.events(), 30, "an event from the stream")
        stop(procs)
        d.wait_log(r"rtsp \S+: (stream dropped|cannot be opened)", 20)
        n_before = len(subscriber.events())
        time.sleep(1)
        procs = serve()
        d.wait_log(r"rtsp \S+: opened", 30, count=2)
        wait_for(lambda: any(e["type"] == "new" for e in subscriber.events()[n_before:]), 30,
                 "a new event after the stream came back")
        assert d.proc.poll() is None
        d.signal(signal.SIGTERM)
        assert d.wait(30) == 0, d.log()
    finally:
        stop(procs)
    assert {e["text"] for e in subscriber.events()} <= set(truth["plates"])
    assert subscriber.stats()[-1]["source_reconnects"] >= 1


def _accepting(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def test_frame_stride_and_motion_gate_save_inference(clip: Path, truth: dict, broker: Broker,
                                                     subscriber: Subscriber, tmp_path: Path) -> None:
    cfg = base_config(clip, broker.port, tmp_path,
                      detection={"frame_stride": 2, "motion": {"enabled": True, "max_skip_s": 5}})
    d = DaemonProc(cfg, tmp_path)
    assert d.wait(120) == 0, d.log()
    wait_for(lambda: "offline" in subscriber.statuses(), 10, "status offline")
    stats = subscriber.stats()[-1]
    assert stats["frames_skipped_stride"] == truth["frames"] // 2
    assert stats["frames_skipped_motion"] > 0  # the empty road between vehicles
    assert stats["frames_inferred"] + stats["frames_skipped_stride"] + stats["frames_skipped_motion"] == truth["frames"]
    assert [(e["type"], e["text"]) for e in subscriber.events()] == [
        (t, p) for p in truth["plates"] for t in ("new", "end")]
