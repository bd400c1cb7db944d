"""Plate reader: rectify a plate quad to the reader's input, run it, decode the text.

The reader network sees a grayscale, perspective-rectified crop of the plate
(plus a small margin) and outputs a probability over the alphabet and a CTC
blank for each of a sequence of columns: the columns of the top row, then
those of the bottom row, so one-row and two-row plates decode the same way.
"""
from __future__ import annotations

import cv2
import numpy as np

from edge.formats import DEFAULT_MAX_COST, FormatSet, PlateText, greedy_peaks
from edge.model import Model, ModelError, reader_formats


def expand_quad(quad: np.ndarray, margin_x: float, margin_y: float) -> np.ndarray:
    """Grow an ordered quad (TL, TR, BR, BL) by fractions of its width and height on each side."""
    tl, tr, br, bl = np.asarray(quad, np.float32)
    dx = ((tr - tl) + (br - bl)) / 2 * margin_x
    dy = ((bl - tl) + (br - tr)) / 2 * margin_y
    return np.stack([tl - dx - dy, tr + dx - dy, br + dx + dy, bl - dx + dy]).astype(np.float32)


def crop_plate(image: np.ndarray, quad: np.ndarray, width: int, height: int, margin: tuple[float, float]) -> np.ndarray:
    """Rectified grayscale crop (height, width) uint8 of the plate ``quad`` in a BGR or gray image."""
    src = expand_quad(quad, *margin)
    dst = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    m = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(image, m, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if warped.ndim == 3:
        warped = cv2.cvtColor(warped, cv2.COLOR_BGR2GRAY)
    return warped


def encode_label(text: str, classes: str, length: int, blank: str) -> np.ndarray:
    """Class indices of ``text`` padded with the blank to ``length`` (the reader's training target)."""
    if len(text) > length:
        raise ValueError(f"'{text}' has {len(text)} characters; labels hold at most {length}")
    return np.array([classes.index(c) for c in text.ljust(length, blank)], np.int32)


def decode_ctc(probs: np.ndarray, classes: str, blank: str) -> PlateText:
    """Greedy CTC read of (timesteps, classes) probabilities, with no format applied (training, export checks).

    Runs of one class merge and blanks drop out; each character's probability
    is its peak over its run, and the confidence is ``read_confidence`` of them.
    """
    text, peaks = greedy_peaks(probs, classes, blank)
    char_probs = tuple(float(probs[t, classes.index(c)]) for t, c in zip(peaks, text, strict=True))
    return PlateText(text, None, None, char_probs, text)


class PlateReader:
    """Runs the reader model on plate quads of a frame and decodes its columns with the model's plate formats.

    ``extra_formats`` adds countries to those the model carries (a user's own
    country files); ``max_cost`` is the decoding's tolerance (``edge.formats``).
    """

    def __init__(self, model: Model, extra_formats: FormatSet | None = None,
                 max_cost: float = DEFAULT_MAX_COST) -> None:
        self.model = model
        _, self.height, self.width, channels = model.input.shape
        if channels != 1:
            raise ModelError(f"{model.path}: reader input must be grayscale (1 channel), has {channels}")
        cfg = model.meta.reader
        if cfg is None:
            raise ModelError(f"{model.path}: metadata has no 'reader' section")
        self.classes = cfg.classes
        self.blank = cfg.blank
        self.margin = (float(cfg.crop_margin[0]), float(cfg.crop_margin[1]))
        self.formats = reader_formats(model.meta, model.path.with_suffix(".json"))
        if extra_formats is not None:
            self.formats = self.formats.merged(extra_formats)
        self.max_cost = max_cost
        if model.output.shape[-1] != len(self.classes):
            raise ModelError(
                f"{model.path}: output shape {list(model.output.shape)} does not match the metadata's "
                f"{len(self.classes)} classes"
            )

    def crop(self, image: np.ndarray, quad: np.ndarray) -> np.ndarray:
        """The reader's uint8 input for one plate quad."""
        return crop_plate(image, quad, self.width, self.height, self.margin)

    def columns(self, crop: np.ndarray) -> np.ndarray:
        """The reader's (timesteps, classes) probabilities for one prepared crop."""
        return self.model.run_pixels(crop)

    def read_crop(self, crop: np.ndarray) -> PlateText:
        """Read one prepared crop: the format-decoded text."""
        return self.formats.decode(self.columns(crop), self.classes, self.blank, self.max_cost)
