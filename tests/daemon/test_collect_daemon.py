"""Collection on the device with the real daemon on the clip against a real mosquitto: each vehicle's crop,
frame region and sidecar appear, the folder stays within a tiny cap (oldest vehicles removed first), a folder
that cannot be written is counted, and every event arrives either way."""
from __future__ import annotations

import json
import threading
from pathlib import Path

from edge.collect import pack
from edge.vehicle_eval import read_labels
from harness import Broker, DaemonProc, Subscriber, base_config, wait_for

SUFFIXES = (".crop.jpg", ".frame.jpg", ".json")


def run_clip(cfg: dict, tmp_path: Path, subscriber: Subscriber, during: threading.Event | None = None) -> DaemonProc:
    d = DaemonProc(cfg, tmp_path)
    try:
        assert d.wait(120) == 0, d.log()
    finally:
        if during is not None:
            during.set()
    wait_for(lambda: "offline" in subscriber.statuses(), 10, "status offline")
    return d


def every_event_arrived(subscriber: Subscriber, d: DaemonProc, plates: list[str]) -> list[str]:
    """The ids of the vehicles, after checking that every event the daemon spooled arrived, one new + end each."""
    sent = {(t, i) for t, _, i in d.logged_events()}
    got = {(e["type"], e["id"]) for e in subscriber.events()}
    assert got == sent and len(sent) == 2 * len(plates), (sent, got)
    assert [e["text"] for e in subscriber.events() if e["type"] == "new"] == plates
    return [e["id"] for e in subscriber.events() if e["type"] == "end"]


def folder_bytes(folder: Path) -> int:
    try:
        return sum(p.stat().st_size for p in folder.iterdir() if p.name.endswith(SUFFIXES))
    except FileNotFoundError:  # a file removed between the listing and its stat
        return folder_bytes(folder)


def test_each_vehicle_is_collected_within_a_tiny_cap_oldest_removed_first(clip: Path, truth: dict, broker: Broker,
                                                                          subscriber: Subscriber,
                                                                          tmp_path: Path) -> None:
    folder = tmp_path / "collect"
    # Room for one vehicle of this clip and a half: each one that follows removes the one before.
    cap_mb = 0.025  # a vehicle of this 320x256 clip is about 18 kB
    cfg = base_config(clip, broker.port, tmp_path, collect={"enabled": True, "folder": str(folder), "max_mb": cap_mb})
    done, peak = threading.Event(), [0]

    def watch() -> None:  # the folder's size all along the run, not only at the end
        while not done.is_set():
            if folder.is_dir():
                peak[0] = max(peak[0], folder_bytes(folder))
            done.wait(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    d = run_clip(cfg, tmp_path, subscriber, done)
    watcher.join(5)
    ids = every_event_arrived(subscriber, d, truth["plates"])
    stats = subscriber.stats()[-1]
    assert stats["collect_saved"] == 3 and stats["collect_errors"] == stats["collect_dropped"] == 0, stats
    assert stats["collect_removed"] == 2 and stats["collect_files"] == 3, stats
    assert 0 < peak[0] <= cap_mb * (1 << 20) and stats["collect_bytes"] == folder_bytes(folder)
    # The last vehicle is the one kept: its crop, its frame region and its sidecar, named by its event id.
    assert sorted(p.name for p in folder.iterdir()) == sorted(ids[-1] + s for s in SUFFIXES)
    meta = json.loads((folder / f"{ids[-1]}.json").read_text())
    assert meta["text"] == truth["plates"][-1] and meta["camera"] == "lane1" and 0 < meta["confidence"] <= 1
    out = tmp_path / "packed"
    assert pack(folder, out, lambda line: pytest_fail(line)) == 1
    vehicles, _ = read_labels(out)
    assert [v.label for v in vehicles] == [truth["plates"][-1]] and vehicles[0].box is not None


def pytest_fail(line: str) -> None:
    raise AssertionError(f"pack reported a problem: {line}")


def test_a_folder_that_cannot_be_written_is_counted_and_every_event_arrives(clip: Path, truth: dict, broker: Broker,
                                                                          subscriber: Subscriber,
                                                                          tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    cfg = base_config(clip, broker.port, tmp_path,
                      collect={"enabled": True, "folder": str(tmp_path / "file" / "collect")})
    d = run_clip(cfg, tmp_path, subscriber)
    every_event_arrived(subscriber, d, truth["plates"])
    stats = subscriber.stats()[-1]
    # The folder is tried at start, then again for each of the 3 vehicles; its reason is logged once.
    assert stats["collect_saved"] == 0 and stats["collect_errors"] == 4, stats
    assert d.log().count("WARNING edge.collect") == 1 and "Not a directory" in d.log(), d.log()
