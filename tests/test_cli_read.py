"""The `python -m edge read --json` contract (README, 'Reading plates'), run as a user runs it."""
from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np

from conftest import run_edge
from edge.formats import COUNTRIES_DIR
from edge.images import MAX_IMAGE_PIXELS
from edge.model import DEFAULT_MODELS
from test_images import zero_png


def _images(tmp_path: Path) -> tuple[Path, Path, Path]:
    good = tmp_path / "frame.jpg"
    cv2.imwrite(str(good), np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    return good, truncated, tmp_path / "missing.jpg"


def test_one_json_object_per_image_with_errors_inline(untrained_models: Path, tmp_path: Path) -> None:
    good, truncated, missing = _images(tmp_path)
    proc = run_edge("read", "--json", "--models", str(untrained_models), str(good), str(truncated), str(missing))
    assert proc.returncode == 0, proc.stderr
    objs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["image"] for o in objs] == [str(good), str(truncated), str(missing)]
    assert "error" not in objs[0] and isinstance(objs[0]["plates"], list)
    assert isinstance(objs[0]["latency_ms"], float) and objs[0]["latency_ms"] > 0
    for plate in objs[0]["plates"]:
        assert set(plate) >= {"text", "confidence", "box"}
        assert plate["text"] == "".join(c for c in plate["text"] if c.isalnum() and (c.isdigit() or c.isupper()))
        x1, y1, x2, y2 = plate["box"]
        assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 480
    assert "truncated" in objs[1]["error"]["message"] or "decodable" in objs[1]["error"]["message"]
    assert objs[2]["error"]["message"] == f"{missing}: file not found"
    assert objs[1]["plates"] == [] and objs[2]["plates"] == []
    assert "read 1 of 3 images" in proc.stderr


def test_an_oversized_image_gets_an_error_object_and_the_batch_goes_on(untrained_models: Path,
                                                                      tmp_path: Path) -> None:
    """A 30000x30000 PNG of under 3 MB is refused from its header; decoded, it would take 2.7 GB."""
    good, _, _ = _images(tmp_path)
    big = tmp_path / "big.png"
    big.write_bytes(zero_png(30000, 30000))
    other = tmp_path / "other.png"
    cv2.imwrite(str(other), np.full((360, 640, 3), 90, np.uint8))
    proc = run_edge("read", "--json", "--models", str(untrained_models), str(good), str(big), str(other))
    assert proc.returncode == 0, proc.stderr
    objs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["image"] for o in objs] == [str(good), str(big), str(other)]
    assert "error" not in objs[0] and "error" not in objs[2]
    assert objs[1]["plates"] == [] and objs[1]["error"] == {
        "type": "unreadable",
        "message": f"{big}: too large to decode: 30000x30000 pixels (900.0 Mpx), more than the "
                   f"{MAX_IMAGE_PIXELS / 1e6:g} Mpx an image may have"}
    assert "read 2 of 3 images" in proc.stderr and "1 unreadable" in proc.stderr


def test_exit_code_is_nonzero_only_when_nothing_was_read(untrained_models: Path, tmp_path: Path) -> None:
    _, truncated, missing = _images(tmp_path)
    proc = run_edge("read", "--json", "--models", str(untrained_models), str(truncated), str(missing))
    assert proc.returncode == 1
    assert len(proc.stdout.splitlines()) == 2


def test_broken_model_set_is_a_clear_error(tmp_path: Path) -> None:
    good, _, _ = _images(tmp_path)
    proc = run_edge("read", "--models", str(tmp_path / "nope"), str(good))
    assert proc.returncode == 3
    assert "nope: model directory not found" in proc.stderr


def test_read_as_video_keeps_each_plates_surest_read_across_a_turn_of_tiles() -> None:
    """Surest by the one confidence of a read (geometric mean of its characters) times the detector's score."""
    from edge.detect import Detection
    from edge.formats import read_confidence
    from edge.pipeline import FrameReads, PlateRead, SearchCounts, read_as_video
    from edge.search import SearchSettings

    def plate(text: str, box: tuple, chars: tuple) -> PlateRead:
        x1, y1, x2, y2 = box
        det = Detection(np.float32([[x1, y1], [x2, y1], [x2, y2], [x1, y2]]), box, 0.9)
        return PlateRead(text, text, None, None, read_confidence(chars), det, chars)

    class _Frames:
        """Stand-in pipeline: a plate read badly, then well, then a part of it less surely; another plate once."""

        search = SearchSettings(tiles=2, tiles_per_frame=1)

        def __init__(self) -> None:
            self.frames = [[plate("AB12CD", (100, 100, 200, 140), (0.9, 0.4, 0.9, 0.9, 0.9, 0.9))],
                           [plate("AB12CDE", (102, 101, 201, 141), (0.95,) * 7)],
                           [plate("CDE", (160, 100, 200, 140), (0.9,) * 3),
                            plate("XY51ABC", (400, 300, 480, 330), (0.8,) * 7)],
                           []]
            self.numbers: list[int | None] = []

        @property
        def detector(self):
            return self

        def tile_windows(self, frame_wh, columns):
            return [None] * 4

        def run(self, image, frame=None):
            self.numbers.append(frame)
            return FrameReads(self.frames[frame], SearchCounts(detector_runs=2, reader_runs=1, macs=10))

    pipe = _Frames()
    reads, shown, spent = read_as_video(pipe, np.zeros((720, 1280, 3), np.uint8), 0)
    assert shown == 4 and pipe.numbers == [0, 1, 2, 3]  # one full turn of the 4 tiles, one a frame, numbered
    assert sorted(r.text for r in reads) == ["AB12CDE", "XY51ABC"]
    assert (spent.detector_runs, spent.reader_runs, spent.macs) == (8, 4, 40)


def test_read_reports_what_the_search_spent_and_takes_a_daemon_configs_detection(tmp_path: Path) -> None:
    good, _, _ = _images(tmp_path)
    proc = run_edge("read", "--json", str(good))
    assert proc.returncode == 0, proc.stderr
    spent = json.loads(proc.stdout.splitlines()[0])["search"]
    assert spent["detector_runs"] >= 1 and spent["macs"] > 0
    # A config with tiles off and no zoomed looks: the whole frame alone, one detector run.
    cfg = tmp_path / "cam.yaml"
    cfg.write_text("camera: {type: file, path: x.mp4}\ndetection: {tiles: 0, refine: 0}\n")
    proc = run_edge("read", "--json", "--config", str(cfg), str(good))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[0])["search"]["detector_runs"] == 1
    # --models overrides the config's models (a device config names the device's folder).
    cfg.write_text("camera: {type: file, path: x.mp4}\ndetection: {models: /nonexistent, tiles: 0, refine: 0}\n")
    assert run_edge("read", "--config", str(cfg), str(good)).returncode == 3
    proc = run_edge("read", "--json", "--config", str(cfg), "--models", str(DEFAULT_MODELS), str(good))
    assert proc.returncode == 0, proc.stderr
    # A flag overrides the config; a combination the settings refuse names its flag.
    proc = run_edge("read", "--config", str(cfg), "--tiles", "2", "--tiles-per-frame", "0", str(good))
    assert proc.returncode == 2 and "set tiles_per_frame to 1 or more" in proc.stderr


def test_formats_lists_one_line_per_country_of_the_model_set(untrained_models: Path, tmp_path: Path) -> None:
    proc = run_edge("formats", "--models", str(untrained_models))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) >= 30
    codes = [line.split()[0] for line in lines]
    assert codes == sorted(codes) and all(len(c) == 2 and c.isupper() for c in codes)
    assert any(line.startswith("BR  Brazil: ") and "br_mercosur LLL DLDD" in line for line in lines)
    # A group every plate draws from a list shows the list's first words and their count.
    proc = run_edge("formats", "--models", str(untrained_models), "--countries", str(COUNTRIES_DIR))
    assert "HR  Croatia: hr (BJ|CK|DA|... 32 listed) D{3,4}-S{1,2}" in proc.stdout.splitlines()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "zz.yaml").write_text("code: ZZ\nname: Zedland\nweight: 1\nformats: [{name: zz, groups: [LLQ]}]\n")
    proc = run_edge("formats", "--models", str(untrained_models), "--countries", str(bad))
    assert proc.returncode == 2 and "zz.yaml" in proc.stderr and "class 'Q' is not defined" in proc.stderr


def test_formats_states_the_prior_a_fine_tuned_reader_carries(untrained_models: Path, tmp_path: Path) -> None:
    import shutil

    from edge.formats import FormatSet

    models = tmp_path / "tuned"
    shutil.copytree(untrained_models, models)
    meta = json.loads((models / "reader.json").read_text())
    formats = FormatSet.from_meta(meta["reader"]["formats"])
    meta["reader"]["formats"] = formats.with_prior(
        formats.learn_prior(["IEB2949", "MIB5482", "YHK9499", "ZG1746AC"], "labels.tsv")).to_meta()
    (models / "reader.json").write_text(json.dumps(meta))
    proc = run_edge("formats", "--models", str(models))
    assert proc.returncode == 0, proc.stderr
    # The three Greek plates and the Croatian one: their own formats lead (not the broad ones they also fit).
    assert re.search(r"format prior, learnt from 4 plates \(labels\.tsv\): gr 6\d\.\d %, hr [12]\d\.\d %", proc.stderr)
    assert "format prior" not in run_edge("formats", "--models", str(untrained_models)).stderr
    # A prior naming a format the reader does not carry is refused, naming the file.
    meta["reader"]["formats"]["prior"]["shares"]["zz_gone"] = 0.1
    (models / "reader.json").write_text(json.dumps(meta))
    proc = run_edge("read", "--models", str(models), str(tmp_path))
    assert proc.returncode != 0 and "reader.json: formats.prior names formats" in proc.stderr


def test_read_help_names_every_key_of_a_plate() -> None:
    from edge.detect import Detection
    from edge.pipeline import PlateRead

    quad = np.zeros((4, 2), np.float32)
    keys = PlateRead("AB123", "AB 123", None, None, 0.9, Detection(quad, (0, 0, 1, 1), 0.8)).as_json()
    out = run_edge("read", "--help")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    for key in keys:
        assert f'"{key}"' in text, key


def test_workers_follow_the_cores_the_threads_and_the_accelerator() -> None:
    from edge.__main__ import MAX_AUTO_WORKERS, plan_workers

    assert plan_workers(40, 0, None, "cpu", cores=2) == (2, 1)  # one image per core, a thread each
    assert plan_workers(40, 0, None, "cpu", cores=64) == (MAX_AUTO_WORKERS, 16)
    assert plan_workers(1, 0, None, "cpu", cores=8) == (1, 2)  # one image: one search, the daemon's 2 threads
    assert plan_workers(40, 0, 2, "cpu", cores=2) == (1, 2)  # threads given (a --config's): as many as fit
    assert plan_workers(40, 0, 2, "cpu", cores=8) == (4, 2)
    assert plan_workers(40, 0, None, "edgetpu", cores=8) == (1, 2)  # one Coral, one interpreter at a time
    assert plan_workers(3, 8, 1, "cpu", cores=2) == (3, 1)  # asked for: as many as there are images


def test_several_workers_give_each_image_the_answer_one_gives_in_the_order_given(tmp_path: Path) -> None:
    """The same shipped models searching two images at once: the same plates, boxes and counts per image, in
    the order of the command line, errors inline."""
    from conftest import ROOT

    scenes = sorted((ROOT / "demo").glob("scene_*.jpg"))
    assert len(scenes) >= 4
    paths = [str(p) for p in scenes] + [str(tmp_path / "missing.jpg")] + [str(scenes[0])]
    runs = {}
    for workers in ("1", "2"):
        proc = run_edge("read", "--json", "--models", str(DEFAULT_MODELS), "--workers", workers, *paths)
        assert proc.returncode == 0, proc.stderr
        assert f"({workers} at once," in proc.stderr
        objs = [json.loads(line) for line in proc.stdout.splitlines()]
        assert [o["image"] for o in objs] == paths
        runs[workers] = [(o["plates"], o.get("search"), o.get("error")) for o in objs]
    assert runs["1"] == runs["2"]
    assert any(plates for plates, _, _ in runs["2"]) and runs["2"][-2][2]["type"] == "unreadable"
    assert runs["2"][-1] == runs["2"][0]


def test_a_negative_worker_count_is_a_usage_error(tmp_path: Path) -> None:
    good, _, _ = _images(tmp_path)
    proc = run_edge("read", "--workers", "-2", str(good))
    assert proc.returncode == 2 and "--workers -2" in proc.stderr


def test_an_image_whose_search_fails_gets_an_error_object_and_the_batch_goes_on(tmp_path: Path) -> None:
    """Whatever a search raises on one image (a bug, a runtime's error) is that image's error; the others are read."""
    from edge.__main__ import read_images
    from edge.pipeline import FrameReads, SearchCounts

    class _Pipeline:  # fails on the frame of one size only
        def run(self, image: np.ndarray) -> FrameReads:
            if image.shape[0] == 99:
                raise RuntimeError("tensor arena exhausted")
            return FrameReads([], SearchCounts(detector_runs=1))

    paths = []
    for i, height in enumerate((120, 99, 120)):
        paths.append(str(tmp_path / f"f{i}.png"))
        cv2.imwrite(paths[-1], np.zeros((height, 160, 3), np.uint8))
    objs = list(read_images([_Pipeline(), _Pipeline()], paths))
    assert [o["image"] for o in objs] == paths
    assert objs[1]["plates"] == [] and objs[1]["error"] == {
        "type": "failed", "message": f"{paths[1]}: search failed (RuntimeError: tensor arena exhausted)"}
    assert "error" not in objs[0] and "error" not in objs[2] and objs[2]["search"]["detector_runs"] == 1
