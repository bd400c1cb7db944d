"""Plate reader: rectify a plate quad to the reader's input, run it, decode the slots.

The reader network sees a grayscale, perspective-rectified crop of the plate
(plus a small margin) and outputs, for each of a fixed number of character
slots, a probability over the alphabet and a pad symbol. Text is read left to
right, top row then bottom row, so two-row plates decode the same way.
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
class SlotRead:
    """Decoded reader output."""

    text: str
    confidence: float
    #: Per character of ``text``: plausible characters and their probabilities.
    alternatives: list[dict[str, float]]


def encode_slots(text: str, classes: str, slots: int, pad: str) -> np.ndarray:
    """Class index per slot for ``text``: characters left-aligned, then pads (the reader's target)."""
    if len(text) > slots:
        raise ValueError(f"'{text}' has {len(text)} characters; the reader has {slots} slots")
    return np.array([classes.index(c) for c in text.ljust(slots, pad)], np.int32)


def decode_slots(probs: np.ndarray, classes: str, pad: str, keep: float = 0.01) -> SlotRead:
    """Decode (slots, classes) probabilities: argmax per slot, pads dropped.

    Confidence is the lowest per-slot probability over all slots (pads
    included), so a doubtful pad, which would change the length, counts too.
    """
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise ValueError(f"reader output shape {probs.shape} does not fit {len(classes)} classes")
    best = probs.argmax(axis=1)
    text, alts = [], []
    for slot, k in enumerate(best):
        ch = classes[k]
        if ch == pad:
            continue
        text.append(ch)
        row = probs[slot]
        alts.append({classes[j]: float(row[j]) for j in np.nonzero(row >= keep)[0] if classes[j] != pad})
    conf = float(probs.max(axis=1).min()) if len(probs) else 0.0
    return SlotRead("".join(text), conf, alts)


class PlateReader:
    """Runs the reader model on plate quads of a frame."""

    def __init__(self, model: Model) -> None:
        self.model = model
        _, self.height, self.width, channels = model.input.shape
        if channels != 1:
            raise ModelError(f"{model.path}: reader input must be grayscale (1 channel), has {channels}")
        cfg = model.meta["reader"]
        self.classes: str = cfg["classes"]
        self.pad: str = cfg["pad"]
        self.margin = (float(cfg["crop_margin"][0]), float(cfg["crop_margin"][1]))
        slots, n_classes = model.output.shape[-2:]
        if n_classes != len(self.classes) or slots != int(cfg["slots"]):
            raise ModelError(
                f"{model.path}: output shape {list(model.output.shape)} does not match metadata "
                f"({cfg['slots']} slots x {len(self.classes)} classes)"
            )

    def crop(self, image: np.ndarray, quad: np.ndarray) -> np.ndarray:
        """The reader's uint8 input for one plate quad."""
        return crop_plate(image, quad, self.width, self.height, self.margin)

    def read_crop(self, crop: np.ndarray) -> SlotRead:
        """Read one prepared crop."""
        return decode_slots(self.model.run_pixels(crop), self.classes, self.pad)
