"""``python -m edge.vehicle_eval``: labelled folder -> camera clip -> the real daemon -> per-vehicle outcomes."""
from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.mosquitto import find_mosquitto
from edge.vehicle_eval import (
    GREY,
    LabelError,
    Layout,
    Shown,
    Vehicle,
    align,
    build_clip,
    clip_start,
    main,
    read_labels,
    schedule,
    score,
)

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000.0  # the daemon's clip clock start in the hand-made events


def _car(text: str, size: tuple[int, int], seed: int) -> np.ndarray:
    """A synthetic 'car photo': noise, a dark body and a white plate with text (readable or not)."""
    w, h = size
    rng = np.random.default_rng(seed)
    img = rng.integers(40, 200, (h, w, 3), np.uint8)
    cv2.rectangle(img, (w // 6, h // 4), (5 * w // 6, 5 * h // 6), (60, 30, 20), -1)
    pw, ph = w // 3, w // 14
    x, y = (w - pw) // 2, 2 * h // 3 - ph // 2
    cv2.rectangle(img, (x, y), (x + pw, y + ph), (235, 235, 235), -1)
    cv2.putText(img, text, (x + pw // 12, y + 4 * ph // 5), cv2.FONT_HERSHEY_SIMPLEX, ph / 32, (10, 10, 10), 2)
    return img


def _folder(tmp_path: Path, texts: list[str], sizes: list[tuple[int, int]] | None = None) -> Path:
    folder = tmp_path / "set"
    folder.mkdir()
    rows = ["file\ttext\tx1\ty1\tx2\ty2"]
    for i, text in enumerate(texts):
        size = (sizes or [(800, 600)] * len(texts))[i]
        cv2.imwrite(str(folder / f"car{i}.jpg"), _car(text, size, i))
        rows.append(f"car{i}.jpg\t{text}\t1\t2\t3\t4")
    (folder / "labels.tsv").write_text("\n".join(rows) + "\n")
    return folder


# ---------------------------------------------------------------- labels

def test_labels_first_row_per_file_and_normalised(tmp_path: Path) -> None:
    folder = _folder(tmp_path, ["AB12CDE", "ZG 1234-ab"])
    with open(folder / "labels.tsv", "a") as f:
        f.write("car0.jpg\tOTHER\n")
    vehicles, ignored = read_labels(folder)
    assert [(v.file, v.label, v.line) for v in vehicles] == [("car0.jpg", "AB12CDE", 2), ("car1.jpg", "ZG1234AB", 3)]
    assert ignored == 1 and vehicles[0].box == (1.0, 2.0, 3.0, 4.0)


@pytest.mark.parametrize("row, problem", [
    ("missing.jpg\tAB12CDE", "missing.jpg: image file not found"),
    ("car0.jpg", "expected file<TAB>text"),
    ("car0.jpg\tAB1\t1\t2", "got 4 fields"),
    ("car0.jpg\t--", "has no A-Z or 0-9"),
    ("car0.jpg\tAB1\t1\t2\tx\t4", "is not four numbers"),
])
def test_bad_rows_name_file_and_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture, row: str,
                                                problem: str) -> None:
    folder = _folder(tmp_path, ["AB12CDE"])
    with open(folder / "labels.tsv", "a") as f:
        f.write(row + "\n")
    with pytest.raises(LabelError, match=f"labels.tsv:3: .*{problem}"):
        read_labels(folder)
    assert main(["--set", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "labels.tsv:3" in err and problem in err


def test_missing_labels_and_undecodable_image(tmp_path: Path) -> None:
    with pytest.raises(LabelError, match=r"no labels\.tsv"):
        read_labels(tmp_path)
    folder = _folder(tmp_path, ["AB12CDE"])
    (folder / "car0.jpg").write_bytes(b"not a jpeg")
    vehicles, _ = read_labels(folder)
    with pytest.raises(LabelError, match=r"labels.tsv:2: .*car0.jpg: not a decodable image"):
        build_clip(vehicles, tmp_path / "clip.avi")


# ---------------------------------------------------------------- the clip

def test_clip_frames_duration_windows_and_grey(tmp_path: Path) -> None:
    # A tall, a wide and a small photo: all letterboxed into 1280x720.
    folder = _folder(tmp_path, ["AB12CDE", "XY34FGH", "KL56MNP"], [(600, 900), (1600, 600), (320, 240)])
    vehicles, _ = read_labels(folder)
    clip = tmp_path / "clip.avi"
    layout = build_clip(vehicles, clip, fps=10, hold_s=1.0, gap_s=2.0, seed=3)
    assert (layout.hold_frames, layout.gap_frames, layout.n_frames, layout.duration_s) == (10, 20, 90, 9.0)
    assert [(s.file, s.label, s.first_frame, s.start_s, s.end_s) for s in layout.shown] == [
        ("car0.jpg", "AB12CDE", 0, 0.0, 1.0), ("car1.jpg", "XY34FGH", 30, 3.0, 4.0),
        ("car2.jpg", "KL56MNP", 60, 6.0, 7.0)]
    assert [layout.vehicle_at(f) for f in (0, 9, 10, 29, 30, 39, 40, 69, 70, 89, 90, -1)] == [
        0, 0, None, None, 1, 1, None, 2, None, None, None, None]

    cap = cv2.VideoCapture(str(clip), cv2.CAP_FFMPEG)  # as edge.sources.FileSource opens it
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 90 and cap.get(cv2.CAP_PROP_FPS) == 10
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == 90 and frames[0].shape == (720, 1280, 3)
    for i, f in enumerate(frames):
        shown = layout.vehicle_at(i) is not None
        assert (f.std() > 20) == shown, i  # a photo, or plain grey
        if not shown:  # written as 128; the codec's YUV round trip gives back about (123, 126, 124)
            assert abs(float(f.mean()) - GREY) < 6 and f.std() < 3
    # The tall photo's grey side bars; the zoom (1.06 at the last held frame) narrows them a little.
    assert abs(float(frames[0][:, :150].mean()) - GREY) < 6 and abs(float(frames[9][:, :150].mean()) - GREY) < 6
    assert not np.array_equal(frames[0], frames[1])  # zoom and jitter: no two held frames alike


def test_repeated_labels_are_spaced_beyond_the_reappear_window() -> None:
    vs = [Vehicle(f"{i}.jpg", label, i + 2, Path(f"{i}.jpg")) for i, label in enumerate("AABCDEFG")]
    # Window 6 s, shown 1 s of every 3 s: the second A must come 3 slots later (9 s - 0.9 s > 6 s).
    layout = schedule(vs, fps=10, hold_s=1, gap_s=2, reappear_window_s=6)
    order = [s.file for s in layout.shown]
    assert order[0] == "0.jpg" and order.index("1.jpg") == 3 and sorted(order) == sorted(v.file for v in vs)
    assert not any(s.close_repeat for s in layout.shown)
    # Too few other vehicles to space them: shown anyway, flagged.
    layout = schedule(vs[:3], fps=10, hold_s=1, gap_s=2, reappear_window_s=6)
    assert [s.close_repeat for s in layout.shown] == [False, False, True]
    assert [s.file for s in schedule(vs, 10, 1, 2).shown] == [v.file for v in vs]  # no window: label order


# ---------------------------------------------------------------- scoring

def _layout(labels: list[str]) -> Layout:
    layout = Layout(fps=10, hold_frames=10, gap_frames=20)
    layout.shown = [Shown(i, f"{i}.jpg", lab, i + 2, 30 * i, 3.0 * i, 3.0 * i + 1) for i, lab in enumerate(labels)]
    return layout


def iso_utc(ts: float) -> str:
    """The events' stamp form: ISO 8601 UTC, milliseconds, Z."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ev(kind: str, eid: str, text: str, frame: int, t0: float = T0) -> dict:
    return {"type": kind, "id": eid, "text": text, "first_seen": iso_utc(t0 + frame / 10),
            "last_seen": iso_utc(t0 + frame / 10 + 0.5)}


def test_score_outcomes_extra_and_lost() -> None:
    layout = _layout(["AAA111", "BBB222", "CCC333", "DDD444"])
    events = [
        _ev("new", "a", "AAA111", 0), _ev("end", "a", "AAA111", 0),          # right, on its first frame
        _ev("new", "a", "AAA111", 0),                                        # a re-delivery: counts once
        _ev("new", "b1", "BBB22", 31), _ev("end", "b1", "BBB222", 31),       # wrong (the end's vote is right)
        _ev("new", "b2", "BBB222", 35), _ev("end", "b2", "BBB222", 35),      # extra: a second new for vehicle 1
        _ev("new", "g", "ZZZ999", 15), _ev("end", "g", "ZZZ999", 15),        # extra: in a grey gap
        _ev("new", "d", "DDD444", 99),                                       # right, but its end was lost
        _ev("end", "x", "QQQ000", 69),                                       # lost: an end without new
    ]
    r = score(layout, events, T0)
    assert [row["outcome"] for row in r["rows"]] == ["right", "wrong", "missed", "right"]
    assert (r["right"], r["wrong"], r["missed"], r["right_pct"], r["missed_pct"]) == (2, 1, 1, 50.0, 25.0)
    assert r["rows"][1]["new_texts"] == ["BBB22", "BBB222"] and r["rows"][1]["end_texts"] == ["BBB222", "BBB222"]
    assert r["extra"] == 2 and sorted(e["why"] for e in r["extra_events"]) == ["gap", "repeat"]
    assert r["lost"] == 2 and sorted(e["why"] for e in r["lost_events"]) == ["end without new", "new without end"]
    assert r["events_new"] == 5 and r["events_end"] == 5


def test_score_without_events_all_missed() -> None:
    r = score(_layout(["AAA111", "BBB222"]), [], T0)
    assert (r["missed"], r["missed_pct"], r["extra"], r["lost"]) == (2, 100.0, 0, 0)


def test_alignment_from_the_daemon_log_time() -> None:
    layout = _layout(["AAA111", "BBB222", "CCC333"])
    events = [_ev("new", "a", "AAA111", 0), _ev("new", "b", "BBB222", 34), _ev("new", "c", "CCC333", 60)]
    # The log line 40 ms after the source opened: t0 found exactly, though the first event is no t0 itself.
    assert clip_start(events[1:], T0 + 0.04, 10) == pytest.approx(T0, abs=2e-3)
    assert align(layout, events, T0 + 0.04) == (pytest.approx(T0, abs=2e-3), 0)
    # 250 ms late (a slow disk): t0 moved back 2 frames, the fewest that put no event in a gap.
    t0, shift = align(layout, events, T0 + 0.25)
    assert shift == 2 and t0 == pytest.approx(T0, abs=2e-3)
    assert [row["outcome"] for row in score(layout, events, t0)["rows"]] == ["right"] * 3


# ---------------------------------------------------------------- end to end

@pytest.mark.skipif(find_mosquitto() is None,
                    reason="mosquitto is not installed (apt-get install mosquitto)")
def test_command_end_to_end_with_the_shipped_models(tmp_path: Path) -> None:
    folder = _folder(tmp_path, ["AB12CDE", "XY34FGH"], [(1280, 720), (640, 480)])
    out, keep = tmp_path / "result.json", tmp_path / "keep"
    proc = subprocess.run([sys.executable, "-m", "edge.vehicle_eval", "--set", str(folder), "--out", str(out),
                           "--keep", str(keep), "--timeout-s", "120"], cwd=ROOT, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "| set | vehicles | right new % |" in proc.stdout and "| set | 2 |" in proc.stdout
    assert "daemon running" in proc.stderr and "building clip" in proc.stderr
    result = json.loads(out.read_text())
    (s,) = result["sets"]
    assert s["vehicles"] == 2 and s["daemon_exit"] == 0 and s["frames"] == 60
    assert [r["file"] for r in s["rows"]] == ["car0.jpg", "car1.jpg"]
    assert all(r["outcome"] in {"right", "wrong", "missed"} for r in s["rows"])
    assert s["right"] + s["wrong"] + s["missed"] == 2
    assert {p.name for p in keep.iterdir()} >= {"set.avi", "set.daemon.log", "set.truth.json", "set.config.yaml"}
