"""Evaluate model sets through the edge pipeline: labelled folders and held-out synthetic data.

Everything runs through ``edge.pipeline.Pipeline``, the code the device runs,
so float and int8 model sets are compared on equal terms.
"""
from __future__ import annotations

import itertools
import math
import statistics
import time
from collections import Counter
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from edge.detect import Detection, box_iou
from edge.pipeline import Pipeline
from edge.plates import normalize, similarity
from trainer.data import jitter_quad
from trainer.synth import catalogue, make_plate_patch, make_scene

LENIENT = str.maketrans({"O": "0", "I": "1"})


def read_labels(folder: Path) -> list[dict]:
    """Rows of ``labels.tsv`` (header line, then file, text[, x1, y1, x2, y2])."""
    path = folder / "labels.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no labels.tsv in this folder")
    rows = []
    for n, line in enumerate(path.read_text().splitlines()[1:], start=2):
        parts = line.split("\t")
        if len(parts) < 2:
            raise ValueError(f"{path}:{n}: expected file<TAB>text[<TAB>x1 y1 x2 y2], got {line!r}")
        row: dict[str, Any] = {"file": parts[0], "text": normalize(parts[1])}
        if len(parts) >= 6:
            row["box"] = [float(v) for v in parts[2:6]]
        rows.append(row)
    return rows


def _char_accuracy(truth: str, read: str) -> float:
    """1 - normalised edit distance between the true and the read text."""
    return similarity(truth, read) if truth else float(not read)


HEIGHT_BINS = (0, 15, 20, 30, 45, 70, 100, 10_000)


def confusions(rows: list[dict], top: int = 12) -> list[tuple[str, str, int]]:
    """Most frequent (truth char, read char) substitutions, from an edit alignment of each pair."""
    counts: Counter[tuple[str, str]] = Counter()
    for r in rows:
        for op, i1, i2, j1, j2 in SequenceMatcher(None, r["truth"], r["read"], autojunk=False).get_opcodes():
            if op == "replace" and i2 - i1 == j2 - j1:
                counts.update(zip(r["truth"][i1:i2], r["read"][j1:j2], strict=True))
    return [(a, b, n) for (a, b), n in counts.most_common(top)]


def by_height(rows: list[dict]) -> list[dict]:
    """Exact match per plate-height bin (pixels in the original image)."""
    out = []
    for lo, hi in itertools.pairwise(HEIGHT_BINS):
        sub = [r for r in rows if r.get("height") is not None and lo <= r["height"] < hi]
        if sub:
            out.append({"height_px": f"{lo}-{hi}" if hi < 10_000 else f"{lo}+", "n": len(sub),
                        "exact": sum(r["read"] == r["truth"] for r in sub) / len(sub)})
    return out


def _summary(rows: list[dict]) -> dict:
    n = len(rows)
    lat = sorted(r["ms"] for r in rows)
    boxed = [r for r in rows if r.get("found") is not None]
    return {
        "images": n,
        "exact": sum(r["read"] == r["truth"] for r in rows) / n if n else 0.0,
        "lenient": sum(r["read"].translate(LENIENT) == r["truth"].translate(LENIENT) for r in rows) / n if n else 0.0,
        "char_accuracy": statistics.fmean(_char_accuracy(r["truth"], r["read"]) for r in rows) if n else 0.0,
        "det_recall": sum(r["found"] for r in boxed) / len(boxed) if boxed else None,
        "latency_ms_median": statistics.median(lat) if lat else None,
        "latency_ms_p95": lat[min(n - 1, int(0.95 * n))] if lat else None,
        "confusions": confusions(rows),
        "by_height": by_height(rows),
    }


def evaluate_folder(
    pipeline: Pipeline, folder: Path, limit: int | None = None, progress: bool = True, gallery: int = 48
) -> dict:
    """Exact match of the best plate, and detection recall where boxes are given.

    ``gallery`` failures are kept as (crop, truth, read) under ``"gallery"``
    for a picture; the rest of the result is plain JSON.
    """
    rows: list[dict] = []
    failures: list[tuple[np.ndarray, str, str]] = []
    labels = read_labels(folder)[:limit] if limit else read_labels(folder)
    for lab in tqdm(labels, desc=folder.name, unit="img", disable=not progress):
        start = time.perf_counter()
        image = cv2.imread(str(folder / lab["file"]))
        if image is None:
            raise ValueError(f"{folder / lab['file']}: cannot read image")
        reads = pipeline(image)
        ms = (time.perf_counter() - start) * 1000
        best = reads[0] if reads else None
        row = {"file": lab["file"], "truth": lab["text"], "read": best.text if best else "", "ms": ms}
        gt_box = lab.get("box")
        ref_box = gt_box or (best.detection.box if best else None)
        row["height"] = round(ref_box[3] - ref_box[1], 1) if ref_box else None
        if gt_box:
            row["found"] = any(box_iou(r.detection.box, gt_box) >= 0.5 for r in reads)
        rows.append(row)
        if row["read"] != row["truth"] and len(failures) < gallery:
            if best is not None:
                crop = pipeline.reader.crop(image, best.detection.quad)
            elif gt_box:
                x1, y1, x2, y2 = gt_box
                quad = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float32)
                crop = pipeline.reader.crop(image, quad)
            else:
                crop = cv2.cvtColor(cv2.resize(image, (pipeline.reader.width, pipeline.reader.height)),
                                    cv2.COLOR_BGR2GRAY)
            failures.append((crop, row["truth"], row["read"] or ("(missed)" if gt_box else "(none)")))
    return {"summary": _summary(rows), "rows": rows, "gallery": failures}


def evaluate_synthetic_reader(pipeline: Pipeline, n: int, seed: int, progress: bool = True) -> dict:
    """Reader alone on held-out synthetic plate patches, from detector-like quads.

    Each row's ``height`` is the plate's height as its camera recorded it, so ``by_height`` shows how small
    a plate the reader still reads.
    """
    rows = []
    for i in tqdm(range(n), desc="synthetic plates", unit="img", disable=not progress):
        rng = np.random.default_rng((seed, i))
        scene = make_plate_patch(rng)
        plate = scene.plates[0]
        quad = jitter_quad(rng, plate.quad, 0.06)
        det = Detection(quad, (*quad.min(axis=0), *quad.max(axis=0)), 1.0)
        start = time.perf_counter()
        reads = pipeline.read_detections(scene.image, [det])
        seen = None if plate.seen_height is None else round(plate.seen_height, 1)
        rows.append({"truth": plate.text, "read": reads[0].text if reads else "", "format": plate.format,
                     "country": catalogue().entry(plate.format).country.code,
                     "ms": (time.perf_counter() - start) * 1000, "height": seen})
    return {"summary": _summary(rows) | {"by_format": _exact_by(rows, "format"),
                                         "by_country": _exact_by(rows, "country")},
            "rows": rows}


def _exact_by(rows: list[dict], key: str) -> dict[str, dict]:
    """Exact match per value of ``key`` (format or country)."""
    out = {}
    for value in sorted({r[key] for r in rows}):
        sub = [r for r in rows if r[key] == value]
        out[value] = {"n": len(sub), "exact": sum(r["read"] == r["truth"] for r in sub) / len(sub)}
    return out


def evaluate_synthetic_scenes(pipeline: Pipeline, n: int, seed: int, progress: bool = True) -> dict:
    """Full pipeline on held-out synthetic scenes: each labelled plate found (IoU >= 0.5) and read."""
    found = read_ok = total = false_pos = 0
    for i in tqdm(range(n), desc="synthetic scenes", unit="img", disable=not progress):
        rng = np.random.default_rng((seed, i))
        scene = make_scene(rng, width=int(rng.integers(480, 1280)), height=int(rng.integers(360, 960)))
        reads = pipeline(scene.image)
        matched = set()
        for plate in scene.plates:
            total += 1
            box = (*plate.quad.min(axis=0), *plate.quad.max(axis=0))
            hits = [k for k, r in enumerate(reads) if box_iou(r.detection.box, box) >= 0.5]
            if hits:
                found += 1
                matched.update(hits)
                read_ok += any(reads[k].text == plate.text for k in hits)
        false_pos += len(set(range(len(reads))) - matched)
    return {"summary": {"scenes": n, "plates": total, "det_recall": found / total if total else None,
                        "read_recall": read_ok / total if total else None,
                        "false_reads_per_scene": false_pos / n if n else 0.0}}


def _figure(value: float | None, width: int, decimals: int) -> str:
    """``value`` right-aligned in ``width`` columns, or ``-`` where there is no such figure."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{'-':>{width}}"
    return f"{value:>{width}.{decimals}f}"


def summary_table(report: dict) -> str:
    """The report as the table `trainer evaluate` prints: a row per model set and set, ``-`` for a figure
    the set does not have (no lenient match for scenes, no boxes to find, no latency)."""
    lines = [f"{'models':<28}{'set':<18}{'n':>6}{'exact':>8}{'lenient':>9}{'chars':>7}{'det@.5':>8}{'ms':>7}"]
    for name, res in report.items():
        for set_name, r in res.items():
            s = r["summary"]
            n = s.get("images", s.get("plates", 0))
            exact = s["exact"] if "exact" in s else s.get("read_recall")
            lines.append(f"{name[-27:]:<28}{set_name:<18}{n:>6}{_figure(exact, 8, 3)}{_figure(s.get('lenient'), 9, 3)}"
                         f"{_figure(s.get('char_accuracy'), 7, 3)}{_figure(s.get('det_recall'), 8, 3)}"
                         f"{_figure(s.get('latency_ms_median'), 7, 1)}")
            if s.get("confusions"):
                lines.append(f"{'':<28}  most confused (truth>read): "
                             + ", ".join(f"{a}>{b} {k}" for a, b, k in s["confusions"][:8]))
            if s.get("by_height"):
                lines.append(f"{'':<28}  exact by plate height (px): "
                             + ", ".join(f"{b['height_px']}: {b['exact']:.3f} ({b['n']})" for b in s["by_height"]))
            if s.get("by_country"):
                lines.append(f"{'':<28}  exact by country: "
                             + ", ".join(f"{c} {b['exact']:.2f} ({b['n']})" for c, b in s["by_country"].items()))
    return "\n".join(lines)
