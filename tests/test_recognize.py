"""Reader pre-processing (rectified crops) and slot decoding."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge.plates import MAX_SLOTS, PAD, READER_CLASSES
from edge.recognize import crop_plate, decode_slots, encode_slots, expand_quad


def _one_hot(text: str, p: float = 0.9) -> np.ndarray:
    idx = encode_slots(text, READER_CLASSES, MAX_SLOTS, PAD)
    probs = np.full((MAX_SLOTS, len(READER_CLASSES)), (1 - p) / (len(READER_CLASSES) - 1), np.float32)
    probs[np.arange(MAX_SLOTS), idx] = p
    return probs


def test_encode_decode_round_trip() -> None:
    read = decode_slots(_one_hot("ZG1234AB"), READER_CLASSES, PAD)
    assert read.text == "ZG1234AB"
    assert read.confidence == pytest.approx(0.9)
    assert len(read.alternatives) == 8 and read.alternatives[0]["Z"] == pytest.approx(0.9)


def test_encode_rejects_too_long_text() -> None:
    with pytest.raises(ValueError, match="slots"):
        encode_slots("A" * (MAX_SLOTS + 1), READER_CLASSES, MAX_SLOTS, PAD)


def test_decode_confidence_counts_doubtful_pad() -> None:
    probs = _one_hot("AB12CDE")
    probs[7] = 0.0
    probs[7, READER_CLASSES.index(PAD)] = 0.55
    probs[7, READER_CLASSES.index("X")] = 0.45
    read = decode_slots(probs, READER_CLASSES, PAD)
    assert read.text == "AB12CDE" and read.confidence == pytest.approx(0.55)


def test_decode_rejects_wrong_class_count() -> None:
    with pytest.raises(ValueError, match="classes"):
        decode_slots(np.zeros((MAX_SLOTS, 5)), READER_CLASSES, PAD)


def test_expand_quad_grows_on_each_side() -> None:
    quad = np.array([[10, 10], [110, 10], [110, 30], [10, 30]], np.float32)
    big = expand_quad(quad, 0.1, 0.5)
    np.testing.assert_allclose(big, [[0, 0], [120, 0], [120, 40], [0, 40]])


def test_crop_rectifies_a_tilted_plate() -> None:
    # A white plate with a black bar on its left half, rotated 20 degrees in a dark frame.
    image = np.zeros((200, 300, 3), np.uint8)
    plate = np.array([[60, 80], [220, 80], [220, 120], [60, 120]], np.float32)
    rot = cv2.getRotationMatrix2D((140, 100), 20, 1.0)
    quad = cv2.transform(plate[None], rot)[0]
    cv2.fillPoly(image, [quad.astype(np.int32)], (255, 255, 255))
    left = cv2.transform(np.array([[[60, 80], [140, 80], [140, 120], [60, 120]]], np.float32), rot)[0]
    cv2.fillPoly(image, [left.astype(np.int32)], (0, 0, 0))
    crop = crop_plate(image, quad, 96, 32, (0.0, 0.0))
    assert crop.shape == (32, 96) and crop.dtype == np.uint8
    assert crop[4:-4, 6:42].mean() < 40, "left half of the plate should be the dark bar"
    assert crop[4:-4, 54:90].mean() > 215, "right half should be white plate"
