"""Training targets are made through the edge's pre-processing and match the labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.plates import BLANK, MAX_CHARS, READER_CLASSES
from trainer.data import (
    PLATE_MAX_WEIGHT,
    PLATE_REF_CELLS,
    generate,
    jitter_quad,
    load_set,
    plate_mask,
    plate_weights,
    save_set,
    transplant_plate,
)
from trainer.evaluate import read_labels


def test_plate_mask_covers_the_quad_cells() -> None:
    quad = np.array([[40, 20], [120, 20], [120, 36], [40, 36]], np.float32)
    m = plate_mask([quad], 64, 160, stride=4)
    assert m.shape == (16, 40)
    assert m[6:8, 11:29].min() == pytest.approx(1.0)  # cells fully inside the plate
    assert m[:4].max() == 0 and m[10:].max() == 0 and m[:, :9].max() == 0


def test_small_plates_weigh_more_in_the_detector_loss() -> None:
    big = np.array([[40, 40], [240, 40], [240, 100], [40, 100]], np.float32)  # 50 x 15 cells
    small = np.array([[300, 200], [324, 200], [324, 208], [300, 208]], np.float32)  # 6 x 2 cells
    tiny = np.array([[100, 200], [108, 200], [108, 204], [100, 204]], np.float32)  # 2 x 1 cells
    target = plate_mask([big, small, tiny], 256, 384, stride=4)
    w = plate_weights(target)
    assert w.shape == target.shape and w.min() == 1.0
    assert w[12:24, 12:58].max() == 1.0  # a large plate weighs as much as the background
    area = target[45:57, 70:86].sum()
    assert w[50:52, 75:81] == pytest.approx(np.sqrt(PLATE_REF_CELLS / area))  # the small plate's cells ...
    assert w[49, 74] == w[50, 75] and w[52, 81] == w[50, 75]  # ... and the ring around them
    assert w[47, 75] == 1.0 and w[51, 72] == 1.0  # further out: background
    assert w[50, 25:27].min() == PLATE_MAX_WEIGHT  # the tiny plate: capped


def test_transplanted_plate_brings_its_pixels_and_its_target() -> None:
    rng = np.random.default_rng(3)
    donor = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    quad = np.array([[40, 40], [88, 40], [88, 56], [40, 56]], np.float32)  # 12 x 4 cells
    donor_target = np.round(plate_mask([quad], 96, 128, stride=4) * 255).astype(np.uint8)
    image = np.full((64, 64, 3), 90, np.uint8)
    target = np.zeros((16, 16), np.uint8)
    assert transplant_plate(rng, image, target, donor, donor_target, 4)
    ys, xs = np.nonzero(target >= 128)
    assert (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == (4, 12)  # the whole plate, as many cells
    assert np.array_equal(image[ys.min() * 4 : ys.max() * 4 + 4, xs.min() * 4 : xs.max() * 4 + 4],
                          donor[40:56, 40:88])  # the plate's own pixels, unblended
    far = np.ones((64, 64), bool)
    far[max(0, ys.min() * 4 - 8) : ys.max() * 4 + 12, max(0, xs.min() * 4 - 8) : xs.max() * 4 + 12] = False
    assert (image[far] == 90).all()  # beyond the faded cell around it, the image is untouched


def test_transplant_needs_a_plate_and_room() -> None:
    rng = np.random.default_rng(0)
    donor = np.zeros((96, 128, 3), np.uint8)
    image, target = np.full((64, 64, 3), 90, np.uint8), np.zeros((16, 16), np.uint8)
    assert not transplant_plate(rng, image, target, donor, np.zeros((24, 32), np.uint8), 4)  # no plate to give
    full = np.full((16, 16), 255, np.uint8)  # every cell already a plate: no room
    quad = np.array([[40, 40], [88, 40], [88, 56], [40, 56]], np.float32)
    donor_target = np.round(plate_mask([quad], 96, 128, stride=4) * 255).astype(np.uint8)
    assert not transplant_plate(rng, image, full, donor, donor_target, 4)
    assert (image == 90).all() and (target == 0).all()


def test_jitter_quad_stays_near_the_plate() -> None:
    quad = np.array([[100, 100], [300, 110], [298, 160], [98, 150]], np.float32)
    rng = np.random.default_rng(0)
    for _ in range(50):
        q = jitter_quad(rng, quad, 0.06)
        assert np.abs(q.mean(axis=0) - quad.mean(axis=0)).max() < 20
        assert 150 < np.linalg.norm(q[1] - q[0]) < 260


def test_reader_set_labels_decode_back_to_text(tmp_path: Path) -> None:
    data = generate("reader", 12, seed=3, workers=1, progress=False)
    assert data["x"].shape == (12, 64, 192) and data["x"].dtype == np.uint8
    for y, text in zip(data["y"], data["text"], strict=True):
        top, bottom = ("".join(READER_CLASSES[k] for k in half).rstrip(BLANK)
                       for half in (y[:MAX_CHARS], y[MAX_CHARS:]))
        assert top + bottom == text and top
    assert data["y"].shape == (12, 2 * MAX_CHARS)
    save_set(tmp_path / "r.npz", data, {"kind": "reader"})
    back = load_set(tmp_path / "r.npz")
    np.testing.assert_array_equal(back["x"], data["x"])


def test_generation_is_deterministic() -> None:
    a = generate("detector", 2, seed=9, workers=1, progress=False)
    b = generate("detector", 2, seed=9, workers=1, progress=False)
    np.testing.assert_array_equal(a["x"], b["x"])
    assert a["y"].shape == (2, 96, 128)


def test_missing_set_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.npz: data set not found"):
        load_set(tmp_path / "nope.npz")


def test_bad_labels_line_is_named(tmp_path: Path) -> None:
    (tmp_path / "labels.tsv").write_text("file\ttext\nonly_a_file.jpg\n")
    with pytest.raises(ValueError, match=r"labels.tsv:2: expected file<TAB>text"):
        read_labels(tmp_path)
