"""The detection search (edge.search settings, carried out by Pipeline.run): where passes go, and what they cost."""
from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from edge.config import DetectionConfig
from edge.detect import Detection, PlateDetector
from edge.formats import PlateText
from edge.pipeline import REREAD_SHIFTS, Pipeline
from edge.search import SearchSettings

DET_MACS, READER_MACS = 1000, 10


class _Eye(PlateDetector):
    """A detector that sees one frame rectangle perfectly, but only where it is ``min_px`` input pixels wide."""

    def __init__(self, quad: np.ndarray, min_px: float = 0.0) -> None:  # no model: only the search is under test
        self.width, self.height, self.stride, self.threshold, self.min_cells = 512, 384, 4, 0.5, 3
        self.model, self.wide = SimpleNamespace(meta=SimpleNamespace(macs=DET_MACS)), None
        self.quad, self.min_px, self.lb, self.runs, self.centres = quad, min_px, None, 0, []

    def prepare(self, image):
        pixels, self.lb = super().prepare(image)
        return pixels, self.lb

    def window(self, image, centre, width):
        self.centres.append(centre)
        pixels, self.lb = super().window(image, centre, width)
        return pixels, self.lb

    def probabilities(self, pixels):
        self.runs += 1
        q = (self.quad - np.float32(self.lb.offset)) * self.lb.scale
        out = np.zeros((self.height // 4, self.width // 4), np.float32)
        if q[1, 0] - q[0, 0] < self.min_px:
            return out
        cv2.fillPoly(out, [np.round(q / 4).astype(np.int32)], 1.0)
        return out


class _Reader:
    """Reads the plate with a given per-character probability wherever a crop holds most of it."""

    def __init__(self, quad: np.ndarray, prob: float, text: str = "AB12CDE") -> None:
        self.quad, self.prob, self.text, self.crops = quad, prob, text, 0
        self.model = SimpleNamespace(meta=SimpleNamespace(macs=READER_MACS))
        self.formats = None

    def crop(self, image, quad):
        self.crops += 1
        return np.asarray(quad, np.float32)

    def read_crop(self, quad) -> PlateText:
        x1, y1 = np.maximum(quad.min(axis=0), self.quad.min(axis=0))
        x2, y2 = np.minimum(quad.max(axis=0), self.quad.max(axis=0))
        plate_area = np.prod(self.quad.max(axis=0) - self.quad.min(axis=0))
        if max(0, x2 - x1) * max(0, y2 - y1) < 0.6 * plate_area:
            return PlateText("", None, None, (), "")
        return PlateText(self.text, "gb_current", "GB", (self.prob,) * len(self.text), self.text)


LARGE = np.float32([[500, 400], [760, 400], [760, 460], [500, 460]])  # 104 px wide in the whole frame's input
SMALL = np.float32([[300, 200], [360, 200], [360, 230], [300, 230]])  # 24 px wide there
FRAME = np.zeros((720, 1280, 3), np.uint8)


def test_a_sure_read_of_the_whole_frame_ends_the_search() -> None:
    det, reader = _Eye(LARGE), _Reader(LARGE, 0.99)
    result = Pipeline(det, reader).run(FRAME)
    assert [r.text for r in result.reads] == ["AB12CDE"]
    assert result.counts.detector_runs == det.runs == 1 and det.centres == []  # no zoom, no tiles
    assert result.counts.stopped_early
    assert result.counts.macs == DET_MACS + READER_MACS * result.counts.reader_runs


def test_a_frames_answer_holds_every_box_the_reader_read_once_with_its_read() -> None:
    det, reader = _Eye(LARGE), _Reader(LARGE, 0.8)
    result = Pipeline(det, reader).run(FRAME)
    assert len(result.read_boxes) == result.counts.reader_runs == reader.crops > 1
    keys = [q.tobytes() for q, _ in result.read_boxes]
    assert len(set(keys)) == len(keys)
    plate = result.reads[0]
    assert any(np.array_equal(q, plate.detection.quad) and r.text == plate.text for q, r in result.read_boxes)
    # Reads that stand for no plate are kept too.
    doubtful = Pipeline(_Eye(LARGE), _Reader(LARGE, 0.3)).run(FRAME)
    assert doubtful.reads == [] and doubtful.read_boxes
    assert {r.text for _, r in doubtful.read_boxes} == {"AB12CDE"}


def test_a_doubtful_read_brings_a_zoomed_look_and_every_tile_on_a_still() -> None:
    det, reader = _Eye(LARGE), _Reader(LARGE, 0.8)  # a format fit, but below `sure`
    result = Pipeline(det, reader).run(FRAME)
    assert [r.text for r in result.reads] == ["AB12CDE"]
    assert len(det.centres) >= 4 + 1  # a zoomed look, then the 4 tiles of a 16:9 frame
    assert not result.counts.stopped_early
    assert result.counts.detector_runs == det.runs
    assert result.counts.macs == DET_MACS * det.runs + READER_MACS * result.counts.reader_runs
    # A box is read once however many passes found it.
    assert result.counts.reader_runs == reader.crops


def test_tiles_find_a_plate_too_small_for_the_whole_frame() -> None:
    det = _Eye(SMALL, min_px=30)
    assert det.look(FRAME) == []
    reads = Pipeline(det, _Reader(SMALL, 0.99)).run(FRAME).reads
    assert [r.text for r in reads] == ["AB12CDE"]
    np.testing.assert_allclose(reads[0].detection.box, SMALL.reshape(-1)[[0, 1, 4, 5]], atol=6.0)
    assert Pipeline(_Eye(SMALL, min_px=30), _Reader(SMALL, 0.99), SearchSettings(tiles=0)).run(FRAME).reads == []


def test_a_sure_read_after_a_tile_ends_the_search_there() -> None:
    tiles = [centre for centre, _ in _Eye(SMALL).tile_windows((1280, 720), 2)]
    det = _Eye(SMALL, min_px=30)  # the first tile (top left) holds the plate
    result = Pipeline(det, _Reader(SMALL, 0.99)).run(FRAME)
    assert [r.text for r in result.reads] == ["AB12CDE"]
    assert [c for c in det.centres if c in tiles] == tiles[:1]
    assert result.counts.stopped_early and result.counts.detector_runs == det.runs
    # Read with doubt, the plate leaves every tile to be looked at.
    det = _Eye(SMALL, min_px=30)
    result = Pipeline(det, _Reader(SMALL, 0.8)).run(FRAME)
    assert [r.text for r in result.reads] == ["AB12CDE"]
    assert [c for c in det.centres if c in tiles] == tiles
    assert not result.counts.stopped_early


def test_video_frames_take_the_tiles_in_turn_by_their_number_within_the_cap() -> None:
    windows = _Eye(SMALL).tile_windows((1280, 720), 2)
    settings = SearchSettings(tiles_per_frame=1, max_detector_runs=3)
    seen = []
    for n in (0, 1, 2, 3, 4, 1):
        det = _Eye(SMALL, min_px=1000)  # sees nothing: every frame looks at its tile
        counts = Pipeline(det, _Reader(SMALL, 0.99), settings).run(FRAME, frame=n).counts
        assert counts.detector_runs == 2
        seen.append(det.centres)
    assert seen == [[windows[n % 4][0]] for n in (0, 1, 2, 3, 4, 1)]
    det = _Eye(LARGE)
    counts = Pipeline(det, _Reader(LARGE, 0.8), settings).run(FRAME, frame=7).counts
    assert counts.detector_runs == det.runs == 3  # capped: the whole frame, a zoomed look, the frame's tile


def test_one_frame_gives_one_answer() -> None:
    """No state between calls: the same frame with the same number reads the same, whatever came before."""
    pipe = Pipeline(_Eye(LARGE), _Reader(LARGE, 0.8), SearchSettings())
    first = pipe.run(FRAME, frame=2)
    pipe.run(FRAME, frame=0)
    pipe.run(FRAME)
    again = pipe.run(FRAME, frame=2)
    assert [(r.text, r.detection.box) for r in first.reads] == [(r.text, r.detection.box) for r in again.reads]
    assert (first.counts.detector_runs, first.counts.reader_runs) == (again.counts.detector_runs,
                                                                      again.counts.reader_runs)


def test_the_settings_have_one_set_of_defaults_and_refuse_what_cannot_run() -> None:
    assert DetectionConfig().search_settings() == SearchSettings()
    assert DetectionConfig(tiles=3, sure=0.5).search_settings() == SearchSettings(tiles=3, sure=0.5)
    with pytest.raises(ValidationError, match="tiles_per_frame"):
        SearchSettings(tiles=2, tiles_per_frame=0, max_detector_runs=3)
    with pytest.raises(ValidationError):
        SearchSettings().model_copy(update={}).__setattr__("tiles", 0)  # frozen
    with pytest.raises(ValidationError, match="extra"):
        SearchSettings(tile=2)  # type: ignore[call-arg]


def test_more_zoomed_looks_than_plates_read_is_no_error() -> None:
    """``refine`` may exceed ``max_plates``: detections past those read get no zoomed look before the tiles."""
    pipe = Pipeline(_Eye(LARGE), _Reader(LARGE, 0.8), SearchSettings(refine=16))
    pipe.max_plates = 0
    result = pipe.run(FRAME)
    assert result.reads == [] and result.counts.reader_runs == 0


def test_what_a_tile_finds_that_reads_as_nothing_gets_no_zoomed_look() -> None:
    # The whole frame misses the small plate; the tiles see it and a sign that reads as nothing.
    sign = np.float32([[900, 500], [960, 500], [960, 530], [900, 530]])

    class _Two(_Eye):
        def probabilities(self, pixels):
            out = super().probabilities(pixels)
            q = (sign - np.float32(self.lb.offset)) * self.lb.scale
            if q[1, 0] - q[0, 0] >= self.min_px:
                cv2.fillPoly(out, [np.round(q / 4).astype(np.int32)], 1.0)
            return out

    tiles = [centre for centre, _ in _Eye(SMALL).tile_windows((1280, 720), 2)]
    det = _Two(SMALL, min_px=30)
    result = Pipeline(det, _Reader(SMALL, 0.9)).run(FRAME)
    assert [r.text for r in result.reads] == ["AB12CDE"]
    assert [c for c in det.centres if c in tiles] == tiles  # a doubtful read: every tile of the 16:9 frame
    zooms = [c for c in det.centres if c not in tiles]
    assert zooms and all(abs(x - 330) < 40 and abs(y - 215) < 40 for x, y in zooms)  # the plate's, not the sign's
    assert result.counts.detector_runs == det.runs == 1 + 4 + len(zooms)


class _CutEye(_Eye):
    """Sees only the left ``cut`` of the plate over the whole frame; a window (a zoomed look) sees all of it."""

    def __init__(self, quad: np.ndarray, cut: float) -> None:
        super().__init__(quad)
        self.cut, self.whole = cut, False

    def prepare(self, image):
        self.whole = True
        return super().prepare(image)

    def window(self, image, centre, width):
        self.whole = False
        return super().window(image, centre, width)

    def probabilities(self, pixels):
        full = self.quad
        if self.whole:
            self.quad = full.copy()
            self.quad[[1, 2], 0] = full[0, 0] + self.cut * (full[1, 0] - full[0, 0])
        try:
            return super().probabilities(pixels)
        finally:
            self.quad = full


class _PartReader(_Reader):
    """Reads the plate from a crop that holds 90 % of it, and ``part`` from one that holds a third or more."""

    def __init__(self, quad: np.ndarray, prob: float, part: str) -> None:
        super().__init__(quad, prob)
        self.part = part

    def read_crop(self, quad) -> PlateText:
        x1, y1 = np.maximum(quad.min(axis=0), self.quad.min(axis=0))
        x2, y2 = np.minimum(quad.max(axis=0), self.quad.max(axis=0))
        held = max(0, x2 - x1) * max(0, y2 - y1) / np.prod(self.quad.max(axis=0) - self.quad.min(axis=0))
        if held >= 0.9:
            return PlateText(self.text, "gb_current", "GB", (self.prob,) * len(self.text), self.text)
        if held >= 1 / 3:
            return PlateText(self.part, None, None, (self.prob,) * len(self.part), self.part)
        return PlateText("", None, None, (), "")


@pytest.mark.parametrize(("part", "zoomed"), [("AB", True), ("A", False)])
def test_a_box_that_reads_part_of_a_plate_gets_a_zoomed_look_that_finds_it_whole(part: str, zoomed: bool) -> None:
    # The whole frame's box cuts the plate; two characters read there are too few to stand for a plate, but are
    # lettering worth a zoomed look. One character is not (a lamp, a grille's edge).
    eye = _CutEye(LARGE, cut=0.6)
    result = Pipeline(eye, _PartReader(LARGE, 0.8, part), SearchSettings(tiles=0)).run(FRAME)
    if zoomed:
        assert [r.text for r in result.reads] == ["AB12CDE"] and eye.runs == result.counts.detector_runs == 2
        assert result.reads[0].detection.box[2] == pytest.approx(760, abs=8)  # the whole plate's box
    else:
        assert result.reads == [] and eye.runs == result.counts.detector_runs == 1


class _EdgeReader(_Reader):
    """Reads the plate's last character wrong in exactly its detected box; any shift of the box reads it right."""

    def __init__(self, box_quad: np.ndarray, prob: float, shifted_prob: float) -> None:
        super().__init__(box_quad, prob)
        self.shifted_prob = shifted_prob

    def read_crop(self, quad) -> PlateText:
        if np.allclose(quad, self.quad):
            return PlateText("AB12CDF", "gb_current", "GB", (self.prob,) * 7, "AB12CDF")
        return PlateText("AB12CDE", "gb_current", "GB", (self.shifted_prob,) * 7, "AB12CDE")


def test_a_doubtful_read_of_a_still_is_read_again_in_shifted_boxes_and_the_most_confident_text_stands() -> None:
    box = Detection(LARGE, (500.0, 400.0, 760.0, 460.0), 0.9)
    reader = _EdgeReader(LARGE, 0.9, 0.85)
    pipe = Pipeline(_Eye(LARGE), reader)
    [read] = pipe.read_detections(FRAME, [box], reread=True)
    # One crop says CDF at 0.9, the four shifted ones CDE at 0.85 each; the plate keeps its detected box.
    assert (read.text, read.confidence) == ("AB12CDE", pytest.approx(0.85))
    assert read.detection.box == box.box and reader.crops == 1 + len(REREAD_SHIFTS)
    # Without reread (video, where the tracker votes over frames) the box's own read stands, read once.
    reader.crops = 0
    assert [r.text for r in pipe.read_detections(FRAME, [box])] == ["AB12CDF"] and reader.crops == 1
    # A sure read is not read again.
    sure = _EdgeReader(LARGE, 0.99, 0.85)
    assert [r.text for r in Pipeline(_Eye(LARGE), sure).read_detections(FRAME, [box], reread=True)] == ["AB12CDF"]
    assert sure.crops == 1


def test_only_stills_read_a_doubtful_plate_again() -> None:
    settings = SearchSettings(tiles=0, refine=0)
    still = Pipeline(_Eye(LARGE), _Reader(LARGE, 0.8), settings).run(FRAME).counts
    video = Pipeline(_Eye(LARGE), _Reader(LARGE, 0.8), settings).run(FRAME, frame=0).counts
    assert (still.detector_runs, video.detector_runs) == (1, 1)
    assert video.reader_runs == 1 and still.reader_runs == 1 + len(REREAD_SHIFTS)
    assert still.macs == DET_MACS + READER_MACS * still.reader_runs
