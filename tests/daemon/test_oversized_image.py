"""The real daemon on an image folder that holds a 30000x30000 PNG, against a real mosquitto.

Decoded, that image would take 2.7 GB (it crashed the daemon, and under
systemd that is a crash loop); it must be refused from its header, logged
with its sequence number on every pass, and the daemon must go on.
"""
from __future__ import annotations

import re
import shutil
import signal
from pathlib import Path

from harness import Broker, DaemonProc, Subscriber, base_config, wait_for
from test_images import zero_png


def test_oversized_image_in_a_looping_folder_is_logged_and_the_daemon_goes_on(
        clip: Path, truth: dict, broker: Broker, subscriber: Subscriber, tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    shutil.copytree(clip / "frames", frames)
    names = sorted(p.name for p in frames.iterdir())
    big = frames / f"{Path(names[len(names) // 2]).stem}_big.png"  # between two frames of the clip, mid-way
    big.write_bytes(zero_png(30000, 30000))
    order = sorted(p.name for p in frames.iterdir())
    seq = order.index(big.name)
    assert 0 < seq < len(order) - 1 and big.stat().st_size < 4_000_000
    cfg = base_config(clip, broker.port, tmp_path,
                      camera={"type": "folder", "path": str(frames), "fps": 10, "loop": True})
    d = DaemonProc(cfg, tmp_path)
    try:
        # Refused on the first pass, and again on the next, one pass of the folder later: the daemon went on.
        refused = rf"^.*{re.escape(big.name)} \(seq \d+\): too large to decode: 30000x30000 pixels \(900\.0 Mpx\).*$"
        hits = d.wait_log(refused, 120, count=2)
        assert f"{big} (seq {seq}): too large to decode" in hits[0] and hits[0].endswith(", skipped")
        assert f"{big} (seq {seq + len(order)}): too large to decode" in hits[1]

        def news() -> list[str]:
            return [e["text"] for e in subscriber.events() if e["type"] == "new"]

        wait_for(lambda: len(news()) >= len(truth["plates"]), 30, "a new event per vehicle")
        assert d.proc.poll() is None and subscriber.statuses()[-1] == "online"
        # Every vehicle of the pass, those after the refused image included; seen again on the next pass
        # within tracking.reappear_window_s, no vehicle gives a second new event.
        assert news() == truth["plates"], news()
        wait_for(lambda: subscriber.stats() and subscriber.stats()[-1]["source_errors"] >= 2, 10,
                 "stats counting the refused image once a pass")
        d.signal(signal.SIGTERM)
        assert d.wait(60) == 0, d.log()
        wait_for(lambda: subscriber.statuses()[-1] == "offline", 10, "status offline after SIGTERM")
        stats = subscriber.stats()[-1]
        # The first pass's images but the refused one, and the second pass's up to it at least.
        assert stats["frame_errors"] == 0 and stats["frames_captured"] >= len(order) - 1 + seq
    finally:
        d.kill()  # only if a check above failed with the daemon still running
