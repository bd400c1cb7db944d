"""Detector pre-processing (letterbox) and post-processing (mask -> quads -> boxes)."""
from __future__ import annotations

import cv2
import numpy as np

from edge.detect import (
    Detection,
    Letterbox,
    PlateDetector,
    letterbox,
    mask_to_detections,
    merge_tiles,
    order_quad,
    rect_quad,
)


def test_letterbox_keeps_aspect_and_converts_to_rgb() -> None:
    frame = np.zeros((720, 1280, 3), np.uint8)
    frame[..., 0] = 255  # blue in BGR
    pixels, lb = letterbox(frame, 512, 384)
    assert pixels.shape == (384, 512, 3)
    assert lb.scale == 0.4
    assert pixels[:288, :, 2].min() == 255 and pixels[:288, :, 0].max() == 0  # blue is channel 2 in RGB
    assert pixels[288:].max() == 0  # padding below the 16:9 frame


def test_order_quad_from_any_start() -> None:
    want = np.array([[0, 0], [100, 0], [100, 20], [0, 20]], np.float32)
    for k in range(4):
        np.testing.assert_allclose(order_quad(np.roll(want, k, axis=0)), want)
        np.testing.assert_allclose(order_quad(np.roll(want[::-1], k, axis=0)), want)


def test_rect_quad_of_points_is_ordered_rectangle() -> None:
    pts = np.array([[10, 10], [50, 10], [50, 20], [10, 20], [30, 15]], np.float32)
    np.testing.assert_allclose(rect_quad(pts), [[10, 10], [50, 10], [50, 20], [10, 20]], atol=1e-4)


def test_mask_to_detections_maps_back_to_frame_pixels() -> None:
    prob = np.zeros((96, 128), np.float32)
    prob[10:14, 20:40] = 0.9  # one plate: cells x 20..39, y 10..13
    prob[50, 50] = 0.9  # a single cell: below min_cells, ignored
    dets = mask_to_detections(prob, stride=4, threshold=0.5, min_cells=3, lb=Letterbox(0.4), frame_wh=(1280, 720))
    assert len(dets) == 1
    x1, y1, x2, y2 = dets[0].box
    np.testing.assert_allclose([x1, y1, x2, y2], [200, 100, 400, 140], atol=1e-3)
    assert abs(dets[0].score - 0.9) < 1e-6


def _coverage(quad: np.ndarray, height: int, width: int, stride: int) -> np.ndarray:
    """The share of each detector cell (height/stride, width/stride) that ``quad`` covers, in [0, 1].

    What a perfect detector outputs; the trainer's training target is the same map (trainer.data.plate_mask),
    drawn here with OpenCV alone so that the edge's tests need no trainer.
    """
    sub = 4  # 4 x 4 sub-cells per cell, averaged
    fine = np.zeros((height // stride * sub, width // stride * sub), np.uint8)
    cv2.fillPoly(fine, [np.round(np.asarray(quad, np.float32) / stride * sub * 8).astype(np.int32)], 255,
                 lineType=cv2.LINE_8, shift=3)
    return cv2.resize(fine, (width // stride, height // stride), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


class _Oracle(PlateDetector):
    """A detector that sees one known frame rectangle perfectly at any zoom (its coverage map)."""

    def __init__(self, quad: np.ndarray | None) -> None:  # no model: only the geometry is under test
        self.width, self.height, self.stride, self.threshold, self.min_cells = 512, 384, 4, 0.5, 3
        self.quad, self.lb, self.runs = quad, None, 0

    def prepare(self, image):
        pixels, self.lb = super().prepare(image)
        return pixels, self.lb

    def window(self, image, centre, width):
        pixels, self.lb = super().window(image, centre, width)
        return pixels, self.lb

    def probabilities(self, pixels):
        self.runs += 1
        if self.quad is None or (self.runs > 1 and self.quad is _HIDDEN):
            return np.zeros((self.height // 4, self.width // 4), np.float32)
        q = (self.quad - np.float32(self.lb.offset)) * self.lb.scale
        return _coverage(q, self.height, self.width, self.stride)


_HIDDEN = np.float32([[601, 403], [667, 403], [667, 436], [601, 436]])


def test_refine_zooms_in_and_maps_back_to_the_frame() -> None:
    frame = np.zeros((720, 1280, 3), np.uint8)
    quad = np.float32([[601, 403], [667, 403], [667, 436], [601, 436]])  # a 66x33 plate: 26 px wide at 512
    det = _Oracle(quad)
    first = det.detect(frame)
    refined = det.detect(frame, refine=1)
    assert len(first) == len(refined) == 1 and det.runs == 3  # one pass, then a pass plus a zoomed look
    err_first = np.abs(np.subtract(first[0].box, [601, 403, 667, 436])).max()
    err_refined = np.abs(np.subtract(refined[0].box, [601, 403, 667, 436])).max()
    # Box edges are cell edges: 10 frame px per cell at whole-frame scale, under 2 px zoomed in.
    assert err_refined <= 2.0 < err_first
    assert refined[0].score == first[0].score
    # The first look stays a candidate for the reader, behind the zoomed box.
    assert [c.box for c in refined[0].candidates()] == [refined[0].box, first[0].box]


def test_refine_keeps_the_first_detection_when_the_zoom_finds_nothing() -> None:
    det = _Oracle(_HIDDEN)  # found at frame scale, gone in the zoomed window
    frame = np.zeros((720, 1280, 3), np.uint8)
    refined = det.detect(frame, refine=1)
    assert len(refined) == 1 and det.runs == 2
    np.testing.assert_allclose(refined[0].box, [601, 403, 667, 436], atol=4.0)


def test_letterbox_with_offset_maps_window_pixels_to_frame() -> None:
    lb = Letterbox(2.0, (100.0, 50.0))
    np.testing.assert_allclose(lb.to_frame(np.float32([[0, 0], [20, 10]])), [[100, 50], [110, 55]])


def _det(box: tuple[float, float, float, float], score: float) -> Detection:
    x1, y1, x2, y2 = box
    return Detection(np.float32([[x1, y1], [x2, y1], [x2, y2], [x1, y2]]), box, score)


def test_merge_tiles_adds_plates_the_whole_frame_missed_and_keeps_the_rest_as_candidates() -> None:
    whole = [_det((100, 100, 200, 140), 0.7)]
    part = _det((150, 102, 198, 138), 0.95)  # a tile saw the right half of the same plate, more surely
    new = _det((400, 300, 460, 330), 0.8)  # a small plate only a tile saw
    dup = _det((402, 301, 458, 331), 0.6)  # the same small plate from the next, overlapping tile
    merged = merge_tiles(whole, [part, dup, new])
    assert [d.box for d in merged] == [new.box, whole[0].box]  # two plates, ranked by their own score
    assert [c.box for c in merged[0].candidates()] == [new.box, dup.box]
    assert [c.box for c in merged[1].candidates()] == [whole[0].box, part.box]
    assert all(not c.alternatives for d in merged for c in d.candidates())


def test_tile_windows_cover_the_frame_with_the_detector_aspect() -> None:
    det = _Oracle(None)
    wins = det.tile_windows((1280, 720), 2)
    assert len(wins) == 4  # 2 columns, and 2 rows for a 16:9 frame
    for _, w in wins:
        assert abs(w - 1280 / 2 * 1.15) < 1e-6
    xs = sorted({c[0] for c, _ in wins})
    ys = sorted({c[1] for c, _ in wins})
    h = wins[0][1] * 384 / 512
    assert xs[0] - wins[0][1] / 2 == 0 and xs[-1] + wins[0][1] / 2 == 1280
    assert ys[0] - h / 2 == 0 and abs(ys[-1] + h / 2 - 720) < 1e-6


def test_tiles_find_a_plate_too_small_for_the_whole_frame() -> None:
    class _SmallBlind(_Oracle):
        """Sees the plate only where it is at least 30 input pixels wide."""

        def probabilities(self, pixels):
            if (self.quad[1, 0] - self.quad[0, 0]) * self.lb.scale < 30:
                return np.zeros((self.height // 4, self.width // 4), np.float32)
            return super().probabilities(pixels)

    quad = np.float32([[300, 200], [360, 200], [360, 230], [300, 230]])  # 24 px wide at whole-frame scale
    frame = np.zeros((720, 1280, 3), np.uint8)
    assert _SmallBlind(quad).detect(frame) == []
    found = _SmallBlind(quad).detect(frame, tiles=2)
    assert len(found) == 1
    np.testing.assert_allclose(found[0].box, [300, 200, 360, 230], atol=6.0)  # a cell of the tile: 5.75 px


def test_tile_indices_pick_windows_and_max_runs_caps_the_zoomed_looks() -> None:
    class _Windows(_Oracle):
        """Records the centre of every tile it is shown."""

        def __init__(self, quad):
            super().__init__(quad)
            self.centres = []

        def window(self, image, centre, width):
            self.centres.append(centre)
            return super().window(image, centre, width)

    frame = np.zeros((720, 1280, 3), np.uint8)
    wins = _Oracle(None).tile_windows((1280, 720), 2)
    det = _Windows(None)
    det.detect(frame, tiles=2, tile_indices=[5, 2])  # indices wrap around the 4 windows of a 16:9 frame
    assert det.runs == 3 and det.centres == [wins[1][0], wins[2][0]]

    quad = np.float32([[601, 403], [667, 403], [667, 436], [601, 436]])  # small enough to be zoomed in on
    uncapped, capped = _Windows(quad), _Windows(quad)
    uncapped.detect(frame, refine=4, tiles=2)
    capped.detect(frame, refine=4, tiles=2, tile_indices=[0], max_runs=3)
    assert uncapped.runs > 5  # the whole frame, 4 tiles, a zoomed look at each candidate box
    assert capped.runs == 3  # the whole frame, one tile, one zoomed look
    found = capped.detect(frame, refine=4, tiles=2, tile_indices=[3], max_runs=2)  # nothing left for a zoom
    assert len(found) == 1 and capped.runs == 3 + 2


def test_a_strip_no_camera_makes_gets_no_tiles_only_the_whole_frame() -> None:
    # A 1x20000 image once meant about 55,000 tile windows: a run that never ended.
    det = _Oracle(None)
    assert det.tile_windows((1, 20000), 2) == []
    assert len(det.tile_windows((960, 1280), 2)) == 8  # a portrait phone photo keeps its tiles: 2 columns, 4 rows
