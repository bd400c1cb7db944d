"""Training sets for the two networks, made from synthetic scenes and patches.

Samples are produced through the edge's own pre-processing (``letterbox``,
``rect_quad``, ``crop_plate``), so the networks learn exactly the inputs the
device will feed them. Sets are written as compressed .npz files with a
sidecar of how they were made; generation runs in worker processes with a
progress bar and is deterministic by seed (sample i uses seed (seed, i)).
"""
from __future__ import annotations

import json
import multiprocessing as mp
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edge.detect import letterbox, rect_quad
from edge.plates import BLANK, MAX_CHARS, READER_CLASSES
from edge.recognize import crop_plate, encode_label
from trainer.synth import make_plate_patch, make_scene, random_text
from trainer.synth.text import countries_in_use, row_texts, use_countries

# What the networks see (kept here, free of TensorFlow, so worker processes start fast).
DETECTOR_STRIDE = 4
DETECTOR_INPUT = (384, 512)  # height, width of the exported detector
READER_INPUT = (64, 192)  # height, width of the reader crop
#: Crop margin the reader is trained with (fraction of plate width, height per side).
READER_MARGIN = (0.06, 0.12)


def wide_input(height: int, width: int) -> tuple[int, int] | None:
    """Height, width of the wide form (``edge.model``'s ``detector_wide.tflite``) of a detector of this input, or
    None where the detector's own input has no more rows than it (it is already as wide).

    The same width, and the rows a 16:9 frame fills at it plus one cell of the network's coarsest (stride-32)
    layer, in whole cells: 320 for the shipped 512x384 detector, whose 16:9 frame takes 288 rows. The cell of
    letterbox below the frame keeps the context the 4:3 input gives its bottom edge (without it the detector
    finds plates near that edge less well)."""
    rows = -(-(width * 9 // 16 + 32) // 32) * 32
    return (rows, width) if rows < height else None


def plate_mask(quads: list[np.ndarray], height: int, width: int, stride: int) -> np.ndarray:
    """Soft plate-coverage target (height/stride, width/stride) in [0, 1] for given quads."""
    sub = 4  # render at 4 sub-cells per cell edge, then average: coverage fraction per cell
    hi = np.zeros((height // stride * sub, width // stride * sub), np.uint8)
    for q in quads:
        pts = np.round(np.asarray(q, np.float32) / stride * sub * 8).astype(np.int32)
        cv2.fillPoly(hi, [pts], 255, lineType=cv2.LINE_8, shift=3)
    return cv2.resize(hi, (width // stride, height // stride), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


#: Plate area, in output cells, at which a plate's cells weigh 1 in the detector loss; smaller plates weigh more.
PLATE_REF_CELLS = 48.0
#: The most a small plate's cells (and the ring of cells around it) weigh.
PLATE_MAX_WEIGHT = 4.0


def plate_weights(target: np.ndarray) -> np.ndarray:
    """Per-cell loss weights for a plate-coverage target (h, w) in [0, 1].

    A plate's share of the loss grows with its area, so a plate of a few
    cells would barely count beside one of hundreds, and the detector would
    learn large plates first and small ones last; yet far plates are most of
    what a roadside camera sees. Each plate's cells, and a one-cell ring
    around them where a small plate's mask must stop, weigh
    sqrt(PLATE_REF_CELLS / area), between 1 and PLATE_MAX_WEIGHT.
    """
    weights = np.ones(target.shape, np.float32)
    n, labels = cv2.connectedComponents((target > 0).astype(np.uint8), connectivity=8)
    ring = np.ones((3, 3), np.uint8)
    for i in range(1, n):
        region = labels == i
        area = float(target[region].sum())
        w = float(np.clip(np.sqrt(PLATE_REF_CELLS / max(area, 1e-3)), 1.0, PLATE_MAX_WEIGHT))
        if w > 1.0:
            grown = cv2.dilate(region.astype(np.uint8), ring).astype(bool)
            weights[grown] = np.maximum(weights[grown], w)
    return weights


def transplant_plate(rng: np.random.Generator, image: np.ndarray, target: np.ndarray, donor: np.ndarray,
                     donor_target: np.ndarray, stride: int) -> bool:
    """Paste one of ``donor``'s plates, with a cell of its surroundings, at a random place of ``image``.

    ``image`` (H, W, 3) and ``target`` (H/stride, W/stride, coverage 0-255)
    change in place; the surroundings fade out over that cell, so no hard
    seam frames the plate. A synthetic plate always sits on a synthetic car,
    and the detector learns the car as much as the plate: on real cars it
    misses far plates that it finds once their surroundings are blurred
    away. Plates among other scenes' clutter are meant to teach it the plate
    itself (``train --transplant``; what it measured is in the model card).
    Returns False (nothing changed) when the donor has no plate or it does
    not fit clear of the image's own plates.
    """
    n, labels, stats, _ = cv2.connectedComponentsWithStats((donor_target >= 128).astype(np.uint8), connectivity=8)
    if n < 2:
        return False
    i = int(rng.integers(1, n))
    x, y, w, h = (int(v) for v in stats[i, :4])
    x0, y0 = max(0, x - 1), max(0, y - 1)
    x1, y1 = min(donor_target.shape[1], x + w + 1), min(donor_target.shape[0], y + h + 1)
    th, tw = target.shape[:2]
    if x1 - x0 >= tw or y1 - y0 >= th:
        return False
    dx, dy = int(rng.integers(0, tw - (x1 - x0) + 1)), int(rng.integers(0, th - (y1 - y0) + 1))
    if target[dy : dy + y1 - y0, dx : dx + x1 - x0].any():
        return False
    cells = (labels[y0:y1, x0:x1] == i).astype(np.float32)
    ring = cv2.resize(cv2.dilate(cells, np.ones((3, 3), np.uint8)), None, fx=stride, fy=stride,
                      interpolation=cv2.INTER_NEAREST)
    alpha = np.maximum(cv2.resize(cells, None, fx=stride, fy=stride, interpolation=cv2.INTER_NEAREST),
                       cv2.GaussianBlur(ring, (0, 0), stride / 2))[..., None]
    src = donor[y0 * stride : y1 * stride, x0 * stride : x1 * stride].astype(np.float32)
    dst = image[dy * stride : (dy + y1 - y0) * stride, dx * stride : (dx + x1 - x0) * stride]
    dst[:] = np.round(dst * (1 - alpha) + src * alpha).astype(image.dtype)
    target[dy : dy + y1 - y0, dx : dx + x1 - x0] = np.where(cells > 0, donor_target[y0:y1, x0:x1], 0)
    return True


def jitter_quad(rng: np.random.Generator, quad: np.ndarray, amount: float) -> np.ndarray:
    """The rotated rectangle a detector would give for ``quad``, randomly shifted and scaled.

    The detector outputs a min-area rectangle at cell resolution, not the exact
    corners, so the reader is trained on the same kind of imprecise quads.
    """
    q = rect_quad(quad)
    c = q.mean(axis=0)
    w = np.linalg.norm(q[1] - q[0])
    h = np.linalg.norm(q[3] - q[0])
    scale = np.array([1 + rng.uniform(-amount, amount), 1 + rng.uniform(-amount, 1.5 * amount)], np.float32)
    ux = (q[1] - q[0]) / max(w, 1e-6)
    uy = (q[3] - q[0]) / max(h, 1e-6)
    shift = ux * rng.uniform(-amount, amount) * w + uy * rng.uniform(-amount, amount) * h
    local = np.stack([(q - c) @ ux, (q - c) @ uy], axis=1) * scale
    return (c + shift + local[:, :1] * ux + local[:, 1:] * uy).astype(np.float32)


@dataclass(frozen=True)
class _Job:
    kind: str
    seed: int
    start: int
    count: int
    texts: tuple[tuple[str, str], ...] = ()  # a fixed pool of (text, format) to draw from, when given
    photos: tuple[str, ...] = ()  # the user's background pictures, when given
    countries: tuple[str, ...] = ()  # the country folders the texts are drawn from (spawned workers start afresh)


def _reader_samples(job: _Job) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if job.countries and job.countries != countries_in_use():
        use_countries(*job.countries)
    h, w = READER_INPUT
    x = np.zeros((job.count, h, w), np.uint8)
    y = np.zeros((job.count, 2 * MAX_CHARS), np.int32)
    texts = []
    for k in range(job.count):
        rng = np.random.default_rng((job.seed, job.start + k))
        fixed = job.texts[int(rng.integers(len(job.texts)))] if job.texts else None
        scene = make_plate_patch(rng, plate=fixed, photos=job.photos)
        plate = scene.plates[0]
        quad = jitter_quad(rng, plate.quad, 0.06)
        x[k] = crop_plate(scene.image, quad, w, h, READER_MARGIN)
        # Per-row labels: each reader head learns its own row (one-row plates: empty bottom row).
        top, bottom = row_texts(plate.text, plate.format) if plate.rows == 2 else (plate.text, "")
        y[k] = np.concatenate([encode_label(top, READER_CLASSES, MAX_CHARS, BLANK),
                               encode_label(bottom, READER_CLASSES, MAX_CHARS, BLANK)])
        texts.append(plate.text)
    return x, y, texts


def _detector_samples(job: _Job) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if job.countries and job.countries != countries_in_use():
        use_countries(*job.countries)
    h, w = DETECTOR_INPUT
    x = np.zeros((job.count, h, w, 3), np.uint8)
    y = np.zeros((job.count, h // DETECTOR_STRIDE, w // DETECTOR_STRIDE), np.uint8)
    texts = []
    for k in range(job.count):
        rng = np.random.default_rng((job.seed, job.start + k))
        # Camera-like frame sizes: 4:3 and 16:9 from VGA to 720p, letterboxed like on the device.
        # Rendered at most 800 wide: the letterbox shrinks it to 512 anyway, and pixels cost generation time.
        fw = int(rng.integers(480, 801))
        scene = make_scene(rng, width=fw, height=int(fw * (0.75 if rng.random() < 0.5 else 0.5625)), photos=job.photos)
        pixels, lb = letterbox(scene.image, w, h)
        x[k] = pixels
        quads = [p.quad * lb.scale for p in scene.plates]
        y[k] = np.round(plate_mask(quads, h, w, DETECTOR_STRIDE) * 255).astype(np.uint8)
        texts.append(" ".join(p.text for p in scene.plates))
    return x, y, texts


_MAKERS = {"reader": _reader_samples, "detector": _detector_samples}


def generate(
    kind: str, n: int, seed: int, workers: int = 2, chunk: int = 64, progress: bool = True, texts: int = 0,
    photos: tuple[str, ...] = (),
) -> dict[str, np.ndarray]:
    """Make ``n`` samples of ``kind`` ('reader' or 'detector') in worker processes.

    ``photos``: image files to use as most backgrounds (``trainer.synth.scene.list_backgrounds``).

    ``texts`` > 0 draws reader plates from a fixed pool of that many texts: a
    set a small network can learn in minutes, to check a training pipeline.
    """
    if kind not in _MAKERS:
        raise ValueError(f"unknown kind '{kind}', expected one of {sorted(_MAKERS)}")
    pool_rng = np.random.default_rng((seed, 1 << 31))  # apart from the per-sample seeds (seed, i)
    text_pool = tuple(random_text(pool_rng) for _ in range(texts))
    jobs = [_Job(kind, seed, s, min(chunk, n - s), text_pool, tuple(photos), countries_in_use())
            for s in range(0, n, chunk)]
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    drawn: list[str] = []
    with mp.get_context("spawn").Pool(workers) if workers > 1 else _Inline() as pool:
        bar = tqdm(total=n, desc=f"synth {kind}", unit="img", disable=not progress)
        for x, y, t in pool.imap(_MAKERS[kind], jobs):
            xs.append(x)
            ys.append(y)
            drawn.extend(t)
            bar.update(len(x))
        bar.close()
    return {"x": np.concatenate(xs), "y": np.concatenate(ys), "text": np.array(drawn)}


class _Inline:
    """Stand-in for a Pool when one process is asked for (tests, debugging)."""

    def imap(self, fn, jobs):
        return map(fn, jobs)

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def save_set(path: Path, data: dict[str, np.ndarray], info: dict) -> None:
    """Write a set as .npz plus ``<path>.json`` describing it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Uncompressed: sets are large and compression costs minutes on 2 cores. The ignore: mypy takes **data for
    # savez's allow_pickle too, but its keys are array names.
    np.savez(path, **data)  # type: ignore[arg-type]
    Path(str(path) + ".json").write_text(json.dumps(info | {"count": len(data["x"])}, indent=2))


def load_set(path: Path) -> dict[str, np.ndarray]:
    """Read a set written by ``save_set``; errors name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: data set not found (make it with `python -m trainer synth`)")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
