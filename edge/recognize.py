"""Plate reader: rectify a plate quad to the reader's input, run it, decode the text.

The reader network sees a grayscale, perspective-rectified crop of the plate
(plus a small margin) and outputs a probability over the alphabet and a CTC
blank for each of a sequence of columns: the columns of the top row, then
those of the bottom row, so one-row and two-row plates decode the same way.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge.model import Model, ModelError


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


@dataclass(frozen=True)
class TextRead:
    """Decoded reader output."""

    text: str
    confidence: float
    #: Per character of ``text``: plausible characters and their probabilities.
    alternatives: list[dict[str, float]]


def encode_label(text: str, classes: str, length: int, blank: str) -> np.ndarray:
    """Class indices of ``text`` padded with the blank to ``length`` (the reader's training target)."""
    if len(text) > length:
        raise ValueError(f"'{text}' has {len(text)} characters; labels hold at most {length}")
    return np.array([classes.index(c) for c in text.ljust(length, blank)], np.int32)


def decode_ctc(probs: np.ndarray, classes: str, blank: str, keep: float = 0.01) -> TextRead:
    """Greedy CTC decoding of (timesteps, classes) probabilities.

    The best class per column; runs of the same class merge and blanks drop
    out. Each character's probability is its peak over its run; the read's
    confidence is the lowest of those, so one doubtful character makes a
    doubtful plate.
    """
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise ValueError(f"reader output shape {probs.shape} does not fit {len(classes)} classes")
    blank_k = classes.index(blank)
    best = probs.argmax(axis=1)
    peaks: list[int] = []  # timestep of each character's peak probability
    prev = blank_k
    for t, k in enumerate(best):
        if k != blank_k:
            if k != prev:
                peaks.append(t)
            elif probs[t, k] > probs[peaks[-1], k]:
                peaks[-1] = t
        prev = k
    text = "".join(classes[best[t]] for t in peaks)
    conf = min((float(probs[t, best[t]]) for t in peaks), default=0.0)
    alts = [{classes[j]: float(probs[t, j]) for j in np.nonzero(probs[t] >= keep)[0] if j != blank_k} for t in peaks]
    return TextRead(text, conf, alts)


class PlateReader:
    """Runs the reader model on plate quads of a frame."""

    def __init__(self, model: Model) -> None:
        self.model = model
        _, self.height, self.width, channels = model.input.shape
        if channels != 1:
            raise ModelError(f"{model.path}: reader input must be grayscale (1 channel), has {channels}")
        cfg = model.meta["reader"]
        if cfg.get("decoding") != "ctc-greedy":
            raise ModelError(f"{model.path}: reader decoding '{cfg.get('decoding')}' is not supported (ctc-greedy)")
        self.classes: str = cfg["classes"]
        self.blank: str = cfg["blank"]
        self.margin = (float(cfg["crop_margin"][0]), float(cfg["crop_margin"][1]))
        if model.output.shape[-1] != len(self.classes) or self.blank not in self.classes:
            raise ModelError(
                f"{model.path}: output shape {list(model.output.shape)} does not match the metadata's "
                f"{len(self.classes)} classes with blank '{self.blank}'"
            )

    def crop(self, image: np.ndarray, quad: np.ndarray) -> np.ndarray:
        """The reader's uint8 input for one plate quad."""
        return crop_plate(image, quad, self.width, self.height, self.margin)

    def read_crop(self, crop: np.ndarray) -> TextRead:
        """Read one prepared crop."""
        return decode_ctc(self.model.run_pixels(crop), self.classes, self.blank)
