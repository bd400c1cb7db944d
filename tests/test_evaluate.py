"""Evaluation arithmetic, its printed table and pictures: confusions, accuracy by height, gallery and charts."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from trainer.evaluate import _summary, by_height, confusions, summary_table
from trainer.report import write_pictures


def _rows() -> list[dict]:
    return [
        {"truth": "AB12CDE", "read": "AB12CDE", "ms": 5.0, "height": 18, "found": True},
        {"truth": "ZG900DO", "read": "ZG900D0", "ms": 6.0, "height": 40, "found": True},
        {"truth": "IEP1025", "read": "1EP1025", "ms": 7.0, "height": 41, "found": False},
        {"truth": "B8S5", "read": "", "ms": 4.0, "height": None},
    ]


def test_confusions_count_aligned_substitutions() -> None:
    assert confusions(_rows()) == [("O", "0", 1), ("I", "1", 1)]


def test_by_height_bins_only_rows_with_a_height() -> None:
    bins = by_height(_rows())
    assert bins == [{"height_px": "15-20", "n": 1, "exact": 1.0}, {"height_px": "30-45", "n": 2, "exact": 0.0}]


def test_summary_figures() -> None:
    s = _summary(_rows())
    assert s["exact"] == 0.25 and s["lenient"] == 0.75
    assert s["det_recall"] == 2 / 3
    assert s["latency_ms_median"] == 5.5


def test_pictures_are_written_and_gallery_leaves_the_json(tmp_path: Path) -> None:
    crop = np.full((64, 192), 200, np.uint8)
    report = {"models/int8": {"setA": {"summary": _summary(_rows()), "rows": _rows(),
                                       "gallery": [(crop, "ZG900DO", "ZG900D0")]}}}
    written = write_pictures(report, tmp_path / "eval.json")
    assert "gallery" not in report["models/int8"]["setA"]
    assert len(written) == 2
    for p in written:
        img = cv2.imread(str(p))
        assert img is not None and img.shape[0] > 50


def test_summary_table_prints_a_dash_where_a_figure_is_missing() -> None:
    no_boxes = [{k: v for k, v in r.items() if k != "found"} for r in _rows()]
    report = {"models/int8": {
        "setA": {"summary": _summary(_rows())},
        "unboxed": {"summary": _summary(no_boxes) | {"latency_ms_median": None}},
        "synthetic_scenes": {"summary": {"scenes": 4, "plates": 0, "det_recall": None, "read_recall": None,
                                         "false_reads_per_scene": 0.0}},
    }}
    table = summary_table(report)
    assert "None" not in table and "nan" not in table
    rows = {line.split()[1]: line.split()[2:] for line in table.splitlines()[1:] if line.startswith("models")}
    assert rows["setA"] == ["4", "0.250", "0.750", "0.679", "0.667", "5.5"]
    assert rows["unboxed"] == ["4", "0.250", "0.750", "0.679", "-", "-"]
    # Scenes have no lenient match and no character accuracy; no plates, so no recall either.
    assert rows["synthetic_scenes"] == ["0", "-", "-", "-", "-", "-"]
