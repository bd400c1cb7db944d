"""The topics Home Assistant's triggers and entities read, with the real daemon on a real mosquitto.

``<prefix>/arrivals`` carries one message per ``new`` event and none per
``end``, and nothing more when the daemon reconnects or restarts;
``<prefix>/last_plate`` and ``<prefix>/last_crop`` are retained, hold the
latest ``new`` event (without its crop) and its crop, and are there again
after a broker restart that kept nothing.
"""
from __future__ import annotations

import base64
import json
import signal
import time
from pathlib import Path

from harness import PREFIX, Broker, DaemonProc, Subscriber, base_config, wait_for


def retained(port: int, expect: set[str]) -> dict[str, bytes]:
    """What a client subscribing now is told, once it has the ``expect`` topics: topic -> retained payload."""
    late = Subscriber(port).start()
    try:
        wait_for(lambda: expect <= {m.topic for m in late.messages}, 15, f"the retained {sorted(expect)}")
        time.sleep(0.3)  # the rest of the broker's burst of retained messages, were there any more
    finally:
        late.stop()
    assert all(m.retain for m in late.messages)
    return {m.topic: m.payload for m in late.messages}


def test_one_arrival_per_new_and_a_retained_last_plate_across_reconnects(clip: Path, truth: dict,
                                                                         tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker").start()
    sub = Subscriber(broker.port).start()
    # A looping camera: after the first pass the same plates come again within tracking.reappear_window_s
    # (60 s), which gives no event, so the daemon stays up with nothing more to say while the broker restarts.
    camera = {"type": "folder", "path": str(clip / "frames"), "fps": 10, "loop": True, "realtime": True}
    cfg = base_config(clip, broker.port, tmp_path, camera=camera, tracking={"crop": "base64"})
    d = d2 = None
    try:
        d = DaemonProc(cfg, tmp_path, "first")
        n = len(truth["plates"])
        wait_for(lambda: sum(e["type"] == "end" for e in sub.events()) == n, 120, "every vehicle's end")
        news = [e for e in sub.events() if e["type"] == "new"]
        expected = {f"{PREFIX}/{t}" for t in ("status", "last_plate", "last_crop")}
        arrivals = [json.loads(m.payload) for m in sub.on("arrivals")]
        assert [a["id"] for a in arrivals] == [e["id"] for e in news] and len(arrivals) == n  # none per end
        assert [a["text"] for a in arrivals] == truth["plates"]
        for a, e in zip(arrivals, news, strict=True):
            assert "crop" not in a and a == {k: v for k, v in e.items() if k != "crop"}

        held = retained(broker.port, expected)
        assert f"{PREFIX}/arrivals" not in held and f"{PREFIX}/plates" not in held  # never replayed
        last = json.loads(held[f"{PREFIX}/last_plate"])
        assert last == arrivals[-1]  # the latest new, no crop
        assert held[f"{PREFIX}/last_crop"] == base64.b64decode(news[-1]["crop"])
        assert held[f"{PREFIX}/status"] == b"online"

        # A broker restart that keeps nothing: the daemon reconnects, sends its last plate again, and no arrival.
        broker.stop()
        broker.start()
        d.wait_log(r"MQTT connected", 60, count=2)
        wait_for(lambda: sub.statuses()[-1:] == ["online"], 30, "the subscriber back, the daemon online")
        n_stats = len(sub.stats())
        wait_for(lambda: len(sub.stats()) >= n_stats + 2, 30, "two stats messages after the reconnect")
        assert len(sub.on("arrivals")) == n
        held = retained(broker.port, expected)
        assert json.loads(held[f"{PREFIX}/last_plate"]) == last
        assert held[f"{PREFIX}/last_crop"] == base64.b64decode(news[-1]["crop"])

        # A daemon restart, its camera now showing an empty road: nothing replayed, the last plate stays.
        d.signal(signal.SIGTERM)
        assert d.wait(60) == 0, d.log()
        empty = tmp_path / "empty"
        empty.mkdir()
        d2 = DaemonProc(base_config(clip, broker.port, tmp_path, camera=camera | {"path": str(empty)}), tmp_path,
                        "second")
        d2.wait_log(r"MQTT connected", 60)
        n_stats = len(sub.stats())
        wait_for(lambda: len(sub.stats()) >= n_stats + 2, 30, "two stats messages from the restarted daemon")
        assert len(sub.on("arrivals")) == n and sum(e["type"] == "new" for e in sub.events()) == n
        assert json.loads(retained(broker.port, expected)[f"{PREFIX}/last_plate"]) == last
        d2.signal(signal.SIGTERM)
        assert d2.wait(60) == 0, d2.log()
    finally:
        for proc in (d, d2):
            if proc is not None:
                proc.kill()
        sub.stop()
        broker.stop()
