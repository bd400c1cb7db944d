"""Fine-tune a model set on your own labelled plates: ``python -m trainer finetune``.

A labelled folder is a folder of images with a ``labels.tsv`` in the format of
the shared real sets: a header line, then ``file<TAB>text[<TAB>x1<TAB>y1<TAB>x2<TAB>y2]``
(``python -m edge collect pack`` writes one, ``python -m trainer review``
corrects it). From such folders the command:

1. reads the rows, skipping (and counting) rows that are no plate: a text of
   ``-`` or one with no letter or digit, and rows that ``review.json`` marks
   ``not_plate`` (the review page also takes such rows out of labels.tsv).
   Where a ``review.json`` exists, only rows the review accepted or corrected
   are used unless ``--unreviewed``;
2. splits the plates by text: a text whose salted SHA-256 falls below
   ``--holdout`` is held out, so the same plate never lands on both sides;
3. cuts reader crops of each training plate through the edge's own crop code
   (``PlateReader.crop``) from detector-like rectangles jittered as the
   synthesizer jitters them: around the box where one is given; around the
   plate of a collected crop (a packed folder's row without a box); else around
   the plate the starting detector finds whose read is closest to the label
   (or, where no plate read is close, the closest of every box its search read).
   Where a box is given, every second crop is cut around the box the starting
   search read that plate in instead: that box, not a labeller's, is what the
   device's reader reads.
   Labels are per row, as the synthesizer's: a plate on which the starting
   reader reads two rows (characters from both of its heads) is labelled in two
   rows, cut where the label best matches those reads. What else the starting
   models read in a frame whose labels were all placed (a sign, a badge) is
   cut too, labelled with no text (``--negative-crops``): a reader tuned on
   real crops alone grows sure of such lettering. A read there that is within
   one edit of a format holding a good share of the labelled plates (the
   format prior learnt from them), at a length those plates have, is taken
   for another vehicle's plate that the labels leave out, and is not cut:
   taught as no text, it would teach the reader to drop the characters of the
   very plates it is tuned for;
4. mixes them with freshly synthesized crops (``--synthetic-share`` of the
   samples) so that formats missing from the user's plates are not forgotten,
   and, with ``--detector``, the full frames with boxes with synthetic scenes;
5. scores the starting set on the held-out images (the pipeline's best read,
   exact, as ``run_eval.py`` scores it) and on synthetic plates;
6. trains from the int8 set (``trainer.train``'s ``init``), the detector
   first with ``--detector``, within the time ``--minutes`` leaves, exports
   int8, writes OUT as a complete model set with its ``MODEL_CARD.md``, and
   scores it as in 5. The reader carries a format prior learnt from the
   training plates (``FormatSet.learn_prior``): decoding then favours the
   formats the user's camera sees (``--no-format-prior``: it does not).
   The reader carries the starting reader's formats with those the synthetic
   plates are drawn from added (this checkout's ``countries/``, and ``--countries
   DIR``), and the prior is learnt over them all.

Everything but the model set lives in OUT/work; a rerun of the same command
resumes where the last one stopped (prepared data, scores and training are
kept), ``--fresh`` starts over.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np
from tqdm import tqdm

from edge.detect import box_iou, letterbox, overlap
from edge.events import CROP_MARGIN_X, CROP_MARGIN_Y
from edge.formats import COUNTRIES_DIR, FormatPrior, FormatSet, PlateText, greedy_peaks
from edge.model import (
    DEFAULT_MODELS,
    WIDE_DETECTOR,
    ModelError,
    ModelKind,
    load_model_set,
    model_paths,
    read_metadata,
)
from edge.pipeline import FrameReads, Pipeline, PlateRead
from edge.plates import BLANK, MAX_CHARS, READER_CLASSES, normalize, similarity
from edge.recognize import PlateReader, encode_label
from trainer.data import DETECTOR_INPUT, DETECTOR_STRIDE, jitter_quad, plate_mask
from trainer.review import REVIEW, row_key

#: Version of OUT/work/finetune.json's layout.
STATE_FORMAT = 1
WORK, STATE, CARD = "work", "finetune.json", "MODEL_CARD.md"
#: Texts a row may carry for "no plate here" (beside review.json's ``not_plate``, whose rows leave labels.tsv).
NOT_A_PLATE = frozenset({"", "-"})
#: How far a detector-like rectangle is jittered: as ``trainer.data``'s reader samples and ``trainer.evaluate``.
JITTER = 0.06
#: A plate found by the detector stands for a label only when its read is at least this similar to it
#: (1 - edit distance / length, O and 0, I and 1 taken as the same: 0.6 lets 2 of 6 characters differ).
MIN_SIMILARITY = 0.6
LENIENT = str.maketrans({"O": "0", "I": "1"})
#: Every second crop of a plate with a labelled box is cut around the box the starting search read it in
#: (``PlateRead.detection``): on the device the reader reads that box, whose edges fall elsewhere than a
#: labeller's (a mask cell's width out, the plate frame taken in). It is the read whose box overlaps the label's
#: this much at least (intersection over union).
MIN_BOX_IOU = 0.3
#: A plate is labelled in two rows only when its rectangle is narrower than this (width / height): a one-row
#: plate is 2 (US) to 4.7 (EU) times as wide as tall, a two-row one 1.4 to 2.
TWO_ROW_MAX_ASPECT = 3.0
#: Things the starting pipeline reads in a training frame that are none of its labelled plates (signs, badges,
#: lettering) are taught as no text, so that fine-tuning on real crops does not make the reader sure of them:
#: at most this many per frame, each read at least this far from every label of the frame (a label misread stays
#: out), and only in frames whose every label was placed (a box, or a read close to it).
NEGATIVES_PER_FRAME = 4
NEGATIVE_MAX_SIMILARITY = 0.5
#: A thing read in a training frame within one edit of a format that holds at least this share of the labelled
#: plates (``FormatSet.learn_prior``) is another vehicle's plate the labels leave out, not a negative: seed480's
#: frames hold Greek plates of parked cars behind the labelled one, and a reader taught them as no text dropped
#: characters of the labelled plates (a 3 between digits).
CAMERA_FORMAT_SHARE = 0.05
#: Seed of the synthetic plates scored before and after (``trainer evaluate``'s default).
SYNTHETIC_EVAL_SEED = 999
#: The scores of a set, by key, and their names: the held-out plates, synthetic plates (the reader alone) and,
#: where the detector is fine-tuned, synthetic scenes (each plate found and read: "exact" is its read recall).
SCORED = (("heldout", "held-out plates"), ("synthetic_plates", "synthetic plates"),
          ("synthetic_scenes", "synthetic scenes"))
#: With --detector: the detector's share of the training time, and its batch and peak learning rate.
DETECTOR_SHARE = 0.35
DETECTOR_BATCH, DETECTOR_LR = 16, 3e-4
#: Passes over the reader's samples at most (--epochs); each user plate is 20 jittered crops, so 10 show it 200
#: times. Fine-tuned on either half of a real set, readers trained 10 epochs read the other half as well on
#: average as readers trained 17 to 22, in half the time; and a plan of whole epochs, not of the time a machine
#: happens to take, makes the same command give the same reader wherever it has the time.
READER_EPOCHS = 10
#: The reader's peak learning rate (--lr). A few hundred plates pull a reader away from what it read right
#: before as much as they teach it: on the half of a shared real set not trained on, 2e-4 read 1 or 2 images
#: more than 4e-4 in three of the four folds and 1 fewer in the fourth, and 1 more than 1e-4 on the fold tried.
READER_LR = 2e-4
#: Validation samples of the user's own (unaugmented crops or frames of training plates) at most per kind.
MAX_VAL_USER = {"reader": 200, "detector": 32}
#: Distinct synthetic reader crops drawn at most (about a minute on 2 cores); a larger share repeats them.
SYNTHETIC_MAX = 12_000
#: Time kept back from training for what follows it, in seconds: the export of each network on 2 cores
#: (float and int8 conversion, calibration, agreement check), the last validation pass and saving.
EXPORT_S = {"reader": 45.0, "detector": 100.0}
AFTER_TRAIN_S = 20.0
#: Int8 calibration samples and Keras-agreement samples of the export.
CALIBRATION, AGREEMENT = {"reader": 300, "detector": 120}, {"reader": 200, "detector": 24}
#: A training session shorter than this is not started (compiling alone takes longer).
MIN_TRAIN_S = 20.0


@dataclass(frozen=True)
class Row:
    """One usable row of a labelled folder."""

    folder: Path
    file: str
    text: str
    box: tuple[float, float, float, float] | None
    line: int
    #: A collected plate crop (a packed folder's row without a frame): the plate fills it within the margins the
    #: device cuts event crops with (``edge.events.CROP_MARGIN_X``, ``CROP_MARGIN_Y``).
    crop_only: bool = False

    @property
    def image(self) -> Path:
        return self.folder / self.file

    @property
    def where(self) -> str:
        return f"{self.folder / 'labels.tsv'}:{self.line}"


def _review_answers(folder: Path) -> dict[str, str] | None:
    """Answer per row key from ``folder/review.json`` (``trainer.review``), or None where there is none."""
    path = folder / REVIEW
    if not path.is_file():
        return None
    try:
        answers = json.loads(path.read_text(encoding="utf-8"))["answers"]
        return {str(k): str(v["answer"]) for k, v in answers.items()}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: unreadable review record ({exc}); fix it or move it away") from None


def read_rows(folder: Path, unreviewed: bool, skipped: Counter[str], notes: list[str]) -> list[Row]:
    """The rows of ``folder/labels.tsv`` that can be trained on or scored; the others counted in ``skipped``
    by reason, the first few of each named in ``notes``."""
    path = folder / "labels.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no labels.tsv in this folder")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot be read ({exc})") from None
    answers = _review_answers(folder)
    # A packed collection names each row's crop in confidence.tsv: its rows without a box are plate crops.
    packed = (folder / "confidence.tsv").is_file() and (folder / "crops").is_dir()

    def skip(reason: str, where: str) -> None:
        skipped[reason] += 1
        if skipped[reason] <= 3:
            notes.append(f"{where}: {reason}")

    rows = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        where = f"{path}:{n}"
        if len(fields) < 2 or not fields[0]:
            skip("malformed line", where)
            continue
        answer = answers.get(row_key(fields)) if answers is not None else None
        raw = fields[1].strip()
        text = normalize(raw)
        if answer == "not_plate" or raw in NOT_A_PLATE or not text:
            skip("not a plate", where)
            continue
        if answers is not None and answer not in ("accepted", "corrected") and not unreviewed:
            skip("not reviewed", where)
            continue
        if len(text) > 2 * MAX_CHARS:
            skip("text too long", where)
            continue
        box = None
        cells = [c.strip() for c in fields[2:6]]
        if len(fields) >= 6 and any(cells):
            try:
                x1, y1, x2, y2 = (float(c) for c in cells)
            except ValueError:
                skip("malformed box", where)
                continue
            if not (all(math.isfinite(v) for v in (x1, y1, x2, y2)) and x1 < x2 and y1 < y2):
                skip("malformed box", where)
                continue
            box = (x1, y1, x2, y2)
        rows.append(Row(folder, fields[0], text, box, n, crop_only=packed and box is None))
    return rows


def readable(rows: list[Row], skipped: Counter[str], notes: list[str]) -> list[Row]:
    """The rows whose image OpenCV reads; the others counted in ``skipped`` (the first few named in ``notes``)."""
    out = []
    for r in rows:
        if r.image.is_file() and cv2.imread(str(r.image)) is not None:
            out.append(r)
            continue
        reason = "image missing" if not r.image.is_file() else "image unreadable"
        skipped[reason] += 1
        if skipped[reason] <= 3:
            notes.append(f"{r.where}: {reason} ({r.file})")
    return out


def holdout_value(text: str, seed: int) -> float:
    """Where ``text`` falls in [0, 1) for the held-out split: a hash of the text alone (and the seed), so every
    row of one plate goes to the same side. Salted so that it does not follow a split made by the text's plain
    SHA-1 (``tools/crossval.py``'s halves)."""
    digest = hashlib.sha256(f"trainer-finetune-holdout:{seed}:{text}".encode()).hexdigest()
    return int(digest[:13], 16) / 16**13


def split_by_text(rows: list[Row], fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    """(training rows, held-out rows): a row is held out when its text's ``holdout_value`` is below ``fraction``."""
    held = [r for r in rows if holdout_value(r.text, seed) < fraction]
    return [r for r in rows if holdout_value(r.text, seed) >= fraction], held


def box_quad(box: Iterable[float]) -> np.ndarray:
    """The corners (TL, TR, BR, BL) of an axis-aligned box."""
    x1, y1, x2, y2 = box
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float32)


def collected_crop_quad(width: int, height: int) -> np.ndarray:
    """The plate's corners in a crop the device cut with the event margins around the plate's box."""
    w, h = width / (1 + 2 * CROP_MARGIN_X), height / (1 + 2 * CROP_MARGIN_Y)
    x1, y1 = w * CROP_MARGIN_X, h * CROP_MARGIN_Y
    return box_quad((x1, y1, x1 + w, y1 + h))


def locate(found: FrameReads, text: str) -> np.ndarray | None:
    """Where in a frame the plate labelled ``text`` is: the box of the plate read closest to it, else (no plate
    read reaches ``MIN_SIMILARITY``) that of the closest of every box the search read; None where none does.

    The second look keeps the plates the starting models find but misread worst, the ones fine-tuning has most
    to teach: a zoomed box that cuts off half the plate may read a short text that fits a format and be chosen,
    while the whole-frame box around it read the plate."""
    plain = text.translate(LENIENT)

    def close(read: PlateRead | PlateText) -> float:
        return similarity(read.text.translate(LENIENT), plain)

    best = max(found.reads, key=close, default=None)
    if best is not None and close(best) >= MIN_SIMILARITY:
        return best.detection.quad
    quad, read = max(found.read_boxes, key=lambda qr: close(qr[1]), default=(None, None))
    return quad if read is not None and close(read) >= MIN_SIMILARITY else None


def boxed(reads: list[PlateRead], box: Sequence[float]) -> PlateRead | None:
    """The read whose box overlaps a labelled ``box`` most (``MIN_BOX_IOU`` at least), or None."""
    best = max(reads, key=lambda r: box_iou(r.detection.box, tuple(box)), default=None)
    return best if best is not None and box_iou(best.detection.box, tuple(box)) >= MIN_BOX_IOU else None


def quad_aspect(quad: np.ndarray) -> float:
    """Width / height of a quad (TL, TR, BR, BL): its mean top and bottom edge over its mean side."""
    q = np.asarray(quad, np.float32)
    width = float(np.linalg.norm(q[1] - q[0]) + np.linalg.norm(q[2] - q[3])) / 2
    height = float(np.linalg.norm(q[3] - q[0]) + np.linalg.norm(q[2] - q[1])) / 2
    return width / max(height, 1e-6)


def split_rows(columns: np.ndarray, text: str, aspect: float) -> tuple[str, str]:
    """The label's top and bottom row, from the starting reader's columns on the plate and its shape.

    The reader reads a two-row plate's top row with its first half of columns and the bottom row with the
    second (``edge.recognize``); it leaves the second half blank for a one-row plate. Where it puts two or
    more characters there and the plate is not wide (``TWO_ROW_MAX_ASPECT``), the plate is taken as two-row,
    cut where the label best matches the two reads; otherwise it is one row.
    """
    read, peaks = greedy_peaks(columns, READER_CLASSES, BLANK)
    half = columns.shape[0] // 2
    top = "".join(c for c, p in zip(read, peaks, strict=True) if p < half)
    bottom = "".join(c for c, p in zip(read, peaks, strict=True) if p >= half)
    if len(bottom) < 2 or not top or len(text) < 2 or aspect >= TWO_ROW_MAX_ASPECT:
        return text, ""
    cut = max(range(1, len(text)),
              key=lambda c: (similarity(text[:c], top) + similarity(text[c:], bottom), -abs(c - len(top))))
    return text[:cut], text[cut:]


def row_label(top: str, bottom: str) -> np.ndarray:
    """The reader's per-row CTC target, as ``trainer.data`` makes it: each row padded to ``MAX_CHARS``."""
    return np.concatenate([encode_label(top, READER_CLASSES, MAX_CHARS, BLANK),
                           encode_label(bottom, READER_CLASSES, MAX_CHARS, BLANK)])


def augment(rng: np.random.Generator, crop: np.ndarray) -> np.ndarray:
    """A photometric variant of a gray reader crop: lower resolution, blur, contrast, brightness, noise.

    The synthesizer draws such camera effects for every synthetic crop; a few hundred real plates need them to
    stand for more than their own photos.
    """
    h, w = crop.shape[:2]
    x: np.ndarray = crop.astype(np.float32)
    if rng.random() < 0.3:
        f = rng.uniform(0.35, 0.8)
        small = cv2.resize(x, (max(8, round(w * f)), max(4, round(h * f))), interpolation=cv2.INTER_AREA)
        x = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.25:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.4, 1.0))
    mean = float(x.mean())
    x = (x - mean) * rng.uniform(0.7, 1.25) + mean + rng.uniform(-20, 20)
    if rng.random() < 0.25:
        x = x + rng.normal(0.0, rng.uniform(2, 6), x.shape)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


@dataclass
class ReaderCrops:
    """The reader samples cut from the user's training plates."""

    #: One crop per plate from its own rectangle, unaugmented (validation: how well the plates are learnt).
    val_x: np.ndarray
    val_y: np.ndarray
    #: ``per_plate`` jittered crops per plate (all but the first also photometrically varied).
    x: np.ndarray
    y: np.ndarray
    texts: list[str]
    two_row: int
    #: Of ``x``: the crops of things in the frames that are no plate, labelled with no text (``NEGATIVES_*``).
    negatives: int = 0
    #: Things read in the frames that were left out of the negatives as unlabelled plates (``CAMERA_FORMAT_SHARE``).
    unlabelled_plates: int = 0


def _quad_box(quad: np.ndarray) -> tuple[float, float, float, float]:
    q = np.asarray(quad, np.float32)
    return float(q[:, 0].min()), float(q[:, 1].min()), float(q[:, 0].max()), float(q[:, 1].max())


def camera_plate(formats: FormatSet, prior: FormatPrior | None) -> Callable[[str], bool]:
    """Whether a text read in a training frame is likely a plate of the camera's: within one edit of a format
    holding at least ``CAMERA_FORMAT_SHARE`` of the labelled plates under ``prior``, at a length its plates there
    have (a broad format's 3-character texts are not its 7-character plates; None: no text is)."""
    if prior is None:
        return lambda text: False
    common = [(formats.by_name[name], {n for n in range(1, MAX_CHARS + 1) if prior.has_length(name, n)})
              for name, share in prior.shares.items() if share >= CAMERA_FORMAT_SHARE and name in formats.by_name]
    return lambda text: any(f.fits_near(text, lengths) for f, lengths in common)


def cut_reader_crops(rows: list[Row], pipeline: Pipeline, per_plate: int, seed: int, skipped: Counter[str],
                     notes: list[str], progress: bool = True, per_negative: int = 0,
                     plate_like: Callable[[str], bool] | None = None) -> ReaderCrops:
    """Reader crops and labels of ``rows`` (see the module's docstring, step 3); rows that give none are counted
    in ``skipped``. ``per_negative``: jittered crops of each thing in a frame that is none of its plates
    (``NEGATIVES_*``), labelled with no text (0: none); ``plate_like``: the reads there that are left out as
    plates the labels do not list (``camera_plate``)."""
    reader: PlateReader = pipeline.reader
    by_image: dict[Path, list[Row]] = {}
    for r in rows:
        by_image.setdefault(r.image, []).append(r)
    val_x, val_y, xs, ys, texts = [], [], [], [], []
    two_row = negatives = unlabelled = 0
    no_text = row_label("", "")

    def skip(reason: str, row: Row) -> None:
        skipped[reason] += 1
        if skipped[reason] <= 3:
            notes.append(f"{row.where}: {reason} ({row.file})")

    index = 0
    for path, image_rows in tqdm(by_image.items(), desc="user plates", unit="img", disable=not progress):
        image = cv2.imread(str(path)) if path.is_file() else None
        if image is None:
            for r in image_rows:
                skip("image missing" if not path.is_file() else "image unreadable", r)
            continue
        reads: FrameReads | None = None
        placed: list[tuple[float, float, float, float]] = []  # the boxes of this frame's labelled plates
        for r in image_rows:
            index += 1
            # ``searched``: the box the starting search read this plate in, which is what the device's reader reads
            if r.crop_only:
                quad = searched = collected_crop_quad(image.shape[1], image.shape[0])
            else:
                reads = pipeline.run(image) if reads is None else reads
                if r.box is not None:
                    quad = box_quad(r.box)
                    found = boxed(reads.reads, r.box)
                    searched = quad if found is None else found.detection.quad
                else:
                    located = locate(reads, r.text)
                    if located is None:
                        skip("no read close to the label", r)
                        continue
                    quad = searched = located
            placed.append(_quad_box(quad))
            plain = reader.crop(image, quad)
            top, bottom = split_rows(reader.columns(plain), r.text, quad_aspect(quad))
            if len(top) > MAX_CHARS or len(bottom) > MAX_CHARS:
                skip("text too long", r)
                continue
            label = row_label(top, bottom)
            two_row += bool(bottom)
            val_x.append(plain)
            val_y.append(label)
            texts.append(r.text)
            rng = np.random.default_rng((seed, index))
            for k in range(per_plate):
                crop = reader.crop(image, jitter_quad(rng, searched if k % 2 else quad, JITTER))
                xs.append(augment(rng, crop) if k else crop)
                ys.append(label)
        # A frame whose rows all placed their plates: what else the pipeline reads there is no plate.
        if per_negative and len(placed) == len(image_rows) and not any(r.crop_only for r in image_rows):
            reads = pipeline.run(image) if reads is None else reads
            labels = [r.text.translate(LENIENT) for r in image_rows]
            others = [rd for rd in reads.reads if not any(overlap(rd.detection.box, b) > 0 for b in placed)
                      and max(similarity(rd.text.translate(LENIENT), t) for t in labels) < NEGATIVE_MAX_SIMILARITY]
            if plate_like is not None:
                kept = [rd for rd in others if not plate_like(rd.text)]
                unlabelled += len(others) - len(kept)
                others = kept
            rng = np.random.default_rng((seed, index, 1))
            for rd in others[:NEGATIVES_PER_FRAME]:
                for k in range(per_negative):
                    crop = reader.crop(image, jitter_quad(rng, rd.detection.quad, JITTER))
                    xs.append(augment(rng, crop) if k else crop)
                    ys.append(no_text)
                negatives += per_negative
    h, w = reader.height, reader.width
    empty_x, empty_y = np.zeros((0, h, w), np.uint8), np.zeros((0, 2 * MAX_CHARS), np.int32)
    return ReaderCrops(np.stack(val_x) if val_x else empty_x, np.stack(val_y) if val_y else empty_y,
                       np.stack(xs) if xs else empty_x, np.stack(ys) if ys else empty_y, texts, two_row, negatives,
                       unlabelled)


def detector_frames(rows: list[Row], held_images: set[Path], progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Detector samples (letterboxed RGB frames, plate-coverage targets) of the frames with boxes among ``rows``,
    as ``trainer.data`` makes synthetic ones; frames that hold a held-out plate are left out."""
    h, w = DETECTOR_INPUT
    by_image: dict[Path, list[tuple[float, float, float, float]]] = {}
    for r in rows:
        if r.box is not None and r.image not in held_images:
            by_image.setdefault(r.image, []).append(r.box)
    xs, ys = [], []
    for path, boxes in tqdm(by_image.items(), desc="user frames", unit="img", disable=not progress):
        image = cv2.imread(str(path))
        if image is None:
            continue
        pixels, lb = letterbox(image, w, h)
        quads = [box_quad(b) * lb.scale for b in boxes]
        xs.append(pixels)
        ys.append(np.round(plate_mask(quads, h, w, DETECTOR_STRIDE) * 255).astype(np.uint8))
    if not xs:
        return np.zeros((0, h, w, 3), np.uint8), np.zeros((0, h // DETECTOR_STRIDE, w // DETECTOR_STRIDE), np.uint8)
    return np.stack(xs), np.stack(ys)


@contextlib.contextmanager
def drawing_from(countries: Sequence[Path]) -> Iterator[None]:
    """Synthetic plates drawn from the shipped country files and ``countries`` (later folders replace a country
    of the same code), as ``trainer synth --countries`` draws them; the draw before is restored after."""
    from trainer.synth.text import countries_in_use, use_countries

    before = countries_in_use()
    if countries:
        use_countries(COUNTRIES_DIR, *countries)
    try:
        yield
    finally:
        use_countries(*before)


def synthetic_count(user: int, share: float) -> int:
    """Synthetic samples that make ``share`` of a set holding ``user`` samples of the user's."""
    return round(user * share / (1.0 - share)) if user and share > 0 else 0


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class Budget:
    """The session's deadline (``--minutes``), counted from the command's start."""

    def __init__(self, minutes: float) -> None:
        self.start = time.monotonic()
        self.deadline = self.start + minutes * 60.0

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def spent(self) -> float:
        return time.monotonic() - self.start


@dataclass
class Options:
    """What ``finetune`` was asked for (the command line's options)."""

    data: list[Path]
    out: Path
    models: Path = DEFAULT_MODELS
    minutes: float = 25.0
    max_steps: int | None = None
    epochs: int = READER_EPOCHS
    holdout: float = 0.2
    synthetic_share: float = 0.5
    crops_per_plate: int = 20
    negative_crops: int = 5
    detector: bool = False
    unreviewed: bool = False
    seed: int = 0
    batch: int = 64
    lr: float = READER_LR
    synthetic_eval: int = 300
    threads: int = 2
    workers: int = 2
    fresh: bool = False
    progress: bool = True
    format_prior: bool = True
    countries: list[Path] = field(default_factory=list)

    def run_args(self) -> dict[str, Any]:
        """The options a resumed run must keep (they shape its data or its training)."""
        return {"data": [str(p.resolve()) for p in self.data], "models": str(self.models.resolve()),
                "holdout": self.holdout, "synthetic_share": self.synthetic_share,
                "crops_per_plate": self.crops_per_plate, "negative_crops": self.negative_crops,
                "detector": self.detector, "unreviewed": self.unreviewed,
                "seed": self.seed, "batch": self.batch, "lr": self.lr,
                "countries": [str(p.resolve()) for p in self.countries]}

    def check(self) -> None:
        """ValueError naming the first option out of range."""
        if not self.data:
            raise ValueError("--data: give at least one labelled folder")
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"--holdout {self.holdout}: a fraction from 0 up to (not including) 1")
        if not 0.0 <= self.synthetic_share < 1.0:
            raise ValueError(f"--synthetic-share {self.synthetic_share}: a fraction from 0 up to (not including) 1")
        if self.negative_crops < 0:
            raise ValueError(f"--negative-crops {self.negative_crops}: 0 or more")
        for name in ("crops_per_plate", "batch", "threads", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
        if self.epochs < 1:
            raise ValueError(f"--epochs {self.epochs}: must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"--max-steps {self.max_steps}: must be at least 1")
        if self.minutes <= 0 or self.lr <= 0 or self.synthetic_eval < 0:
            raise ValueError("--minutes and --lr must be above 0, --synthetic-eval 0 or more")
        self.added_formats()  # a bad country file stops here, naming the file and the key

    def added_formats(self) -> FormatSet:
        """The formats the synthetic plates are drawn from: this checkout's country files and those of the
        --countries folders (a later file replaces a country of the same code); FormatError names a bad file."""
        for folder in self.countries:
            if not folder.is_dir():
                raise ValueError(f"--countries {folder}: not a folder of country files")
        return FormatSet.load(COUNTRIES_DIR, *self.countries)


class Finetune:
    """One ``finetune`` command: its output folder, its recorded state and its steps."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.out = opts.out
        self.work = opts.out / WORK
        self.budget = Budget(opts.minutes)
        self.state: dict[str, Any] = {}
        self._lock: IO[str] | None = None

    # -- state -------------------------------------------------------------------------------------------------

    def save(self) -> None:
        """Write OUT/work/finetune.json whole, with this session's time brought up to date."""
        self.state["sessions"][-1]["wall_s"] = round(self.budget.spent(), 1)
        _atomic_write_text(self.work / STATE, json.dumps(self.state, indent=2))

    def _labels_digests(self) -> dict[str, str]:
        out = {}
        for folder in self.opts.data:
            path = folder / "labels.tsv"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no labels.tsv in this folder")
            out[str(folder.resolve())] = _sha256(path)
        return out

    def _own_files(self) -> list[Path]:
        return [self.out / n for n in ("detector.tflite", "detector.json", "detector_edgetpu.tflite",
                                       "detector_wide.tflite", "detector_wide.json", "detector_wide_edgetpu.tflite",
                                       "reader.tflite", "reader.json", CARD)]

    def open(self) -> None:
        """Load the recorded state to resume, or start a new one; refuse what would mix two runs or overwrite a
        model set this command did not make."""
        opts = self.opts
        try:
            load_model_set(opts.models, num_threads=1)
        except ModelError as exc:
            raise ValueError(f"--models: {exc}") from None
        if self.out.resolve() == opts.models.resolve() or self.out.resolve() == DEFAULT_MODELS.resolve():
            raise ValueError(f"--out {self.out}: would overwrite the starting model set; give a new folder")
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"--out {self.out}: not a folder")
        digests = self._labels_digests()
        state_path = self.work / STATE
        if not opts.fresh and not state_path.is_file() and self.out.is_dir() and any(self.out.iterdir()):
            raise ValueError(f"--out {self.out}: not empty and not a fine-tuning folder; give a new folder "
                             "(or --fresh to empty what a fine-tuning writes there)")
        self.work.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.work / ".lock", "w")  # noqa: SIM115  (held for the process's life)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ValueError(f"{self.out}: another finetune is running on it") from None
        if opts.fresh:
            for child in self.work.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                elif child.name != ".lock":
                    child.unlink()
            for f in self._own_files():
                f.unlink(missing_ok=True)
        state = self._recorded(state_path)
        if state is not None:
            # A run of a version before --negative-crops cut none: it resumes with --negative-crops 0.
            own, given = {"negative_crops": 0, "countries": []} | (state.get("args") or {}), opts.run_args()
            for key, value in given.items():
                if own.get(key) != value:
                    flag = "--" + key.replace("_", "-")
                    raise ValueError(f"{state_path}: the run was started with {flag} {own.get(key)}, not "
                                     f"{value}; rerun with the same options to resume, or --fresh to start over")
            if state.get("labels") != digests:
                raise ValueError(f"{state_path}: a labels.tsv changed since the run started; --fresh starts "
                                 "over with the new labels")
            self.state = state
            done = [k for k in ("prep", "before") if k in state]
            print(f"resuming {self.out} (done: {', '.join(done) or 'nothing yet'})", file=sys.stderr)
        else:
            self.state = {"format": STATE_FORMAT, "args": opts.run_args(), "labels": digests,
                          "command": " ".join(sys.argv[1:]) if sys.argv else "", "sessions": []}
        self.state["sessions"].append({"started": _now(), "wall_s": 0.0, "minutes": opts.minutes, "ended": None})
        self.save()

    def _recorded(self, path: Path) -> dict[str, Any] | None:
        """The state recorded at ``path`` to resume from; None where there is none, or where its session stopped
        before the data were prepared (nothing to keep: the run starts anew, with the options given now)."""
        if not path.is_file():
            return None
        try:
            state = json.loads(path.read_text())
        except ValueError as exc:
            raise ValueError(f"{path}: unreadable ({exc}); --fresh starts over") from None
        found = state.get("format") if isinstance(state, dict) else None
        if found != STATE_FORMAT:
            raise ValueError(f"{path}: format {found!r}, this trainer reads {STATE_FORMAT}; --fresh starts over")
        if "prep" not in state:
            print(f"{self.out}: the last session stopped before its data were prepared; starting anew",
                  file=sys.stderr)
            return None
        return state

    # -- data --------------------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Step 1-4: rows, split, reader crops (and detector frames), mixed with synthetic samples, saved."""
        if "prep" in self.state:
            return
        from trainer.data import generate, save_set

        opts = self.opts
        started = time.monotonic()
        skipped: Counter[str] = Counter()
        notes: list[str] = []
        rows: list[Row] = []
        per_folder = {}
        for folder in opts.data:
            got = read_rows(folder, opts.unreviewed, skipped, notes)
            per_folder[str(folder)] = len(got)
            rows += got
        train_rows, held = split_by_text(rows, opts.holdout, opts.seed)
        held = readable(held, skipped, notes)
        if not train_rows:
            raise ValueError(f"no plates to train on in {', '.join(map(str, opts.data))} ("
                             + (", ".join(f"{k}: {v}" for k, v in skipped.items()) or "no rows") + ")")
        pipeline = self._pipeline(opts.models)
        # The formats the new reader carries: the starting reader's, with those its synthetic plates are drawn
        # from added (a country in both: the file's). The prior is learnt over them, so a format of the camera's
        # that the starting reader did not know takes the plates it accounts for, not a broader foreign one.
        formats = pipeline.reader.formats.merged(opts.added_formats())
        # How often each format occurs among the plates trained on (every training row, found by the starting
        # models or not); the reader carries it unless told not to.
        prior = formats.learn_prior([r.text for r in train_rows],
                                    f"{len(train_rows)} training rows of {', '.join(map(str, opts.data))}")
        crops = cut_reader_crops(train_rows, pipeline, opts.crops_per_plate, opts.seed, skipped, notes,
                                 opts.progress, opts.negative_crops, camera_plate(formats, prior))
        if not len(crops.x):
            raise ValueError("no reader crops could be cut from the training plates ("
                             + ", ".join(f"{k}: {v}" for k, v in skipped.items()) + ")")
        for note in notes:
            print(f"skipped: {note}", file=sys.stderr)
        # The held-out rows as a labelled folder for trainer.evaluate (absolute image paths).
        held_dir = self.work / "heldout"
        held_dir.mkdir(parents=True, exist_ok=True)
        lines = ["file\ttext\tx1\ty1\tx2\ty2"]
        for r in held:
            lines.append("\t".join([str(r.image.resolve()), r.text, *(f"{v:g}" for v in r.box or ())]))
        _atomic_write_text(held_dir / "labels.tsv", "\n".join(lines) + "\n")

        n_val_user = min(len(crops.val_x), MAX_VAL_USER["reader"])
        n_syn_val = synthetic_count(n_val_user, opts.synthetic_share)
        n_syn = synthetic_count(len(crops.x), opts.synthetic_share)
        prep: dict[str, Any] = {"rows": len(rows), "rows_per_folder": per_folder, "training_plates": len(crops.texts),
                                "training_rows": len(train_rows), "heldout_plates": len(held),
                                "heldout_texts": sorted({r.text for r in held}),
                                "training_texts": sorted(set(crops.texts)), "two_row_plates": crops.two_row,
                                "format_prior": prior.model_dump(mode="json"),
                                "skipped": dict(skipped), "skipped_examples": notes[:20]}
        # Sample i of a synthetic set uses seed (seed, i): the reader's and the detector's sets draw from their own.
        n_draw = min(n_syn, SYNTHETIC_MAX)
        with drawing_from(opts.countries):
            synthetic = generate("reader", n_syn_val + n_draw, 1_000_003 + opts.seed, workers=opts.workers,
                                 progress=opts.progress) if n_syn_val + n_draw else None
        syn_x = synthetic["x"] if synthetic else np.zeros((0, *crops.x.shape[1:]), np.uint8)
        syn_y = synthetic["y"] if synthetic else np.zeros((0, 2 * MAX_CHARS), np.int32)
        if n_draw < n_syn:  # the share is kept by repeating the drawn crops
            repeat = n_syn_val + np.arange(n_syn) % n_draw
            syn_x = np.concatenate([syn_x[:n_syn_val], syn_x[repeat]])
            syn_y = np.concatenate([syn_y[:n_syn_val], syn_y[repeat]])
        # Validation first (trainer.train holds out the head of a set): unaugmented crops of training plates and
        # synthetic crops in the same shares. They measure how well the plates are learnt, not the held-out score.
        x = np.concatenate([crops.val_x[:n_val_user], syn_x[:n_syn_val], crops.x, syn_x[n_syn_val:]])
        y = np.concatenate([crops.val_y[:n_val_user], syn_y[:n_syn_val], crops.y, syn_y[n_syn_val:]])
        n_val = n_val_user + n_syn_val
        save_set(self.work / "reader.npz", {"x": x, "y": y},
                 {"kind": "reader", "generator": "trainer.finetune", "seed": opts.seed,
                  "formats": formats.to_meta(), "validation": n_val,
                  "user": len(crops.x), "synthetic": n_syn})
        prep["reader"] = {"samples": len(x), "validation": n_val, "user_crops": len(crops.x) - crops.negatives,
                          "negative_crops": crops.negatives, "unlabelled_plates": crops.unlabelled_plates,
                          "synthetic_crops": n_syn, "synthetic_distinct": n_draw, "validation_user": n_val_user,
                          "validation_synthetic": n_syn_val}
        del x, y, syn_x, syn_y, synthetic

        if opts.detector:
            held_images = {r.image for r in held}
            fx, fy = detector_frames(train_rows, held_images, opts.progress)
            if len(fx):
                n_val_user = min(len(fx), MAX_VAL_USER["detector"])
                n_syn_val = max(1, synthetic_count(n_val_user, opts.synthetic_share))
                n_syn = synthetic_count(len(fx), opts.synthetic_share)
                with drawing_from(opts.countries):
                    scenes = generate("detector", n_syn_val + n_syn, 2_000_003 + opts.seed, workers=opts.workers,
                                      progress=opts.progress)
                x = np.concatenate([fx[:n_val_user], scenes["x"][:n_syn_val], fx, scenes["x"][n_syn_val:]])
                y = np.concatenate([fy[:n_val_user], scenes["y"][:n_syn_val], fy, scenes["y"][n_syn_val:]])
                save_set(self.work / "detector.npz", {"x": x, "y": y},
                         {"kind": "detector", "generator": "trainer.finetune", "seed": opts.seed,
                          "validation": n_val_user + n_syn_val, "user": len(fx), "synthetic": n_syn})
                prep["detector"] = {"samples": len(x), "validation": n_val_user + n_syn_val, "user_frames": len(fx),
                                    "synthetic_scenes": n_syn}
                del x, y, scenes
            else:
                prep["detector"] = {"samples": 0, "note": "no training frame with a box: the detector is copied"}
        prep["wall_s"] = round(time.monotonic() - started, 1)
        self.state["prep"] = prep
        self.save()

    def _pipeline(self, models: Path, added: FormatSet | None = None) -> Pipeline:
        try:
            return Pipeline.from_dir(models, num_threads=self.opts.threads, extra_formats=added)
        except ModelError as exc:
            raise ValueError(str(exc)) from None

    # -- scores ------------------------------------------------------------------------------------------------

    def score(self, models: Path, label: str, added: FormatSet | None = None) -> dict[str, Any]:
        """The held-out images through the pipeline (exact as run_eval scores it) and synthetic plates;
        ``added``: formats added to the reader's (as ``edge read --countries`` adds them)."""
        from trainer.evaluate import evaluate_folder, evaluate_synthetic_reader, evaluate_synthetic_scenes

        started = time.monotonic()
        pipeline = self._pipeline(models, added)
        out: dict[str, Any] = {"models": str(models)}
        if self.state["prep"]["heldout_plates"]:
            print(f"scoring {label} on the held-out plates", file=sys.stderr)
            s = evaluate_folder(pipeline, self.work / "heldout", progress=self.opts.progress, gallery=0)["summary"]
            out["heldout"] = {k: s[k] for k in ("images", "exact", "lenient", "char_accuracy", "det_recall")}
        if self.opts.synthetic_eval:
            s = evaluate_synthetic_reader(pipeline, self.opts.synthetic_eval, SYNTHETIC_EVAL_SEED,
                                          progress=self.opts.progress)["summary"]
            out["synthetic_plates"] = {"images": s["images"], "exact": s["exact"], "char_accuracy": s["char_accuracy"],
                                       "seed": SYNTHETIC_EVAL_SEED}
            if self.opts.detector:  # the detector changes too: whole synthetic scenes, found and read
                n = max(1, self.opts.synthetic_eval // 4)
                s = evaluate_synthetic_scenes(pipeline, n, SYNTHETIC_EVAL_SEED, progress=self.opts.progress)["summary"]
                out["synthetic_scenes"] = {"images": s["plates"], "exact": s["read_recall"],
                                           "det_recall": s["det_recall"], "scenes": s["scenes"],
                                           "seed": SYNTHETIC_EVAL_SEED}
        out["wall_s"] = round(time.monotonic() - started, 1)
        return out

    def before(self) -> None:
        """Step 5: the starting set's scores (once per run)."""
        if "before" not in self.state:
            # With the formats the new reader carries added (as `edge read --countries` would read): the gain is
            # the training's.
            self.state["before"] = self.score(self.opts.models, "the starting models", self.opts.added_formats())
            self.save()

    # -- training ----------------------------------------------------------------------------------------------

    def kinds(self) -> list[ModelKind]:
        """The networks this run trains, in order."""
        return ["detector", "reader"] if self.state["prep"].get("detector", {}).get("samples") else ["reader"]

    def _plan(self, kind: str, seconds: float) -> dict[str, Any]:
        """A new run's arguments: its epochs sized so that the learning-rate schedule ends when the time does."""
        info = self.state["prep"][kind]
        batch, lr = (self.opts.batch, self.opts.lr) if kind == "reader" else (DETECTOR_BATCH, DETECTOR_LR)
        n_val = info["validation"]
        steps_per_epoch = math.ceil((info["samples"] - n_val) / batch)
        if self.opts.max_steps is not None:
            step_s = None
            epochs = max(1, math.ceil(self.opts.max_steps / steps_per_epoch))
        else:
            step_s = measure_step_seconds(kind, batch, self.opts.threads, init=self.opts.models / f"{kind}.tflite")
            # Each epoch ends with two passes over the validation head (loss, plate accuracy): about a third of a
            # training step's time per batch each.
            epoch_s = step_s * (steps_per_epoch + 0.7 * math.ceil(n_val / batch))
            epochs = max(1, int(seconds / epoch_s))
            if kind == "reader":
                epochs = min(epochs, self.opts.epochs)
        return {"epochs": epochs, "batch": batch, "lr": lr, "seed": self.opts.seed,
                # trainer.train holds out int(samples * fraction): this fraction gives exactly the head made above.
                "val_fraction": (n_val + 0.5) / info["samples"], "steps_per_epoch": steps_per_epoch,
                "measured_step_s": None if step_s is None else round(step_s, 3), "planned_for_s": round(seconds)}

    def _reserve(self, kinds: Sequence[str]) -> float:
        """Seconds to keep for what follows training: the exports of ``kinds`` (all of them come after all the
        training), each network's last validation and saving, and the new set's scores."""
        scoring = self.state["before"].get("wall_s", 0.0) * 1.3
        return sum(EXPORT_S[k] for k in kinds) + AFTER_TRAIN_S * len(kinds) + scoring

    def train(self) -> None:
        """Step 6: train each network within this session's share of the time (resuming its run)."""
        from trainer.cli import start_tensorflow_quietly

        start_tensorflow_quietly()
        from trainer.train import _set_threads, train

        _set_threads(self.opts.threads)
        kinds = self.kinds()
        plans = self.state.setdefault("plan", {})
        trained = self.state.setdefault("trained", {})
        for kind in kinds:
            if trained.get(kind, {}).get("finished"):
                continue
            # The detector takes its share of what is left; the reader, trained last, all the rest.
            share = DETECTOR_SHARE if kind == "detector" else 1.0
            seconds = (self.budget.left() - self._reserve(kinds)) * share
            if seconds < MIN_TRAIN_S and self.opts.max_steps is None:
                print(f"no time left to train the {kind} in this session ({seconds / 60:.1f} min after the time "
                      "kept for the export and the scores); rerun, with more --minutes, to continue",
                      file=sys.stderr)
                continue
            if kind not in plans:
                plans[kind] = self._plan(kind, seconds)
                self.save()
                seconds = (self.budget.left() - self._reserve(kinds)) * share  # less the time measuring took
            plan = plans[kind]
            total = plan["epochs"] * plan["steps_per_epoch"]
            print(f"training the {kind}: {plan['epochs']} epochs x {plan['steps_per_epoch']} steps, batch "
                  f"{plan['batch']}, this session up to {seconds / 60:.1f} min", file=sys.stderr)
            bar = progress_bar(total, kind, self.opts.progress)
            try:
                info = train(kind, self.work / f"{kind}.npz", self.work / f"{kind}_run", epochs=plan["epochs"],
                             batch=plan["batch"], minutes=max(seconds, 1.0) / 60, lr=plan["lr"],
                             threads=self.opts.threads, seed=plan["seed"], val_fraction=plan["val_fraction"],
                             verbose=0, init=Path(self.state["args"]["models"]), max_steps=self.opts.max_steps,
                             callbacks=[bar], end_with_time=True)
            finally:
                bar.close()
            trained[kind] = {k: info.get(k) for k in ("finished", "stopped_by", "epochs_run", "epochs_planned",
                                                       "global_step", "steps_per_epoch", "wall_s_total", "val",
                                                       "sessions", "lr_decay_steps_fitted")}
            trained[kind]["steps_planned"] = total
            self.save()

    # -- the model set -----------------------------------------------------------------------------------------

    def export(self) -> bool:
        """Export what was trained and write OUT as a model set; False when there is nothing new to write."""
        trained = self.state.get("trained", {})
        exported = self.state.setdefault("exported", {})
        kinds = [k for k in self.kinds() if k in trained and (self.work / f"{k}_run" / "model.keras").is_file()]
        if "reader" not in kinds:
            return False
        fresh = [k for k in kinds if exported.get(k, {}).get("global_step") != trained[k]["global_step"]]
        if not fresh and all((self.out / f).is_file() for f in ("detector.tflite", "reader.tflite", CARD)):
            return False
        for kind in fresh:
            print(f"exporting the {kind} (int8)", file=sys.stderr)
            report = export_network(kind, self.work / f"{kind}_run", self.work / f"{kind}.npz",
                                    self.work / "export" / kind)
            exported[kind] = {"global_step": trained[kind]["global_step"], "report": report}
            self.save()
        note = f"fine-tuned by trainer finetune on {self.state['prep']['training_plates']} labelled plates"
        detector = (self.work / "export" / "detector" / "int8" / "detector.tflite" if "detector" in kinds
                    else model_paths(self.opts.models)[0])
        self.state.pop("after", None)  # the scores of the set this one replaces
        self.save()
        write_model_set(self.out, detector, self.work / "export" / "reader" / "int8" / "reader.tflite",
                        card=model_card(self.state, self.opts), note=note, tuned={"reader", *kinds},
                        prior=self.prior())
        return True

    def prior(self) -> FormatPrior | None:
        """The format prior the new reader carries: learnt from the training plates, unless --no-format-prior."""
        learnt = self.state["prep"].get("format_prior")
        return FormatPrior.model_validate(learnt) if learnt and self.opts.format_prior else None

    def after(self) -> None:
        """The new set's scores, as ``before``'s."""
        self.state["after"] = self.score(self.out, "the fine-tuned models")
        self.save()

    def write_card(self) -> None:
        _atomic_write_text(self.out / CARD, model_card(self.state, self.opts))

    def finished(self) -> bool:
        if "prep" not in self.state:
            return False
        trained = self.state.get("trained", {})
        return (all(trained.get(k, {}).get("finished") for k in self.kinds()) and "after" in self.state
                and (self.out / CARD).is_file())


def measure_step_seconds(kind: str, batch: int, threads: int, steps: int = 4, init: Path | None = None,
                         repeats: int = 3) -> float:
    """Seconds per training step of ``kind`` at ``batch`` on this machine now, timed as training runs them:
    the network as ``train --init`` makes it from the int8 file ``init`` (its BatchNorm frozen, which makes a
    step about three times cheaper than a fresh network's), in ``fit``'s compiled loop after a first ``fit``
    that compiles it. Each ``fit`` call has a fixed cost of its own (about as much as four steps), which a long
    run pays once: the figure is the difference of a ``fit`` of ``3 * steps`` and one of ``steps``, over
    ``2 * steps``, each the quickest of ``repeats`` fits. Other work on the machine only ever adds time, and one
    timing of a few steps caught by it planned 8 epochs where 10 fitted three times over."""
    import keras

    from trainer.from_tflite import int8_detector_fine, load_int8_weights
    from trainer.train import DETECTOR_CROP, build_for, ctc_loss, detector_loss

    model = build_for(kind, int8_detector_fine(init) if kind == "detector" and init is not None else None)
    if init is not None:
        load_int8_weights(model, init)
    rng = np.random.default_rng(0)
    if kind == "reader":
        model.compile(keras.optimizers.Adam(1e-5), ctc_loss)
        h, w = model.input.shape[1:3]
        x = rng.random((batch, h, w, 1), np.float32)
        y = np.tile(row_label("AB123", ""), (batch, 1))
    else:
        model.compile(keras.optimizers.Adam(1e-5), detector_loss)
        c, s = DETECTOR_CROP, DETECTOR_STRIDE
        x = rng.random((batch, c, c, 3), np.float32)
        y = np.ones((batch, c // s, c // s, 2), np.float32)
        y[..., 0] = 0.0
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)
    spent = []
    for n in (steps, 3 * steps):
        xs, ys = np.concatenate([x] * n), np.concatenate([y] * n)
        timed = []
        for _ in range(repeats):
            start = time.monotonic()
            model.fit(xs, ys, batch_size=batch, epochs=1, verbose=0, shuffle=False)
            timed.append(time.monotonic() - start)
        spent.append(min(timed))
    # A machine busy during the shorter fit could make the difference small: never below a third of the average.
    return max((spent[1] - spent[0]) / (2 * steps), spent[1] / (3 * steps) / 3)


def progress_bar(total: int, kind: str, enabled: bool = True) -> Any:
    """A Keras callback that shows the run's steps (all sessions) as one tqdm bar."""
    import keras

    class _Bar(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.bar: tqdm | None = None

        def on_train_begin(self, logs: dict | None = None) -> None:
            if self.bar is None:
                done = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
                self.bar = tqdm(total=total, initial=min(done, total), desc=f"train {kind}", unit="step",
                                disable=not enabled)

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            if self.bar is not None:
                self.bar.update(1)
                if logs and "loss" in logs:
                    self.bar.set_postfix(loss=f"{float(logs['loss']):.3f}", refresh=False)

        def close(self) -> None:
            if self.bar is not None:
                self.bar.close()

    return _Bar()


def export_network(kind: ModelKind, run: Path, data: Path, out: Path) -> dict[str, Any]:
    """``trainer export`` of one run (float and int8 under ``out``), with fewer calibration and check samples."""
    from trainer.export import export

    out.mkdir(parents=True, exist_ok=True)
    # The converter prints each traced tensor to stdout; the log keeps it out of the command's output.
    with open(out / "export.log", "w") as log, contextlib.redirect_stdout(log):
        report = export(kind, run, data, out, n_rep=CALIBRATION[kind], n_check=AGREEMENT[kind])
    return {p: {"agreement": report[p]["agreement"], "size_bytes": report[p]["size_bytes"]} for p in ("float", "int8")}


def write_model_set(out: Path, detector: Path, reader: Path, card: str, note: str,
                    tuned: set[str] | frozenset[str] = frozenset({"reader"}), prior: FormatPrior | None = None) -> None:
    """Write ``out`` as a model set: each network's .tflite and .json (the networks in ``tuned`` with ``note`` in
    their metadata, a tuned reader with ``prior`` as its format prior), the wide detector beside ``detector`` where
    there is one, each detector's Edge TPU variant where it is copied unchanged, and ``card`` as MODEL_CARD.md.

    Each file is written under a temporary name and renamed; the set is then loaded as the edge loads it, so a
    set that would not load is an error here rather than on the device.
    """
    out.mkdir(parents=True, exist_ok=True)
    wide = detector.with_name(WIDE_DETECTOR)
    wide_name = wide.stem
    files = [("detector", detector, "detector"), ("reader", reader, "reader")]
    if wide.is_file():
        files.append(("detector", wide, wide_name))
    else:  # a new detector without one: the old detector's wide form must not stay beside it
        for suffix in (".tflite", ".json", "_edgetpu.tflite"):
            (out / f"{wide_name}{suffix}").unlink(missing_ok=True)
    for kind, src, name in files:
        meta = read_metadata(src)
        if kind in tuned:
            meta = meta.model_copy(update={"note": note})
            if meta.reader is not None:
                formats = meta.reader.formats.model_copy(update={"prior": prior})
                meta = meta.model_copy(update={"reader": meta.reader.model_copy(update={"formats": formats})})
        tmp = out / f".{name}.tflite.tmp"
        shutil.copyfile(src, tmp)
        os.replace(tmp, out / f"{name}.tflite")
        _atomic_write_text(out / f"{name}.json", meta.to_json())
        tpu = src.with_name(f"{src.stem}_edgetpu.tflite")
        if kind not in tuned and tpu.is_file() and meta.edgetpu_sha256:
            shutil.copyfile(tpu, out / f"{name}_edgetpu.tflite")
        else:
            (out / f"{name}_edgetpu.tflite").unlink(missing_ok=True)
    _atomic_write_text(out / CARD, card)
    try:
        load_model_set(out, num_threads=1)
    except ModelError as exc:
        raise RuntimeError(f"{out}: the model set written does not load: {exc}") from None


def prior_summary(learnt: dict[str, Any] | None, used: bool, top: int = 6) -> str:
    """One line on the format prior a fine-tuned reader carries."""
    if not learnt:
        return "none (a run prepared before format priors were learnt)"
    if not used:
        return "not carried (--no-format-prior): every format weighs the same"
    prior = FormatPrior.model_validate(learnt)

    def seen(name: str) -> str:
        lengths = [n for n in sorted(prior.lengths.get(name, {})) if prior.has_length(name, n)]
        return f" ({'/'.join(map(str, lengths))} characters)" if lengths else ""

    return (f"learnt from the {prior.plates} plates trained on: "
            + ", ".join(f"{name} {share * 100:.0f} %{seen(name)}" for name, share in prior.largest(top))
            + f", no format {prior.none * 100:.0f} %; a fit of a format costs the log of how much rarer it is than "
            "the most common one, and gives none at a length its plates here never have")


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


def model_card(state: dict[str, Any], opts: Options) -> str:
    """MODEL_CARD.md of a fine-tuned set: data, training, time, and the scores before and after."""
    prep, before, after = state["prep"], state.get("before", {}), state.get("after", {})
    trained, plans = state.get("trained", {}), state.get("plan", {})
    args = state["args"]
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(prep["skipped"].items())) or "none"
    rd = prep["reader"]
    per_folder = ", ".join(f"{Path(k).name}: {v}" for k, v in prep["rows_per_folder"].items())
    lines = [
        "# Fine-tuned model set",
        "",
        f"Made by `python -m trainer finetune` from `{args['models']}` on the labelled folders "
        + ", ".join(f"`{d}`" for d in args["data"]) + f". Last written {_now()}.",
        "",
        "## Data",
        "",
        "| | |",
        "| --- | --- |",
        f"| rows used | {prep['rows']} ({per_folder}) |",
        f"| rows skipped | {skipped} |",
        f"| split by text | {prep['training_rows']} rows to train on ({prep['training_plates']} plates cut), "
        f"{prep['heldout_plates']} held out ({len(prep['heldout_texts'])} texts; --holdout {args['holdout']}, "
        f"seed {args['seed']}); no text on both sides |",
        f"| two-row plates (as the starting reader reads them) | {prep['two_row_plates']} |",
        f"| reader samples | {rd['user_crops']} crops of the user's plates ({args['crops_per_plate']} per plate, "
        f"jittered detector-like rectangles, cut by the edge's crop code), {rd.get('negative_crops', 0)} of things "
        f"in the frames that are no plate, taught as no text (--negative-crops "
        f"{args.get('negative_crops', 0)}; {rd.get('unlabelled_plates', 0)} more read like the labelled plates' "
        f"formats, taken for plates the labels leave out, were not cut), {rd['synthetic_crops']} synthetic "
        f"({rd['synthetic_distinct']} distinct; --synthetic-share {args['synthetic_share']}); validation "
        f"{rd['validation']} "
        f"({rd['validation_user']} unjittered crops of training plates, {rd['validation_synthetic']} synthetic) |",
    ]
    lines.append("| formats | the starting reader's, with the country files the synthetic plates were drawn from "
                 "added: " + ", ".join(f"`{d}`" for d in [str(COUNTRIES_DIR), *args.get("countries", [])])
                 + " (a later folder's file replaces a country of the same code) |")
    lines.append(f"| format prior | {prior_summary(prep.get('format_prior'), opts.format_prior)} |")
    det = prep.get("detector")
    if det and det.get("samples"):
        lines.append(f"| detector samples | {det['user_frames']} frames with boxes, {det['synthetic_scenes']} "
                     f"synthetic scenes; validation {det['validation']} |")
    else:
        lines.append(f"| detector | copied unchanged from `{args['models']}`"
                     + ("" if not det else f" ({det.get('note', '')})") + " |")
    lines += ["", "## Training", "",
              "From the int8 set (`train --init`): dequantized weights, BatchNorm frozen.", "",
              "| network | steps done / planned | epochs | batch | peak learning rate | rate at its floor from step "
              "| training time | ended |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for kind, info in trained.items():
        plan = plans.get(kind, {})
        ended = "finished" if info["finished"] else info["stopped_by"]
        # Where the machine ran slower than the step timed for the plan, the schedule was ended by the time.
        floor_at = info.get("lr_decay_steps_fitted") or info["steps_planned"]
        lines.append(f"| {kind} | {info['global_step']} / {info['steps_planned']} | {info['epochs_run']} of "
                     f"{info['epochs_planned']} | {plan.get('batch')} | {plan.get('lr')} | {floor_at} | "
                     f"{_minutes(info.get('wall_s_total'))} | {ended} |")
    sessions = state.get("sessions", [])
    total = sum(s.get("wall_s", 0.0) for s in sessions)
    lines += ["", f"Wall time of the command: {_minutes(total)} in {len(sessions)} session(s) ("
              + ", ".join(f"{_minutes(s.get('wall_s'))} with --minutes {s.get('minutes')}" for s in sessions)
              + f"); data preparation {_minutes(prep.get('wall_s'))}.", "",
              "## Scores", "",
              "Before: the starting set; after: this set. Held-out plates: the pipeline's best read of each "
              "held-out image, exact, as `run_eval.py` scores it (`edge read`'s settings). Synthetic plates: the "
              f"reader alone on synthetic plates of seed {SYNTHETIC_EVAL_SEED} (`trainer evaluate --synthetic`); "
              "synthetic scenes (with --detector): the pipeline on whole scenes, a plate counted in `exact` when it "
              "is found (IoU 0.5) and read right.",
              "",
              "| set | n | exact before | exact after | lenient before | lenient after | det@.5 before "
              "| det@.5 after |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key, name in SCORED:
        b, a = before.get(key), after.get(key)
        if b is None and a is None:
            continue
        b, a = b or {}, a or {}
        lines.append(f"| {name} | {b.get('images', a.get('images'))} | {_figure(b.get('exact'))} | "
                     f"{_figure(a.get('exact'))} | {_figure(b.get('lenient'))} | {_figure(a.get('lenient'))} | "
                     f"{_figure(b.get('det_recall'))} | {_figure(a.get('det_recall'))} |")
    if not prep["heldout_plates"]:
        lines += ["", "No plate was held out (--holdout 0): the held-out score is left to a set of its own."]
    lines += ["", "## Using it", "",
              f"`python -m edge read --models {opts.out} IMAGE...`; on a device, `sudo deploy/update.sh --models "
              "DIR` with a copy of this folder's `*.tflite`, `*.json` and this card (the `work/` folder holds the "
              "resumable state and is not needed there). The reader is new: compile it again for a Coral "
              "(`edgetpu_compiler`, then `deploy/edgetpu_hash.py`).", ""]
    return "\n".join(lines)


def summary(state: dict[str, Any]) -> str:
    """The scores before and after, as a short table for the terminal."""
    out = [f"{'set':<18}{'n':>6}{'before':>9}{'after':>9}"]
    for key, name in SCORED:
        b, a = state.get("before", {}).get(key), state.get("after", {}).get(key)
        if b or a:
            out.append(f"{name:<18}{(b or a)['images']:>6}{_figure((b or {}).get('exact')):>9}"
                       f"{_figure((a or {}).get('exact')):>9}")
    return "\n".join(out)


def run(opts: Options) -> int:
    """``finetune``: see the module's docstring. 0 when OUT holds the set of this session's training."""
    opts.check()
    ft = Finetune(opts)
    ft.open()
    if ft.finished():
        print(f"{opts.out}: finished (its card: {opts.out / CARD}); --fresh starts over", file=sys.stderr)
        print(summary(ft.state))
        ft.state["sessions"][-1]["ended"] = "already finished"
        ft.save()
        return 0
    try:
        ft.prepare()
        ft.before()
        ft.train()
        if ft.export():
            ft.after()
            ft.write_card()
    finally:
        ft.state["sessions"][-1]["ended"] = "finished" if ft.finished() else "stopped"
        ft.save()
    if not (opts.out / "reader.tflite").is_file():
        print(f"{opts.out}: no model set yet (nothing trained); rerun with more --minutes", file=sys.stderr)
        return 1
    print(summary(ft.state))
    left = [k for k, v in ft.state.get("trained", {}).items() if not v.get("finished")]
    print(f"wrote the model set {opts.out} and {opts.out / CARD}"
          + (f"; the {' and '.join(left)} stopped before the end of its schedule: rerun to continue" if left else ""),
          file=sys.stderr)
    return 0


def _command(args: argparse.Namespace) -> int:
    opts = Options(data=args.data, out=args.out, models=args.models, minutes=args.minutes, max_steps=args.max_steps,
                   holdout=args.holdout, synthetic_share=args.synthetic_share, crops_per_plate=args.crops_per_plate,
                   negative_crops=args.negative_crops,
                   detector=args.detector, unreviewed=args.unreviewed, seed=args.seed, batch=args.batch, lr=args.lr,
                   synthetic_eval=args.synthetic_eval, threads=args.threads, workers=args.workers, fresh=args.fresh,
                   epochs=args.epochs, format_prior=args.format_prior, countries=args.countries)
    return run(opts)


def add_parser(sub: Any, formatter: type[argparse.HelpFormatter]) -> argparse.ArgumentParser:
    """Add the ``finetune`` verb to the trainer's sub-commands."""
    import textwrap

    ft = sub.add_parser(
        "finetune", formatter_class=formatter,
        help="fine-tune a model set on your own labelled plates; rerun the same command to resume",
        description=textwrap.fill(
            "Fine-tune the reader (and with --detector the detector) of an int8 model set on labelled folders "
            "(labels.tsv as the shared real sets, `edge collect pack` and `trainer review` write), mixed with "
            "synthetic plates, holding out part of the plates by text. Writes OUT as a model set that `edge "
            "read --models OUT` and the daemon load, with a MODEL_CARD.md of before/after scores; OUT/work "
            "keeps the state: rerunning the same command resumes, --fresh starts over. --minutes bounds the "
            "whole command (data, training, export, scores).", 78, break_on_hyphens=False))
    ft.add_argument("--data", type=Path, action="append", required=True, metavar="FOLDER",
                    help="labelled folder: images and labels.tsv (repeatable)")
    ft.add_argument("--out", type=Path, required=True, metavar="DIR",
                    help="the model set to write (a new folder, or one this command wrote: it resumes)")
    ft.add_argument("--models", type=Path, default=DEFAULT_MODELS, metavar="DIR",
                    help="the int8 model set to start from (default: the shipped edge/models)")
    ft.add_argument("--minutes", type=float, default=25.0,
                    help="time for this session, all of it: data, training, export and scores")
    ft.add_argument("--epochs", type=int, default=READER_EPOCHS, metavar="N",
                    help="at most N passes over the reader's training samples, fewer where --minutes allows fewer "
                         "(more took twice the time and read new plates of the same camera no better)")
    ft.add_argument("--max-steps", type=int, default=None, metavar="N",
                    help="train each network at most N steps this session, whatever the time (default: as the "
                         "time allows)")
    ft.add_argument("--holdout", type=float, default=0.2, metavar="FRACTION",
                    help="share of plate texts held out from training and scored before and after (0: none)")
    ft.add_argument("--synthetic-share", type=float, default=0.5, metavar="S",
                    help="share of the training samples that are synthetic, so that other formats are not "
                         "forgotten")
    ft.add_argument("--crops-per-plate", type=int, default=20, metavar="K",
                    help="jittered reader crops cut from each of your plates")
    ft.add_argument("--negative-crops", type=int, default=5, metavar="K",
                    help="jittered reader crops, taught as no text, of each thing the starting models read in a "
                         f"training frame that is none of its labelled plates (a sign, a badge; at most "
                         f"{NEGATIVES_PER_FRAME} a frame, only in frames whose labels list all their plates "
                         "and were all found) (0: none)")
    ft.add_argument("--detector", action="store_true",
                    help="also fine-tune the detector, on the frames with boxes mixed with synthetic scenes "
                         f"({DETECTOR_SHARE * 100:.0f} %% of the training time) (default: the detector is copied)")
    ft.add_argument("--unreviewed", action="store_true",
                    help="where a folder has a review.json, also use the rows the review did not accept or "
                         "correct (default: only reviewed rows there)")
    ft.add_argument("--format-prior", action=argparse.BooleanOptionalAction, default=True,
                    help="give the reader the share of each plate format among the plates trained on, so that a "
                         "read is decoded as the formats your camera sees (--no-format-prior: every format the "
                         "reader knows weighs the same, as in the shipped set)")
    ft.add_argument("--countries", type=Path, action="append", default=[], metavar="DIR",
                    help="folder of your own country files (*.yaml): the synthetic plates mixed in are drawn from "
                         "them besides this checkout's countries/ (a file replaces a country of the same code), and "
                         "the new reader carries their formats, with its format prior learnt over them too; "
                         "repeatable (default: this checkout's countries/ only)")
    ft.add_argument("--seed", type=int, default=0, help="seed of the held-out split, the crops and the training")
    ft.add_argument("--batch", type=int, default=64, help="reader samples per training step")
    ft.add_argument("--lr", type=float, default=READER_LR, help="the reader's peak learning rate (cosine decay)")
    ft.add_argument("--synthetic-eval", type=int, default=300, metavar="N",
                    help="synthetic plates scored before and after (0: none)")
    ft.add_argument("--threads", type=int, default=2, help="CPU threads for training and the edge interpreters")
    ft.add_argument("--workers", type=int, default=2, help="processes that synthesize the synthetic samples")
    ft.add_argument("--fresh", action="store_true",
                    help="start over: delete OUT/work and the model files this command wrote (default: resume)")
    ft.set_defaults(func=_command)
    return ft
