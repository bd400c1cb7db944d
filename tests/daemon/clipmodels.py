"""A short synthetic clip with known plates, and tiny int8 models that certainly read it.

Run as a script (``python clipmodels.py OUT_DIR``) in its own process, so that
TensorFlow's thread settings apply and its memory goes away afterwards. It
writes into OUT_DIR:

- ``clip.avi`` (MJPG, 10 fps) and ``frames/NNNN.jpg``: three vehicles, one
  after the other, each driving across the frame, with empty road between;
- ``truth.json``: plate texts, the frames each vehicle is in, frame size, fps;
- ``models/``: a detector and a reader (int8, with metadata) overfitted to
  exactly these plates in exactly this scene, exported through the trainer's
  real int8 path, so that the daemon's reads are certain without stubbing
  anything in the edge.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

FPS = 10.0
WIDTH, HEIGHT = 320, 256  # multiples of 32: the detector is built at exactly the frame size
#: (text, format) of the vehicles, in the order they pass.
PLATES = (("AB12CDE", "gb_current"), ("ZG4821KT", "hr"), ("MXE7315", "gr"))
GAP = 5  # empty-road frames before, between and after the vehicles
VISIBLE = 12  # frames each vehicle is in view


def timeline() -> list[int | None]:
    """Vehicle index per frame (None: empty road)."""
    out: list[int | None] = [None] * GAP
    for i in range(len(PLATES)):
        out += [i] * VISIBLE + [None] * GAP
    return out


def render_frames(seed: int = 11) -> tuple[list[np.ndarray], list[list[dict]]]:
    """BGR frames and, per frame, the plates in it (text, quad)."""
    from trainer.synth import render_plate
    from trainer.synth.scene import background, draw_car, paste_plate

    rng = np.random.default_rng(seed)
    road = background(rng, HEIGHT, WIDTH)
    # Plates in good repair (no faded ink or shaded sheet): the harness tests the daemon, not the reader.
    plates = [render_plate(np.random.default_rng((seed, i)), text, fmt, two_rows=False, width_px=240, wear=False)[0]
              for i, (text, fmt) in enumerate(PLATES)]
    frames, labels = [], []
    seen = [0] * len(PLATES)
    for vehicle in timeline():
        img = road.copy()
        frame_plates = []
        if vehicle is not None:
            k = seen[vehicle] / (VISIBLE - 1)
            seen[vehicle] += 1
            pw = 84 + 16 * k  # the car comes nearer while it crosses
            plate = plates[vehicle]
            ph = pw * plate.shape[0] / plate.shape[1]
            cx, cy = WIDTH * (0.28 + 0.44 * k), HEIGHT * (0.55 + 0.1 * k)
            quad = np.float32([[cx - pw / 2, cy - ph / 2], [cx + pw / 2, cy - ph / 2],
                               [cx + pw / 2, cy + ph / 2], [cx - pw / 2, cy + ph / 2]])
            # Same seed every frame: the car keeps its look while it moves.
            draw_car(np.random.default_rng((seed, 100 + vehicle)), img, cx, cy, pw, ph, pw * 3.4,
                     [(*quad.min(0), *quad.max(0))])
            paste_plate(img, plate, quad)
            frame_plates.append({"text": PLATES[vehicle][0], "quad": quad.tolist()})
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
        labels.append(frame_plates)
    return frames, labels


def write_clip(out: Path, frames: list[np.ndarray]) -> list[np.ndarray]:
    """Write the MJPG clip and the JPEG folder; return the frames as the clip decodes them."""
    video = out / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (WIDTH, HEIGHT))
    for f in frames:
        writer.write(f)
    writer.release()
    (out / "frames").mkdir(exist_ok=True)
    for i, f in enumerate(frames):
        cv2.imwrite(str(out / "frames" / f"{i:04d}.jpg"), f, [cv2.IMWRITE_JPEG_QUALITY, 95])
    cap = cv2.VideoCapture(str(video))
    decoded = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        decoded.append(f)
    cap.release()
    if len(decoded) != len(frames):
        raise RuntimeError(f"{video}: wrote {len(frames)} frames, read back {len(decoded)}")
    return decoded


def _camera_noise(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """What differs between the clip, its JPEG folder and an RTSP re-encode: compression and noise."""
    img = img.astype(np.float32) * rng.uniform(0.9, 1.1) + rng.uniform(-12, 12)
    img = np.clip(img + rng.normal(0, rng.uniform(0, 4), img.shape), 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (3, 3), rng.uniform(0.3, 1.0))
    _, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 96))])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


def detector_set(rng: np.random.Generator, frames: list[np.ndarray], labels: list[list[dict]], copies: int):
    from trainer.data import DETECTOR_STRIDE, plate_mask

    xs, ys = [], []
    for _ in range(copies):
        for f, lab in zip(frames, labels, strict=True):
            xs.append(cv2.cvtColor(_camera_noise(rng, f), cv2.COLOR_BGR2RGB))
            ys.append(plate_mask([np.float32(p["quad"]) for p in lab], HEIGHT, WIDTH, DETECTOR_STRIDE))
    return np.stack(xs), np.stack(ys)[..., None]


def reader_set(rng: np.random.Generator, frames: list[np.ndarray], labels: list[list[dict]], per_frame: int):
    from edge.plates import BLANK, MAX_CHARS, READER_CLASSES
    from edge.recognize import crop_plate, encode_label
    from trainer.data import READER_INPUT, READER_MARGIN, jitter_quad

    h, w = READER_INPUT
    xs, ys = [], []
    for f, lab in zip(frames, labels, strict=True):
        for p in lab:
            for _ in range(per_frame):
                quad = jitter_quad(rng, np.float32(p["quad"]), 0.1)
                xs.append(crop_plate(_camera_noise(rng, f), quad, w, h, READER_MARGIN))
                # Per-row labels (a one-row plate: empty bottom row), so each reader head learns its row.
                ys.append(np.concatenate([encode_label(p["text"], READER_CLASSES, MAX_CHARS, BLANK),
                                          encode_label("", READER_CLASSES, MAX_CHARS, BLANK)]))
    order = rng.permutation(len(xs))
    return np.stack(xs)[order], np.stack(ys)[order]


def train_models(out: Path, frames: list[np.ndarray], labels: list[list[dict]], threads: int = 2) -> dict:
    """Overfit a detector and a reader on the clip; export both to int8 under ``out/models``."""
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(0)
    from trainer.export import export_model, exportable
    from trainer.nets import build_detector, build_reader
    from trainer.train import ctc_loss

    def dice_bce(y_true, y_pred):
        # Per-cell cross-entropy plus a dice term, so the few plate cells are not drowned by the road.
        bce = tf.reduce_mean(keras.losses.binary_crossentropy(y_true, y_pred), axis=[1, 2])
        inter = tf.reduce_sum(y_true * y_pred, axis=[1, 2, 3])
        dice = 1.0 - (2.0 * inter + 1.0) / (tf.reduce_sum(y_true + y_pred, axis=[1, 2, 3]) + 1.0)
        return bce * 4.0 + dice

    def fast_batchnorm(model: keras.Model) -> keras.Model:
        # A few hundred steps are all we train: moving statistics with the default momentum (0.99)
        # would still be near their initial values, and the exported (inference-mode) model useless.
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.8
        return model

    rng = np.random.default_rng(1)
    report: dict = {}
    t0 = time.monotonic()
    dx, dy = detector_set(rng, frames, labels, copies=3)
    det = fast_batchnorm(build_detector(HEIGHT, WIDTH))
    det.compile(keras.optimizers.Adam(3e-3), dice_bce)
    det.fit(dx.astype(np.float32) / 255.0, dy, batch_size=8, epochs=14, verbose=0, shuffle=True)
    report["detector_train_s"] = round(time.monotonic() - t0, 1)

    t0 = time.monotonic()
    rx, ry = reader_set(rng, frames, labels, per_frame=16)
    rd = fast_batchnorm(build_reader())
    rd.compile(keras.optimizers.Adam(2e-3), ctc_loss)
    rd.fit(rx[..., None].astype(np.float32) / 255.0, ry, batch_size=32, epochs=30, verbose=0, shuffle=True)
    report["reader_train_s"] = round(time.monotonic() - t0, 1)

    t0 = time.monotonic()
    det1 = build_detector(HEIGHT, WIDTH, batch=1)
    det1.set_weights(det.get_weights())
    export_model("detector", det1, dx[:40], dx[:4], out / "export")
    export_model("reader", exportable("reader", rd), rx[:200], rx[:20], out / "export")
    (out / "export" / "int8").rename(out / "models")
    report["export_s"] = round(time.monotonic() - t0, 1)
    return report


def check_reads(models: Path, frames: list[np.ndarray], labels: list[list[dict]]) -> dict:
    """Read every frame through the edge pipeline: counts of right, wrong and spurious reads."""
    from edge.pipeline import Pipeline
    from edge.search import SearchSettings

    # These models know the clip at whole-frame scale only: no tiles, no zoomed second look (as in base_config).
    pipe = Pipeline.from_dir(models, num_threads=2, search=SearchSettings(refine=0, tiles=0))
    right = wrong = spurious = missed = 0
    for f, lab in zip(frames, labels, strict=True):
        reads = pipe(f)
        truth = {p["text"] for p in lab}
        got = [r.text for r in reads]
        if not truth:
            spurious += len(got)
        elif not got:
            missed += 1
        else:
            right += got[0] in truth
            wrong += got[0] not in truth
    return {"right": right, "wrong": wrong, "missed": missed, "spurious": spurious}


def build(out: Path) -> dict:
    """Make the clip and the models in ``out``; return truth.json's content."""
    out.mkdir(parents=True, exist_ok=True)
    frames, labels = render_frames()
    decoded = write_clip(out, frames)
    report = train_models(out, decoded, labels)
    report["reads"] = check_reads(out / "models", decoded, labels)
    truth = {
        "plates": [t for t, _ in PLATES],
        "fps": FPS,
        "size": [WIDTH, HEIGHT],
        "frames": len(frames),
        "timeline": timeline(),
        "labels": labels,
        "report": report,
    }
    (out / "truth.json").write_text(json.dumps(truth, indent=1))
    return truth


if __name__ == "__main__":
    result = build(Path(sys.argv[1]))
    print(json.dumps(result["report"]))
