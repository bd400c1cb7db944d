"""Reader pre-processing (rectified crops) and slot decoding."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge.plates import BLANK, MAX_CHARS, READER_CLASSES
from edge.recognize import crop_plate, decode_ctc, encode_label, expand_quad


def _columns(pattern: str, p: float = 0.9) -> np.ndarray:
    """Per-column probabilities whose argmax spells ``pattern`` (``_`` = blank)."""
    probs = np.full((len(pattern), len(READER_CLASSES)), (1 - p) / (len(READER_CLASSES) - 1), np.float32)
    probs[np.arange(len(pattern)), [READER_CLASSES.index(c) for c in pattern]] = p
    return probs


def test_ctc_greedy_merges_runs_and_drops_blanks() -> None:
    read = decode_ctc(_columns("__ZZ_G__11_2_33_4__AAB_"), READER_CLASSES, BLANK)
    assert read.text == "ZG1234AB" and read.format is None
    assert read.confidence == pytest.approx(0.9)
    assert read.char_probs == pytest.approx((0.9,) * 8)


def test_ctc_repeated_character_needs_a_blank_between() -> None:
    assert decode_ctc(_columns("_11_1__"), READER_CLASSES, BLANK).text == "11"


def test_ctc_confidence_is_the_geometric_mean_of_the_character_peaks() -> None:
    probs = _columns("_A_B_C_")
    probs[3] = 0.0
    probs[3, READER_CLASSES.index("B")] = 0.55
    probs[3, READER_CLASSES.index("8")] = 0.45
    read = decode_ctc(probs, READER_CLASSES, BLANK)
    assert read.text == "ABC" and read.char_probs == pytest.approx((0.9, 0.55, 0.9))
    assert read.confidence == pytest.approx((0.9 * 0.55 * 0.9) ** (1 / 3))


def test_encode_label_pads_with_blank_and_rejects_too_long_text() -> None:
    assert "".join(READER_CLASSES[k] for k in encode_label("AB1", READER_CLASSES, 5, BLANK)) == "AB1__"
    with pytest.raises(ValueError, match="at most"):
        encode_label("A" * (MAX_CHARS + 1), READER_CLASSES, MAX_CHARS, BLANK)


def test_decode_rejects_wrong_class_count() -> None:
    with pytest.raises(ValueError, match="classes"):
        decode_ctc(np.zeros((20, 5)), READER_CLASSES, BLANK)


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
