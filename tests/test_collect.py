"""Collection on the device (edge.collect): what a vehicle saves, the bounded folder, the confidence filter,
atomic writes, failures counted and never raised, and `collect pack` giving a labelled folder."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.__main__ import main
from edge.collect import CONFIDENCE, CONFIDENCE_COLUMNS, Collector, PackError, pack
from edge.config import CollectConfig, ConfigError, parse_config
from edge.tracker import Event, Observation, Track
from edge.vehicle_eval import read_labels

ROOT = Path(__file__).resolve().parents[1]
#: The shared evaluation script, beside the checkout when the shared data is there (never required).
RUN_EVAL = ROOT.parent / "shared" / "eval" / "run_eval.py"
BOX = (120.0, 100.0, 200.0, 120.0)


def frame(seed: int = 0) -> np.ndarray:
    """A noisy 320x240 frame (JPEGs of it have a realistic size) with a white plate at BOX."""
    image = np.random.default_rng(seed).integers(0, 256, (240, 320, 3), np.uint8)
    x1, y1, x2, y2 = map(int, BOX)
    image[y1:y2, x1:x2] = 255
    return image


def vehicle(n: int, confidence: float = 0.7, image: np.ndarray | None = None,
            box: tuple[float, float, float, float] = BOX) -> tuple[Event, Track]:
    """The ``end`` event of vehicle ``n`` and its track, whose best read is in ``image``."""
    ts = 1_700_000_000.0 + n
    event_id = f"cam-{n:04d}"
    track = Track(event_id, ts, ts, box)
    track.add(Observation("AB12CDE", confidence, box, (confidence,) * 7, image=frame(n) if image is None else image,
                          format="gb_current"), ts)
    event = Event("end", event_id, "cam", "AB12CDE", "AB12 CDE", "gb_current", "GB", confidence, ts, ts + 1, 4, box,
                  confidence)
    return event, track


def collector(tmp_path: Path, **cfg: object) -> Collector:
    return Collector(CollectConfig(enabled=True, **cfg), tmp_path / "collect")


def save(c: Collector, n: int, **kw: object) -> bool:
    sample = c.sample(*vehicle(n, **kw))
    assert sample is not None
    return c.write(sample)


def ours(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_vehicle_is_its_crop_its_frame_region_and_a_sidecar(tmp_path: Path) -> None:
    c = collector(tmp_path, frame_margin=1.0)
    assert save(c, 1)
    folder = tmp_path / "collect"
    assert ours(folder) == ["cam-0001.crop.jpg", "cam-0001.frame.jpg", "cam-0001.json"]
    meta = json.loads((folder / "cam-0001.json").read_text())
    assert meta["id"] == "cam-0001" and meta["camera"] == "cam" and meta["text"] == "AB12CDE"
    assert meta["confidence"] == 0.7 and meta["best_read"] == "AB12CDE" and meta["best_confidence"] == 0.7
    assert meta["format"] == "gb_current" and meta["country"] == "GB"
    assert meta["last_seen"] == "2023-11-14T22:13:22.000Z" and meta["box"] == list(BOX)
    # The region is the box grown by one plate width (80 px) on each side, clipped to the 320x240 frame.
    assert meta["frame_region"] == [40, 20, 281, 201]
    region = cv2.imread(str(folder / meta["frame"]))
    assert region.shape[:2] == (181, 241)
    x1, y1, x2, y2 = map(int, meta["frame_box"])
    assert (x1, y1, x2, y2) == (80, 80, 160, 100)
    assert region[y1 + 2:y2 - 2, x1 + 2:x2 - 2].mean() > 240  # the white plate is where the box says
    assert region[:y1 - 2].mean() < 200  # and the noise around it is not
    crop = cv2.imread(str(folder / meta["crop"]))
    cx1, cy1, cx2, cy2 = meta["crop_box"]
    assert crop.shape[1] > cx2 - cx1 and crop[int(cy1) + 2:int(cy2) - 2, int(cx1) + 2:int(cx2) - 2].mean() > 240
    assert c.stats() | {"bytes": 0} == {"saved": 1, "skipped": 0, "dropped": 0, "removed": 0, "errors": 0,
                                        "bytes": 0, "files": 3}
    assert c.stats()["bytes"] == sum(p.stat().st_size for p in folder.iterdir())


def test_without_the_frame_only_the_crop_and_a_plate_at_the_edge_is_clipped(tmp_path: Path) -> None:
    c = collector(tmp_path, keep_frame=False)
    assert save(c, 1, box=(0.0, 0.0, 40.0, 12.0))
    assert ours(tmp_path / "collect") == ["cam-0001.crop.jpg", "cam-0001.json"]
    meta = json.loads((tmp_path / "collect" / "cam-0001.json").read_text())
    assert meta["frame"] is None and meta["frame_box"] is None and meta["crop_box"][:2] == [0.0, 0.0]


def test_the_daemon_hands_over_at_the_end_and_the_thread_writes(tmp_path: Path) -> None:
    c = collector(tmp_path)
    c.start()
    end, track = vehicle(1)
    new = Event("new", end.event_id, "cam", "AB12CDE", "AB12 CDE", None, None, 0.7, 0, 0, 2, BOX, 0.7)
    c.events([new], [track])
    assert not (tmp_path / "collect" / "cam-0001.json").exists()  # nothing at 'new': the best read may improve
    c.events([end], [])  # the tracker no longer holds the track at its end
    c.events([vehicle(2)[0]], [])  # an 'end' without a 'new' (a silent track) is not a vehicle
    c.close()
    assert ours(tmp_path / "collect") == ["cam-0001.crop.jpg", "cam-0001.frame.jpg", "cam-0001.json"]
    assert c.saved == 1


def test_the_cap_removes_the_oldest_vehicles_first_and_is_never_exceeded(tmp_path: Path) -> None:
    probe = collector(tmp_path / "probe")
    assert save(probe, 0)
    size = probe.stats()["bytes"]
    c = collector(tmp_path, max_mb=2.5 * size / (1 << 20))
    folder = tmp_path / "collect"
    for n in range(1, 6):
        assert save(c, n)
        assert sum(p.stat().st_size for p in folder.iterdir()) <= c.max_bytes
    assert sorted({p.name.split(".")[0] for p in folder.iterdir()}) == ["cam-0004", "cam-0005"]
    assert c.removed == 3 and c.saved == 5 and c.stats()["files"] == 6


def test_max_files(tmp_path: Path) -> None:
    c = collector(tmp_path, max_files=7)  # two vehicles of three files
    for n in range(1, 4):
        assert save(c, n)
    assert len(ours(tmp_path / "collect")) == 6 and c.removed == 1


def test_a_vehicle_larger_than_the_whole_cap_is_dropped_not_written(tmp_path: Path) -> None:
    c = collector(tmp_path, max_mb=0.001)
    c.scan()
    assert not save(c, 1)
    assert c.dropped == 1 and not list((tmp_path / "collect").iterdir())


def test_at_start_the_cap_is_enforced_oldest_first_and_leftovers_go(tmp_path: Path) -> None:
    first = collector(tmp_path)
    for n in range(1, 5):
        assert save(first, n)
    folder = tmp_path / "collect"
    # Written in another order than their names: the age is the files' time, not the name.
    for age, n in enumerate((3, 1, 4, 2)):
        for p in folder.glob(f"cam-{n:04d}.*"):
            os.utime(p, (1_000_000 + age, 1_000_000 + age))
    (folder / ".cam-0009.json.tmp").write_text("{")  # a crash mid-write
    (folder / "notes.txt").write_text("the user's own file")
    size = first.stats()["bytes"] // 4
    c = collector(tmp_path, max_mb=2.5 * size / (1 << 20))
    c.scan()
    assert ours(folder) == sorted([f"cam-000{n}{s}" for n in (2, 4) for s in (".crop.jpg", ".frame.jpg", ".json")]
                                  + ["notes.txt"])
    assert c.removed == 2 and c.stats()["files"] == 6


def test_max_confidence_keeps_only_the_less_sure_reads(tmp_path: Path) -> None:
    c = collector(tmp_path, max_confidence=0.8)
    c.start()
    for n, conf in ((1, 0.95), (2, 0.5), (3, 0.8)):
        end, track = vehicle(n, confidence=conf)
        c.events([Event("new", end.event_id, "cam", "X", "X", None, None, conf, 0, 0, 2, BOX, conf)], [track])
        c.events([end], [])
    c.close()
    assert {p.name.split(".")[0] for p in (tmp_path / "collect").iterdir()} == {"cam-0002"}
    assert c.skipped == 2 and c.saved == 1


def test_writes_are_atomic_a_failure_leaves_no_part_of_the_vehicle(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    c = collector(tmp_path)
    assert save(c, 1)
    real_fsync, calls = os.fsync, []

    def fsync(fd: int) -> None:  # the disk fills up at the vehicle's second file
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert not save(c, 2)
    monkeypatch.undo()
    assert ours(tmp_path / "collect") == ["cam-0001.crop.jpg", "cam-0001.frame.jpg", "cam-0001.json"]
    assert c.failures.total == 1 and c.saved == 1 and c.stats()["files"] == 3
    assert save(c, 3) and c.failures.streak == 0  # space again


def test_an_unwritable_folder_is_counted_and_logged_once_never_raised(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "edge.collect")
    (tmp_path / "file").write_text("x")
    c = Collector(CollectConfig(enabled=True), tmp_path / "file" / "collect")  # a folder under a file
    c.start()
    for n in range(1, 4):
        end, track = vehicle(n)
        c.events([Event("new", end.event_id, "cam", "X", "X", None, None, 0.7, 0, 0, 2, BOX, 0.7)], [track])
        c.events([end], [])
    c.close()
    assert c.saved == 0 and c.failures.total == 4  # the scan at start, then again for each of three vehicles
    warnings = [r for r in caplog.records if r.name == "edge.collect" and r.levelno == logging.WARNING]
    assert len(warnings) == 1  # the reason once: not a line per vehicle
    assert "Not a directory" in warnings[0].getMessage() and "events go on" in warnings[0].getMessage()
    (tmp_path / "file").unlink()  # the folder can be made now (a disk mounted late): the next vehicle is saved
    assert save(c, 4) and c.saved == 1 and c.failures.streak == 0
    assert "takes writes again after 4 failed attempts" in caplog.text


def test_a_full_queue_drops_and_counts_without_waiting(tmp_path: Path) -> None:
    c = Collector(CollectConfig(enabled=True), tmp_path / "collect", queue_size=1)  # no thread: nothing drains
    for n in range(1, 4):
        end, track = vehicle(n)
        c.events([Event("new", end.event_id, "cam", "X", "X", None, None, 0.7, 0, 0, 2, BOX, 0.7)], [track])
        c.events([end], [])
    assert c.dropped == 2
    end, track = vehicle(4, image=np.zeros(0))  # no frame to cut from: dropped too, not raised
    c.events([Event("new", end.event_id, "cam", "X", "X", None, None, 0.7, 0, 0, 2, BOX, 0.7)], [track])
    c.events([end], [])
    assert c.dropped == 3


def load_run_eval_set(folder: Path) -> list[dict] | None:
    """run_eval.py's load_set on ``folder``, or None where the shared evaluation is not beside the checkout."""
    if not RUN_EVAL.is_file():
        return None
    spec = importlib.util.spec_from_file_location("run_eval", RUN_EVAL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load_set(folder, None)


def test_pack_writes_a_labelled_folder_lowest_confidence_first(tmp_path: Path) -> None:
    c = collector(tmp_path)
    for n, conf in ((1, 0.9), (2, 0.4), (3, 0.7)):
        assert save(c, n, confidence=conf)
    folder = tmp_path / "collect"
    (folder / "cam-0009.json").write_text("{not json")
    meta = json.loads((folder / "cam-0003.json").read_text())
    (folder / "cam-0008.json").write_text(json.dumps(meta | {"crop": "cam-0008.crop.jpg"}))  # its crop is missing
    (folder / "cam-0007.json").write_text(json.dumps(meta | {"text": "AB 12"}))
    warnings: list[str] = []
    out = tmp_path / "packed"
    assert pack(folder, out, warnings.append) == 3
    assert len(warnings) == 3
    assert "cam-0009.json: cannot be read as JSON" in warnings[2]
    assert "cam-0008.json: cam-0008.crop.jpg: file not found" in warnings[1]
    assert "cam-0007.json: text: expected A-Z and 0-9 only" in warnings[0]
    lines = (out / "labels.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["file", "text", "x1", "y1", "x2", "y2"]
    rows = [line.split("\t") for line in lines[1:]]
    assert [r[0] for r in rows] == ["cam-0002.jpg", "cam-0003.jpg", "cam-0001.jpg"]
    assert all(len(r) == 6 and r[1] == "AB12CDE" for r in rows)
    region = cv2.imread(str(out / "cam-0002.jpg"))
    x1, y1, x2, y2 = map(int, rows[0][2:])
    assert 0 <= x1 < x2 <= region.shape[1] and region[y1 + 2:y2 - 2, x1 + 2:x2 - 2].mean() > 240
    conf = [line.split("\t") for line in (out / CONFIDENCE).read_text().splitlines()]
    assert tuple(conf[0]) == CONFIDENCE_COLUMNS
    assert [(r[0], r[1], r[2]) for r in conf[1:]] == [("cam-0002.jpg", "0.4000", "crops/cam-0002.jpg"),
                                                      ("cam-0003.jpg", "0.7000", "crops/cam-0003.jpg"),
                                                      ("cam-0001.jpg", "0.9000", "crops/cam-0001.jpg")]
    assert all((out / r[2]).is_file() for r in conf[1:])
    # The folder's readers take it as they take the shared real sets.
    vehicles, ignored = read_labels(out)
    assert [v.label for v in vehicles] == ["AB12CDE"] * 3 and vehicles[0].box == (x1, y1, x2, y2) and not ignored
    shared = load_run_eval_set(out)
    if shared is not None:
        first = shared[0]
        assert (Path(first["path"]).name, first["text"], first["box"]) == \
            ("cam-0002.jpg", "AB12CDE", [float(x1), float(y1), float(x2), float(y2)])


def test_pack_without_frames_lists_the_crops_without_boxes(tmp_path: Path) -> None:
    c = collector(tmp_path, keep_frame=False)
    assert save(c, 1)
    out = tmp_path / "packed"
    assert pack(tmp_path / "collect", out, pytest.fail) == 1
    assert (out / "labels.tsv").read_text() == "file\ttext\ncam-0001.jpg\tAB12CDE\n"
    vehicles, _ = read_labels(out)
    assert vehicles[0].box is None
    shared = load_run_eval_set(out)
    assert shared is None or shared == [{"path": str(out / "cam-0001.jpg"), "text": "AB12CDE"}]


def test_pack_never_overwrites_a_packed_folder_and_the_command(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    c = collector(tmp_path)
    assert save(c, 1)
    out = tmp_path / "packed"
    assert main(["collect", "pack", str(tmp_path / "collect"), str(out)]) == 0
    assert "packed 1 plates" in capsys.readouterr().err
    (out / "labels.tsv").write_text("file\ttext\ncam-0001.jpg\tREVIEWED1\n")  # a review since
    with pytest.raises(PackError, match="already there"):
        pack(tmp_path / "collect", out, print)
    assert main(["collect", "pack", str(tmp_path / "collect"), str(out)]) == 2
    assert "a review is never overwritten" in capsys.readouterr().err
    assert "REVIEWED1" in (out / "labels.tsv").read_text()
    assert main(["collect", "pack", str(tmp_path / "missing"), str(tmp_path / "o2")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["collect", "pack", str(tmp_path / "empty"), str(tmp_path / "o3")]) == 1


def test_config_section(tmp_path: Path) -> None:
    base = {"camera": {"type": "file", "path": "clip.mp4"}, "spool": {"path": "/var/lib/edge-anpr/spool.sqlite"}}
    cfg = parse_config(base, tmp_path)
    assert not cfg.collect.enabled and cfg.collect.keep_frame and cfg.collect.max_confidence is None
    assert cfg.collect.folder == Path("/var/lib/edge-anpr/collect")  # beside the spool by default
    cfg = parse_config(base | {"collect": {"enabled": True, "folder": "plates", "max_mb": 5}}, tmp_path)
    assert cfg.collect.folder == tmp_path / "plates" and cfg.collect.max_mb == 5
    with pytest.raises(ConfigError, match=r"collect\.max_mb: Input should be greater than 0"):
        parse_config(base | {"collect": {"max_mb": 0}}, tmp_path)
    with pytest.raises(ConfigError, match=r"collect\.folders: Extra inputs are not permitted"):
        parse_config(base | {"collect": {"folders": "x"}}, tmp_path)
