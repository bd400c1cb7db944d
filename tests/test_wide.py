"""The 16:9 detector (``detector_wide.tflite``): made by ``trainer widen`` from a set's detector, loaded with the
set, and the model a 16:9 frame goes through."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.detect import Detection, PlateDetector, letterbox
from edge.model import WIDE_DETECTOR, ModelError, file_sha256, load_model_set, read_metadata
from edge.pipeline import Pipeline
from edge.search import SearchSettings
from trainer.data import DETECTOR_INPUT, wide_input
from trainer.export import widen

SHIPPED = Path(__file__).resolve().parents[1] / "edge" / "models"
WIDE_DETECTOR_INPUT = (320, 512)  # the shipped detector's wide input (trainer.data.wide_input, checked below)


def street(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A BGR frame with structure at every scale: grey blocks, edges and plate-like boxes with text."""
    rng = np.random.default_rng(seed)
    frame = np.full((height, width, 3), 100, np.uint8)
    for _ in range(40):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        cv2.rectangle(frame, (x, y), (x + int(rng.integers(20, 300)), y + int(rng.integers(20, 200))),
                      tuple(int(v) for v in rng.integers(0, 256, 3)), -1)
    for _ in range(4):
        x, y = int(rng.integers(0, width - 200)), int(rng.integers(0, height - 50))
        cv2.rectangle(frame, (x, y), (x + 180, y + 44), (235, 235, 235), -1)
        cv2.putText(frame, "AB12CDE", (x + 8, y + 36), cv2.FONT_HERSHEY_SIMPLEX, 1.1, (20, 20, 20), 3)
    return frame


@pytest.fixture(scope="module")
def widened(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("widened") / "set"
    shutil.copytree(SHIPPED, out)
    (out / WIDE_DETECTOR).unlink(missing_ok=True)
    (out / "detector_wide.json").unlink(missing_ok=True)
    h, w = DETECTOR_INPUT
    scenes = np.stack([letterbox(street(1280, 720, seed), w, h)[0] for seed in range(6)])
    return out, widen(out, scenes)


def test_widen_writes_the_detector_network_at_16_9_beside_it(widened: tuple[Path, dict]) -> None:
    models, report = widened
    main, wide = read_metadata(models / "detector.tflite"), read_metadata(models / WIDE_DETECTOR)
    assert (models / "detector.tflite").read_bytes() == (SHIPPED / "detector.tflite").read_bytes()
    assert wide.input.shape == [1, *WIDE_DETECTOR_INPUT, 3]
    assert wide.output.shape == [1, WIDE_DETECTOR_INPUT[0] // 4, WIDE_DETECTOR_INPUT[1] // 4, 1]
    assert wide.macs * DETECTOR_INPUT[0] == main.macs * WIDE_DETECTOR_INPUT[0]  # the same work a row
    assert wide.detector is not None and wide.detector.wide_of == main.sha256 == file_sha256(models / "detector.tflite")
    # The same int8 model: its input and output quantization are the detector's, not calibrated anew.
    assert (wide.input.scale, wide.input.zero_point) == (main.input.scale, main.input.zero_point)
    assert (wide.output.scale, wide.output.zero_point) == (main.output.scale, main.output.zero_point)
    assert report["agreement"]["samples"] == 6 and report["agreement"]["match_above_bottom_edge"] >= 0.99


def test_the_wide_input_holds_a_16_9_frame_and_one_coarse_cell_below_it() -> None:
    assert wide_input(*DETECTOR_INPUT) == WIDE_DETECTOR_INPUT == (288 + 32, 512)
    assert wide_input(384, 640) is None  # 360 + 32 rows, in whole cells 416: no fewer than its own 384
    assert wide_input(480, 640) == (416, 640)
    assert wide_input(280, 512) is None  # a detector already wider than 16:10 has no wide form


def test_a_16_9_frame_gets_the_same_mask_from_either_detector(widened: tuple[Path, dict]) -> None:
    models, _ = widened
    loaded = load_model_set(models, 1)
    assert loaded.wide is not None
    frame = street(1280, 720, seed=11)
    main_in, _ = letterbox(frame, *DETECTOR_INPUT[::-1])
    wide_in, _ = letterbox(frame, *WIDE_DETECTOR_INPUT[::-1])
    rows = 48  # the frame's top two thirds (72 cells): where the inputs differ, below it, is far
    a = loaded.detector.run_pixels(main_in)[:rows, :, 0]
    b = loaded.wide.run_pixels(wide_in)[:rows, :, 0]
    assert float(np.abs(a - b).mean()) < 0.01
    assert float(((a >= 0.5) == (b >= 0.5)).mean()) >= 0.99


def test_each_frame_goes_through_the_cheaper_model_that_sees_it_as_large(widened: tuple[Path, dict]) -> None:
    models, _ = widened
    loaded = load_model_set(models, 1)
    detector = PlateDetector(loaded.detector, loaded.wide)
    for size in ((1280, 720), (1920, 1080), (854, 480), (1280, 800), (4000, 1000)):
        assert detector.model_for(size) is loaded.wide, size
    for size in ((640, 480), (1500, 1000), (1080, 1920), (1000, 1000)):
        assert detector.model_for(size) is loaded.detector, size
    # Only the whole frame goes through the wide input: tiles and zoomed windows are cut at the main input's shape,
    # so a frame's search looks where it would without a wide detector.
    wide_frame, square_frame = street(1280, 720), street(640, 480)
    assert detector.prepare(wide_frame)[0].shape == (*WIDE_DETECTOR_INPUT, 3)
    assert detector.prepare(square_frame)[0].shape == (*DETECTOR_INPUT, 3)
    assert detector.window(wide_frame, (640, 360), 600)[0].shape == (*DETECTOR_INPUT, 3)
    assert detector.window(square_frame, (320, 240), 300)[0].shape == (*DETECTOR_INPUT, 3)
    alone = PlateDetector(loaded.detector)
    assert detector.tile_windows((1280, 720), 2) == alone.tile_windows((1280, 720), 2)
    (centre, width), *_ = detector.tile_windows((1280, 720), 2)
    assert centre[1] == pytest.approx(width * DETECTOR_INPUT[0] / DETECTOR_INPUT[1] / 2)
    # Whether a zoomed look helps depends on the whole frame's scale, the same through either input.
    small = Detection(np.zeros((4, 2), np.float32), (600.0, 400.0, 660.0, 430.0), 0.9)
    large = Detection(np.zeros((4, 2), np.float32), (400.0, 300.0, 700.0, 450.0), 0.9)
    for det in (small, large):
        assert detector.zoom_helps(wide_frame, det) == alone.zoom_helps(wide_frame, det)
    assert detector.zoom_helps(wide_frame, small) and not detector.zoom_helps(wide_frame, large)


def test_the_pipeline_counts_the_macs_of_the_models_a_frame_went_through(widened: tuple[Path, dict]) -> None:
    models, _ = widened
    pipe = Pipeline.from_dir(models, num_threads=1, search=SearchSettings(sure=1.01))  # never stop before the tiles
    wide = read_metadata(models / WIDE_DETECTOR)
    main = read_metadata(models / "detector.tflite")
    reader = read_metadata(models / "reader.tflite")
    for frame, whole_macs in ((street(1280, 720, 3), wide.macs), (street(640, 480, 3), main.macs)):
        counts = pipe.run(frame).counts
        assert counts.detector_runs >= 5  # the whole frame and its four tiles
        assert counts.macs == whole_macs + (counts.detector_runs - 1) * main.macs + counts.reader_runs * reader.macs


def test_a_wide_detector_made_from_another_detector_is_refused(widened: tuple[Path, dict], tmp_path: Path) -> None:
    models, _ = widened
    stale = tmp_path / "set"
    shutil.copytree(models, stale)
    meta = json.loads((stale / "detector_wide.json").read_text())
    meta["detector"]["wide_of"] = "0" * 64
    (stale / "detector_wide.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"detector_wide\.tflite: made from another detector .*trainer widen"):
        load_model_set(stale, 1)
    # Without the wide file the set is the main detector alone, as before there was one.
    (stale / WIDE_DETECTOR).unlink()
    assert load_model_set(stale, 1).wide is None


def test_a_written_model_set_carries_the_wide_detector_of_its_detector(widened: tuple[Path, dict],
                                                                        tmp_path: Path) -> None:
    from trainer.finetune import write_model_set

    models, _ = widened
    out = tmp_path / "out"
    write_model_set(out, models / "detector.tflite", models / "reader.tflite", card="card", note="tuned")
    assert (out / WIDE_DETECTOR).read_bytes() == (models / WIDE_DETECTOR).read_bytes()
    assert load_model_set(out, 1).wide is not None
    # Written again from a detector without one, the set must not keep the old wide detector beside the new one.
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("detector.tflite", "detector.json"):
        shutil.copyfile(SHIPPED / name, bare / name)
    write_model_set(out, bare / "detector.tflite", models / "reader.tflite", card="card", note="tuned")
    assert not (out / WIDE_DETECTOR).exists() and not (out / "detector_wide.json").exists()
    assert load_model_set(out, 1).wide is None
