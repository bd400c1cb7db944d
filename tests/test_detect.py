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
        self.model, self.wide = None, None
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
    first = det.look(frame)
    refined = det.refine(frame, first[0])
    assert len(first) == 1 and det.runs == 2  # one pass, then a zoomed look
    err_first = np.abs(np.subtract(first[0].box, [601, 403, 667, 436])).max()
    err_refined = np.abs(np.subtract(refined.box, [601, 403, 667, 436])).max()
    # Box edges are cell edges: 10 frame px per cell at whole-frame scale, under 2 px zoomed in.
    assert err_refined <= 2.0 < err_first
    assert refined.score == first[0].score


def test_refine_keeps_the_first_detection_when_the_zoom_finds_nothing() -> None:
    det = _Oracle(_HIDDEN)  # found at frame scale, gone in the zoomed window
    frame = np.zeros((720, 1280, 3), np.uint8)
    first = det.look(frame)
    refined = det.refine(frame, first[0])
    assert len(first) == 1 and det.runs == 2 and refined is first[0]
    np.testing.assert_allclose(refined.box, [601, 403, 667, 436], atol=4.0)


def test_a_window_maps_its_pixels_back_to_the_frame_inside_and_across_the_frame_edges() -> None:
    det = _Oracle(None)
    for centre, width, dot in (((912.0, 444.0), 736.0, (903, 617)), ((900.0, 610.0), 120.0, (903, 617)),
                               ((1250.0, 700.0), 300.0, (1210, 690)), ((640.0, 360.0), 2000.0, (903, 617))):
        frame = np.zeros((720, 1280, 3), np.uint8)
        cv2.circle(frame, dot, 6, (255, 255, 255), -1)
        pixels, lb = det.window(frame, centre, width)
        assert pixels.shape == (384, 512, 3)
        ys, xs = np.nonzero(pixels[..., 0] > 127)
        found = lb.to_frame(np.float32([[xs.mean(), ys.mean()]]))[0]
        # Within a frame pixel at any zoom (one input pixel is 1/scale frame pixels).
        assert np.abs(found - dot).max() <= max(1.0, 0.6 / lb.scale), (centre, width, found)
        corner = lb.to_frame(np.float32([[511, 383]]))[0]
        if corner[0] > 1280 or corner[1] > 720:
            assert pixels[-1, -1].max() == 0  # the window's part beyond the frame is black
    # A window that shows less than one of its own pixels of the frame is all black, not an error.
    pixels, _ = det.window(np.full((720, 1280, 3), 255, np.uint8), (-1000.0, 360.0), 2000.0)
    assert pixels.max() == 0


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


def test_a_tile_drops_the_plates_its_inner_edges_cut() -> None:
    quad = np.float32([[500, 200], [600, 200], [600, 240], [500, 240]])  # across the right tile's left edge (544)
    frame = np.zeros((720, 1280, 3), np.uint8)
    det = _Oracle(quad)
    left, right = det.tile_windows((1280, 720), 2)[:2]
    assert len(det.look(frame, left)) == 1  # whole inside the left tile
    assert det.look(frame, right) == []  # cut by the right tile's inner edge: the left tile has it


def test_a_4_3_photo_gets_2_rows_of_tiles_not_3() -> None:
    # Two rows of the 2-column windows (552 px tall, overlapping) cover 960 px; a third row only repeats them.
    assert len(_Oracle(None).tile_windows((1280, 960), 2)) == 4


def test_a_strip_no_camera_makes_gets_no_tiles_only_the_whole_frame() -> None:
    # A 1x20000 image once meant about 55,000 tile windows: a run that never ended.
    det = _Oracle(None)
    assert det.tile_windows((1, 20000), 2) == []
    assert len(det.tile_windows((960, 1280), 2)) == 8  # a portrait phone photo keeps its tiles: 2 columns, 4 rows
