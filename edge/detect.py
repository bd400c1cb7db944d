"""Plate detector: frame -> letterboxed model input -> plate mask -> plate quads.

The detector network outputs a per-cell plate probability at ``stride``
pixels of its input, trained to be the fraction of the cell the plate covers.
Plates are the connected regions above a threshold; the minimum-area rotated
rectangle of each region's cells gives the plate quad, which the reader
rectifies. Small plates get a zoomed second pass (``refine``), and tiles find
plates too small for the whole frame (``tiles``).

Where several passes see the same plate (the whole frame, a tile, a zoomed
look), each box is kept as a candidate of one detection: a whole-frame mask
may bleed into the bumper where a tile's fits the plate, and a zoomed look
may split a plate at a crest or a dash. The reader, which knows best whether
a crop holds a whole plate, picks among them (``edge.pipeline``). Both the
edge and the trainer use these functions.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from edge.model import Model, ModelError


@dataclass(frozen=True)
class Letterbox:
    """How a frame (or a window of it) was fitted into the model input: x_in = (x - offset) * scale."""

    scale: float
    offset: tuple[float, float] = (0.0, 0.0)

    def to_frame(self, pts: np.ndarray) -> np.ndarray:
        """Map (N,2) points from model-input pixels back to frame pixels."""
        return pts / self.scale + np.asarray(self.offset, np.float32)


def letterbox(image: np.ndarray, width: int, height: int) -> tuple[np.ndarray, Letterbox]:
    """Fit ``image`` (BGR) into width x height RGB, keeping aspect, padding bottom/right with black."""
    h, w = image.shape[:2]
    scale = min(width / w, height / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    out = np.zeros((height, width, 3), np.uint8)
    out[:nh, :nw] = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
    return out, Letterbox(scale)


def order_quad(pts: np.ndarray) -> np.ndarray:
    """Order 4 corners TL, TR, BR, BL so that the TL->TR edge is the plate's top edge.

    The top edge is taken as the longer pair of sides (plates are wider than
    tall, two-row plates included), oriented left to right.
    """
    pts = np.asarray(pts, np.float32).reshape(4, 2)
    c = pts.mean(axis=0)
    ang = np.arctan2(pts[:, 1] - c[1], pts[:, 0] - c[0])
    pts = pts[np.argsort(ang)]  # clockwise in image coordinates, starting anywhere
    e01 = np.linalg.norm(pts[1] - pts[0])
    e12 = np.linalg.norm(pts[2] - pts[1])
    if e12 > e01:
        pts = np.roll(pts, -1, axis=0)
    # Now pts[0]->pts[1] is a long edge; make it the upper one, running left to right.
    if (pts[0, 1] + pts[1, 1]) > (pts[2, 1] + pts[3, 1]):
        pts = np.roll(pts, 2, axis=0)
    return pts


def rect_quad(points: np.ndarray) -> np.ndarray:
    """Ordered corners of the minimum-area rotated rectangle around ``points``."""
    rect = cv2.minAreaRect(np.asarray(points, np.float32).reshape(-1, 2))
    return order_quad(cv2.boxPoints(rect))


@dataclass(frozen=True)
class Detection:
    """A plate found in a frame: rotated quad and its axis-aligned box, in frame pixels."""

    quad: np.ndarray
    box: tuple[float, float, float, float]
    score: float
    #: Other boxes of the same plate from other detector passes (tiles, zoomed looks), best guess first.
    alternatives: tuple[Detection, ...] = ()

    def candidates(self) -> tuple[Detection, ...]:
        """This box and its alternatives, each without alternatives of its own."""
        return (replace(self, alternatives=()), *self.alternatives)


def mask_to_detections(
    prob: np.ndarray, stride: int, threshold: float, min_cells: int, lb: Letterbox, frame_wh: tuple[int, int]
) -> list[Detection]:
    """Turn a plate-probability map (h, w) into detections in frame pixels."""
    mask = (prob >= threshold).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    fw, fh = frame_wh
    out = []
    for i in range(1, n):
        if stats[i, cv2.CC_STAT_AREA] < min_cells:
            continue
        x0, y0 = stats[i, cv2.CC_STAT_LEFT], stats[i, cv2.CC_STAT_TOP]
        ys, xs = np.nonzero(labels[y0:y0 + stats[i, cv2.CC_STAT_HEIGHT], x0:x0 + stats[i, cv2.CC_STAT_WIDTH]] == i)
        ys, xs = ys + y0, xs + x0
        score = float(prob[ys, xs].mean())
        # Each cell covers [x*stride, (x+1)*stride); take all four corners of every cell.
        cells = np.stack([xs, ys], axis=1).astype(np.float32) * stride
        corners = np.concatenate([cells + np.array(o, np.float32) * stride for o in ((0, 0), (1, 0), (0, 1), (1, 1))])
        quad = lb.to_frame(rect_quad(corners))
        x1, y1 = np.clip(quad.min(axis=0), 0, [fw, fh])
        x2, y2 = np.clip(quad.max(axis=0), 0, [fw, fh])
        if x2 - x1 < 2 or y2 - y1 < 2:
            continue
        out.append(Detection(quad, (float(x1), float(y1), float(x2), float(y2)), score))
    out.sort(key=lambda d: d.score, reverse=True)
    return out


def _area(a: tuple[float, ...]) -> float:
    return (a[2] - a[0]) * (a[3] - a[1])


def _intersection(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    inter = _intersection(a, b)
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0


def overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over the smaller box's area: 1 when one box holds the other."""
    small = min(_area(a), _area(b))
    return _intersection(a, b) / small if small > 0 else 0.0


def _clear_of_cut_edges(box: tuple[float, ...], window: tuple[float, ...], frame_wh: tuple[int, int],
                        pad: float) -> bool:
    """Whether ``box`` stays ``pad`` inside every edge of ``window`` that cuts the frame (not a frame edge)."""
    fw, fh = frame_wh
    return ((window[0] == 0.0 or box[0] > window[0] + pad) and (window[1] == 0.0 or box[1] > window[1] + pad)
            and (window[2] == fw or box[2] < window[2] - pad) and (window[3] == fh or box[3] < window[3] - pad))


def merge_tiles(whole: list[Detection], tiled: list[Detection], max_overlap: float = 0.3) -> list[Detection]:
    """The whole-frame detections, with the tile detections (best first) that overlap one as its alternatives,
    plus the tile detections that overlap none kept so far as plates of their own; best first.

    Where both see a plate, neither box is always right: the whole-frame mask
    of a small plate often takes in the bumper around it, and a tile often
    sees only a part of a plate (a group split off by a crest or a dash). The
    whole-frame box stays the detection (its score ranks it); the tile's box
    is a candidate for the reader.
    """
    kept = list(whole)
    for d in sorted(tiled, key=lambda d: d.score, reverse=True):
        hit = next((i for i, k in enumerate(kept) if overlap(d.box, k.box) >= max_overlap), None)
        if hit is None:
            kept.append(d)
        else:
            kept[hit] = replace(kept[hit], alternatives=(*kept[hit].alternatives, d))
    return sorted(kept, key=lambda d: d.score, reverse=True)


#: Tile rows per tile column at most (a portrait phone photo needs 2; see ``PlateDetector.tile_windows``).
MAX_TILE_ROWS_PER_COLUMN = 3


class PlateDetector:
    """Runs the detector model on BGR frames.

    With a ``wide`` model (the same network at a wider input, see ``edge.model``)
    the whole-frame look goes through the cheaper of the two wherever it sees
    the frame at the scale the main one would: a 16:9 frame (or any of aspect
    1.6 or more) sees the wide input, where the main 4:3 one would pad 96 of
    its rows with black. Tiles and zoomed windows are cut from the frame at the
    main input's shape, which they fill wholly, so that the search looks at the
    same pixels with a wide model as without one.
    """

    def __init__(self, model: Model, wide: Model | None = None) -> None:
        self.model, self.wide = model, wide
        self.models = (model,) if wide is None else (model, wide)
        cfg = model.meta.detector
        if cfg is None:
            raise ModelError(f"{model.path}: metadata has no 'detector' section")
        if wide is not None:
            # A wide model runs the same network: the same output stride, threshold and cell count apply.
            same = (wide.meta.detector is not None and wide.meta.detector.model_copy(update={"wide_of": None})
                    == cfg.model_copy(update={"wide_of": None}) and wide.input.shape[3] == model.input.shape[3])
            if not same:
                raise ModelError(f"{wide.path}: its 'detector' section or input channels differ from {model.path}'s")
        _, self.height, self.width, self.channels = model.input.shape
        self.stride = cfg.stride
        self.threshold = cfg.threshold
        self.min_cells = cfg.min_cells

    def model_for(self, frame_wh: tuple[int, int]) -> Model:
        """The model a whole frame of this size goes through: the one of the fewest MACs among those that see the
        whole frame at (within 1 % of) the largest scale any of them does."""
        if self.wide is None:
            return self.model
        fw, fh = frame_wh

        def scale(m: Model) -> float:
            return min(m.input.shape[2] / fw, m.input.shape[1] / fh)

        best = max(scale(m) for m in self.models)
        return min((m for m in self.models if scale(m) >= 0.99 * best), key=lambda m: m.meta.macs)

    def _size(self, frame_wh: tuple[int, int]) -> tuple[int, int]:
        """Width and height of the input a whole frame of this size goes through."""
        model = self.model_for(frame_wh)
        if model is self.model:
            return self.width, self.height
        return int(model.input.shape[2]), int(model.input.shape[1])

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """The uint8 model input for a BGR frame, and how it was fitted."""
        return letterbox(image, *self._size((image.shape[1], image.shape[0])))

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Plate probability per output cell for a prepared input (of either model's shape)."""
        model = next((m for m in self.models if tuple(m.input.shape[1:3]) == pixels.shape[:2]), self.model)
        return model.run_pixels(pixels)[..., 0]

    def look(self, image: np.ndarray, window: tuple[tuple[float, float], float] | None = None) -> list[Detection]:
        """One detector pass, best first: over the whole frame (``window`` None), or over one tile window
        (``tile_windows``) without the plates its inner edges cut (the whole frame or the next tile has them)."""
        frame_wh = (image.shape[1], image.shape[0])
        if window is None:
            pixels, lb = self.prepare(image)
            return mask_to_detections(self.probabilities(pixels), self.stride, self.threshold, self.min_cells, lb,
                                      frame_wh)
        centre, width = window
        pixels, lb = self.window(image, centre, width)
        found = mask_to_detections(self.probabilities(pixels), self.stride, self.threshold, self.min_cells, lb,
                                   frame_wh)
        height = width * pixels.shape[0] / pixels.shape[1]
        inner = (max(0.0, centre[0] - width / 2), max(0.0, centre[1] - height / 2),
                 min(float(frame_wh[0]), centre[0] + width / 2), min(float(frame_wh[1]), centre[1] + height / 2))
        pad = 1.5 * self.stride / lb.scale
        return [d for d in found if _clear_of_cut_edges(d.box, inner, frame_wh, pad)]

    def tile_windows(self, frame_wh: tuple[int, int], columns: int,
                     overlap: float = 0.15) -> list[tuple[tuple[float, float], float]]:
        """(centre, width) of ``columns`` overlapping columns of windows with the detector's aspect.

        No windows for a frame so tall for its width that it would take more than
        MAX_TILE_ROWS_PER_COLUMN rows per column (a strip no camera makes: a
        1x20000 image would need tens of thousands of windows); the whole-frame
        pass still looks at it.
        """
        fw, fh = frame_wh
        in_w, in_h = self.width, self.height
        tw = fw / columns * (1 + overlap)
        th = tw * in_h / in_w
        # The fewest rows of windows, each overlapping the next by ``overlap`` of its height, that cover the frame.
        rows = max(1, int(np.ceil((fh - th * overlap) / (th * (1 - overlap)) - 1e-9)))
        if rows > MAX_TILE_ROWS_PER_COLUMN * columns:
            return []
        xs = [tw / 2 + (fw - tw) * i / (columns - 1) for i in range(columns)]
        ys = [fh / 2] if rows == 1 or fh <= th else [th / 2 + (fh - th) * j / (rows - 1) for j in range(rows)]
        return [((x, y), tw) for y in ys for x in xs]

    def window(self, image: np.ndarray, centre: tuple[float, float], width: float) -> tuple[np.ndarray, Letterbox]:
        """The model input showing ``width`` frame pixels around ``centre`` (outside the frame: black)."""
        in_w, in_h = self.width, self.height
        scale = in_w / width
        ox, oy = centre[0] - width / 2, centre[1] - in_h / scale / 2
        fh, fw = image.shape[:2]
        # Only the frame pixels the window shows are resized (a warp of the whole frame costs 4 times as much),
        # with the window's exact scale; they land in the input at the nearest whole pixel, and the Letterbox
        # maps back with resize's own pixel-centre convention: frame x = x0 + (input x - dx + 0.5) / scale - 0.5.
        x0, y0 = max(0, int(np.floor(ox))), max(0, int(np.floor(oy)))
        x1, y1 = min(fw, int(np.ceil(ox + width)) + 1), min(fh, int(np.ceil(oy + in_h / scale)) + 1)
        out = np.zeros((in_h, in_w, 3), np.uint8)
        dx, dy = round((x0 - ox) * scale + 0.5 - 0.5 * scale), round((y0 - oy) * scale + 0.5 - 0.5 * scale)
        if round((x1 - x0) * scale) >= 1 and round((y1 - y0) * scale) >= 1:  # else the window shows no pixel
            # Linear, with no area filter: a tile shrunk below the frame's size aliases a little more than the
            # letterbox, but costs a tenth of what an area filter at a fractional scale does.
            part = cv2.resize(image[y0:y1, x0:x1], (0, 0), fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
            sx, sy = max(0, -dx), max(0, -dy)
            w, h = min(part.shape[1] - sx, in_w - max(dx, 0)), min(part.shape[0] - sy, in_h - max(dy, 0))
            if w > 0 and h > 0:
                out[max(dy, 0):max(dy, 0) + h, max(dx, 0):max(dx, 0) + w] = part[sy:sy + h, sx:sx + w]
        offset = (x0 + (0.5 - dx) / scale - 0.5, y0 + (0.5 - dy) / scale - 0.5)
        return cv2.cvtColor(out, cv2.COLOR_BGR2RGB), Letterbox(scale, offset)

    def zoom_helps(self, image: np.ndarray, det: Detection, zoom: float = 3.5) -> bool:
        """Whether a zoomed look makes the plate clearly larger than the whole-frame pass saw it."""
        x1, y1, x2, y2 = det.box
        w = max(x2 - x1, (y2 - y1) * 2.0)
        whole_w, whole_h = self._size((image.shape[1], image.shape[0]))
        first = min(whole_w / image.shape[1], whole_h / image.shape[0])  # the whole-frame pass's scale
        return self.width / zoom >= 1.3 * w * first

    def refine(self, image: np.ndarray, det: Detection, zoom: float = 3.5) -> Detection:
        """Look again at a small detection with the plate ``zoom`` times narrower than the window.

        At frame scale a small plate spans a few output cells and its mask
        bleeds into the bumper around it; zoomed in, the mask fits the plate.
        The region nearest the first box's centre replaces it; if the second
        look finds nothing there, the first detection stands.
        """
        if not self.zoom_helps(image, det, zoom):
            return det
        x1, y1, x2, y2 = det.box
        w = max(x2 - x1, (y2 - y1) * 2.0)
        centre = ((x1 + x2) / 2, (y1 + y2) / 2)
        pixels, lb = self.window(image, centre, w * zoom)
        found = mask_to_detections(self.probabilities(pixels), self.stride, self.threshold, self.min_cells, lb,
                                   (image.shape[1], image.shape[0]))
        inside = [d for d in found if x1 <= (d.box[0] + d.box[2]) / 2 <= x2 and y1 <= (d.box[1] + d.box[3]) / 2 <= y2]
        if not inside:
            return det
        best = min(inside, key=lambda d: np.hypot((d.box[0] + d.box[2]) / 2 - centre[0],
                                                  (d.box[1] + d.box[3]) / 2 - centre[1]))
        return Detection(best.quad, best.box, det.score)
