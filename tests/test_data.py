"""Training targets are made through the edge's pre-processing and match the labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.plates import BLANK, MAX_CHARS, READER_CLASSES
from trainer.data import generate, jitter_quad, load_set, plate_mask, save_set
from trainer.evaluate import read_labels


def test_plate_mask_covers_the_quad_cells() -> None:
    quad = np.array([[40, 20], [120, 20], [120, 36], [40, 36]], np.float32)
    m = plate_mask([quad], 64, 160, stride=4)
    assert m.shape == (16, 40)
    assert m[6:8, 11:29].min() == pytest.approx(1.0)  # cells fully inside the plate
    assert m[:4].max() == 0 and m[10:].max() == 0 and m[:, :9].max() == 0


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
    for y, text in zip(data["y"], data["text"]):
        top, bottom = ("".join(READER_CLASSES[k] for k in half).rstrip(BLANK) for half in (y[:MAX_CHARS], y[MAX_CHARS:]))
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
    with pytest.raises(FileNotFoundError, match="nope.npz: data set not found"):
        load_set(tmp_path / "nope.npz")


def test_bad_labels_line_is_named(tmp_path: Path) -> None:
    (tmp_path / "labels.tsv").write_text("file\ttext\nonly_a_file.jpg\n")
    with pytest.raises(ValueError, match=r"labels.tsv:2: expected file<TAB>text"):
        read_labels(tmp_path)
