"""Pipeline: the reader picks among a detection's candidate boxes."""
from __future__ import annotations

import numpy as np
import pytest

from edge.detect import Detection
from edge.formats import PlateText
from edge.model import DEFAULT_MODELS
from edge.pipeline import Pipeline
from edge.search import SearchSettings


def _det(box: tuple[float, float, float, float], score: float, alternatives: tuple = ()) -> Detection:
    x1, y1, x2, y2 = box
    return Detection(np.float32([[x1, y1], [x2, y1], [x2, y2], [x1, y2]]), box, score, alternatives)


class _BoxReader:
    """Stand-in reader whose read depends on which box was cropped (the crop is the box itself)."""

    def __init__(self, reads: dict[tuple, PlateText]) -> None:
        self.reads = reads
        self.seen: list[tuple] = []

    def crop(self, image: np.ndarray, quad: np.ndarray) -> tuple:
        box = tuple(float(v) for v in (*quad.min(axis=0), *quad.max(axis=0)))
        self.seen.append(box)
        return box

    def read_crop(self, crop: tuple) -> PlateText:
        return self.reads[crop]


def _read(text: str, probs: list[float], fmt: str | None = None, display: str | None = None) -> PlateText:
    return PlateText(text, fmt, "GB" if fmt else None, tuple(probs), display or text)


def test_the_candidate_read_most_surely_stands_for_the_plate() -> None:
    """Every candidate box is read; the surest read (geometric mean of its characters) stands for the plate."""
    bumper, plate, part = (90.0, 90.0, 230.0, 160.0), (100.0, 100.0, 200.0, 140.0), (150.0, 100.0, 200.0, 140.0)
    reader = _BoxReader({
        bumper: _read("X7ABC123", [0.3, 0.5, 0.9, 0.9, 0.9, 0.9, 0.9, 0.4]),  # bumper edges read as characters
        plate: _read("ABC123", [0.95, 0.9, 0.9, 0.9, 0.85, 0.3]),  # one doubtful character
        part: _read("12", [0.99, 0.99]),  # too short to be a plate
    })
    det = _det(bumper, 0.8, (_det(plate, 0.6), _det(part, 0.9)))
    reads = Pipeline(None, reader).read_detections(np.zeros((300, 300, 3), np.uint8), [det])
    assert len(reader.seen) == 3  # every candidate was read
    assert len(reads) == 1 and reads[0].text == "ABC123"
    assert reads[0].detection.box == plate and not reads[0].detection.alternatives
    assert reads[0].detection.score == 0.8  # the plate ranks by its detection's score
    assert reads[0].confidence == pytest.approx(np.prod([0.95, 0.9, 0.9, 0.9, 0.85, 0.3]) ** (1 / 6))


def test_the_plate_box_is_the_tightest_candidate_that_reads_the_same_text() -> None:
    # The whole-frame box takes in the bumper yet reads the plate surely; a tile's box fits the plate and reads
    # the same text a little less surely: the text is the surest read's, the box the tight one.
    loose, tight = (80.0, 90.0, 260.0, 160.0), (100.0, 100.0, 200.0, 140.0)
    reader = _BoxReader({loose: _read("ABC123", [0.99] * 6), tight: _read("ABC123", [0.95] * 6)})
    reads = Pipeline(None, reader).read_detections(np.zeros((300, 300, 3), np.uint8),
                                                   [_det(loose, 0.8, (_det(tight, 0.6),))])
    assert reads[0].detection.box == tight
    assert reads[0].confidence == pytest.approx(0.99)


def test_a_box_that_cuts_through_the_plate_does_not_stand_for_it_while_a_wider_box_reads_it_whole() -> None:
    # The whole-frame box reads a plate of no known format surely; a zoomed box on its right half reads four of
    # its characters (one wrong) as a German plate, which a format fit would otherwise rank first.
    whole, right, left = (200.0, 260.0, 455.0, 305.0), (335.0, 262.0, 455.0, 304.0), (200.0, 262.0, 330.0, 304.0)
    frame = np.zeros((400, 500, 3), np.uint8)
    fragment = _read("JD21", [0.9] * 4, "de")
    reader = _BoxReader({whole: _read("325J521", [0.97] * 7), right: fragment, left: _read("325", [0.95] * 3)})
    [read] = Pipeline(None, reader).read_detections(frame, [_det(whole, 0.9, (_det(right, 0.9), _det(left, 0.9)))])
    assert (read.text, read.detection.box) == ("325J521", whole)
    # Without the wider box's read (not acceptable, or not read there), the part is what there is.
    reader = _BoxReader({whole: _read("325J521", [0.4] * 7), right: fragment})
    assert [r.text for r in Pipeline(None, reader).read_detections(frame, [_det(whole, 0.9, (_det(right, 0.9),))])] \
        == ["JD21"]
    # Nor while it reads the whole less surely than the part (a bumper's edges read as characters around it).
    reader = _BoxReader({whole: _read("325J521", [0.85] * 7), right: fragment})
    assert [r.text for r in Pipeline(None, reader).read_detections(frame, [_det(whole, 0.9, (_det(right, 0.9),))])] \
        == ["JD21"]
    # One character more in a wider box is no cut (a frame's lettering read as a character): the surer read stands.
    reader = _BoxReader({whole: _read("8D79882L", [0.97] * 8), right: _read("8D79882", [0.99] * 7)})
    assert [r.text for r in Pipeline(None, reader).read_detections(frame, [_det(whole, 0.9, (_det(right, 0.9),))])] \
        == ["8D79882"]
    # Nor is a narrow box whose read the wider one does not hold, or one that lies outside it.
    reader = _BoxReader({whole: _read("325J521", [0.97] * 7), right: _read("XY88", [0.9] * 4, "de")})
    assert [r.text for r in Pipeline(None, reader).read_detections(frame, [_det(whole, 0.9, (_det(right, 0.9),))])] \
        == ["XY88"]
    below = (335.0, 300.0, 455.0, 350.0)
    reader = _BoxReader({whole: _read("325J521", [0.97] * 7), below: fragment})
    assert [r.text for r in Pipeline(None, reader).read_detections(frame, [_det(whole, 0.9, (_det(below, 0.9),))])] \
        == ["JD21"]


def test_a_detection_without_a_readable_candidate_is_dropped() -> None:
    box = (10.0, 10.0, 60.0, 30.0)
    reader = _BoxReader({box: _read("7", [0.9])})
    assert Pipeline(None, reader).read_detections(np.zeros((100, 100, 3), np.uint8), [_det(box, 0.9)]) == []


def test_a_sure_two_character_plate_is_read_when_nothing_longer_is() -> None:
    """UK cherished numbers ("5 B") are plates; a sure two-character read of a plate format stands for its plate."""
    plate, doubtful, digits = (10.0, 10.0, 60.0, 30.0), (100.0, 10.0, 150.0, 30.0), (200.0, 10.0, 250.0, 30.0)
    reader = _BoxReader({plate: _read("5B", [0.99, 0.98], "gb_dateless", "5 B"),
                         doubtful: _read("7K", [0.99, 0.6], "gb_dateless", "7 K"),  # not sure enough
                         digits: _read("12", [0.99, 0.99])})  # fits no plate format
    dets = [_det(plate, 0.7), _det(doubtful, 0.9), _det(digits, 0.9)]
    reads = Pipeline(None, reader).read_detections(np.zeros((100, 300, 3), np.uint8), dets)
    assert [r.text for r in reads] == ["5B"]
    assert reads[0].format == "gb_dateless" and reads[0].display == "5 B"


def test_a_two_character_read_loses_to_a_longer_read_of_the_same_plate_and_ranks_last() -> None:
    whole, part, badge, other = ((100.0, 100.0, 200.0, 140.0), (150.0, 100.0, 200.0, 140.0),
                                 (10.0, 10.0, 40.0, 30.0), (300.0, 100.0, 400.0, 140.0))
    reader = _BoxReader({whole: _read("AB12CDE", [0.9] * 7, "gb_current"), part: _read("DE", [0.99, 0.99]),
                         badge: _read("V6", [0.99, 0.99], "gb_dateless_reversed"),
                         other: _read("XY51ABC", [0.5] * 7, "gb_current")})
    dets = [_det(badge, 0.99), _det(whole, 0.8, (_det(part, 0.9),)), _det(other, 0.3)]
    reads = Pipeline(None, reader).read_detections(np.zeros((300, 500, 3), np.uint8), dets)
    assert [r.text for r in reads] == ["AB12CDE", "XY51ABC", "V6"]


def test_a_free_text_needs_a_sure_read_and_a_format_fit_ranks_first() -> None:
    """Lettering that fits no format (a sign, a grille) is kept only when read surely, and a plate that fits a
    format ranks above a free text of the same score."""
    sign, plate, vanity, grille = ((10.0, 10.0, 60.0, 30.0), (100.0, 10.0, 150.0, 30.0), (200.0, 10.0, 250.0, 30.0),
                                   (300.0, 10.0, 350.0, 30.0))
    reader = _BoxReader({sign: _read("OTW1", [0.9, 0.5, 0.4, 0.5]),
                         plate: _read("AB12CDE", [0.9] * 7, "gb_current"),
                         vanity: _read("NEILDMND", [0.9] * 8),
                         grille: _read("ODHN9", [0.5, 0.4, 0.4, 0.4, 0.4], "de")})  # fits, but barely seen
    dets = [_det(sign, 0.9), _det(vanity, 0.8), _det(plate, 0.8), _det(grille, 0.95)]
    reads = Pipeline(None, reader).read_detections(np.zeros((100, 300, 3), np.uint8), dets)
    assert [r.text for r in reads] == ["AB12CDE", "NEILDMND"]
    assert reads[1].format is None and reads[1].display == "NEILDMND"


def test_the_daemon_and_health_build_the_pipeline_the_detection_section_describes() -> None:
    from edge.config import DetectionConfig

    cfg = DetectionConfig(refine=2, tiles=3, tiles_per_frame=2, max_detector_runs=5, sure=0.9)
    pipe = Pipeline.from_config(cfg)
    assert pipe.search == SearchSettings(refine=2, tiles=3, tiles_per_frame=2, max_detector_runs=5, sure=0.9)
    assert pipe.detector.model.path.parent == DEFAULT_MODELS
