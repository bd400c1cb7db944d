"""Train the detector or the reader on a synthetic set, resumably, within a time budget.

A run directory holds everything: ``backup/`` (Keras BackupAndRestore, so a
killed run resumes where it stopped), ``best.weights.h5``, ``model.keras``
(the final model), ``log.csv`` (per-epoch metrics) and ``train.json``
(what was trained on, for how long, and the final metrics).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import keras
import numpy as np
from keras import ops

from edge.plates import BLANK, MAX_CHARS, READER_CLASSES
from edge.recognize import decode_ctc
from trainer.data import DETECTOR_STRIDE, load_set, plate_weights, transplant_plate
from trainer.nets import build_detector, build_reader, count_macs

DETECTOR_CROP = 256  # the detector is fully convolutional: train on crops, export at full size


class _Batches(keras.utils.PyDataset):
    """Shuffled mini-batches from in-memory uint8 arrays, with the kind's augmentation."""

    def __init__(self, kind: str, x: np.ndarray, y: np.ndarray, batch: int, seed: int, train: bool,
                 transplant: float = 0.0) -> None:
        super().__init__()
        self.kind, self.x, self.y, self.batch, self.train = kind, x, y, batch, train
        #: Detector: share of crops that get a plate from another scene pasted in (``transplant_plate``).
        self.transplant = transplant
        self.rng = np.random.default_rng(seed)
        self.order = np.arange(len(x))
        if train:
            self.rng.shuffle(self.order)

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch)

    def on_epoch_end(self) -> None:
        if self.train:
            self.rng.shuffle(self.order)

    def __getitem__(self, i: int):
        idx = np.sort(self.order[i * self.batch : (i + 1) * self.batch])
        x, y = self.x[idx], self.y[idx]
        if self.kind == "reader":
            return x[..., None].astype(np.float32) / 255.0, y
        return self._detector_batch(x, y)

    def _detector_batch(self, x: np.ndarray, y: np.ndarray):
        s = DETECTOR_STRIDE
        c = DETECTOR_CROP
        xs = np.empty((len(x), c, c, 3), np.float32)
        # Channel 0: the coverage target; channel 1: its per-cell loss weights (``plate_weights``).
        ys = np.empty((len(x), c // s, c // s, 2), np.float32)
        for k in range(len(x)):
            if self.train:
                # Crop origins on the stride grid, so image and mask stay aligned.
                oy = int(self.rng.integers(0, (x.shape[1] - c) // s + 1)) * s
                ox = int(self.rng.integers(0, (x.shape[2] - c) // s + 1)) * s
            else:
                oy = ox = 0
            xi = x[k, oy : oy + c, ox : ox + c]
            yi = y[k, oy // s : (oy + c) // s, ox // s : (ox + c) // s]
            if self.train and self.transplant > 0 and self.rng.random() < self.transplant:
                xi, yi = xi.copy(), yi.copy()
                j = int(self.rng.integers(len(x)))
                transplant_plate(self.rng, xi, yi, x[j], y[j], s)
            if self.train and self.rng.random() < 0.5:
                xi, yi = xi[:, ::-1], yi[:, ::-1]
            xs[k] = xi / 255.0
            ys[k, ..., 0] = yi / 255.0
            ys[k, ..., 1] = plate_weights(ys[k, ..., 0])
        return xs, ys


def detector_loss(y_true, y_pred):
    """Weighted BCE plus weighted soft dice; ``y_true`` holds the target and its weights (``plate_weights``)."""
    target, weight = y_true[..., :1], y_true[..., 1:]
    bce = keras.losses.binary_crossentropy(target, y_pred)  # per cell: the channel axis has one entry
    inter = ops.sum(weight * target * y_pred, axis=(1, 2, 3))
    denom = ops.sum(weight * (target + y_pred), axis=(1, 2, 3))
    dice = 1.0 - (2.0 * inter + 1.0) / (denom + 1.0)
    return ops.sum(bce * weight[..., 0], axis=(1, 2)) / ops.sum(weight, axis=(1, 2, 3)) * 4.0 + dice


def plate_iou(y_true, y_pred):
    """IoU of the thresholded mask (0.5) with the target's plate cells, per image (1 where both are empty)."""
    truth = ops.cast(y_true[..., :1] >= 0.5, "float32")
    pred = ops.cast(y_pred >= 0.5, "float32")
    inter = ops.sum(truth * pred, axis=(1, 2, 3))
    union = ops.sum(ops.maximum(truth, pred), axis=(1, 2, 3))
    return (inter + 1.0) / (union + 1.0)


def _ctc(labels, probs):
    blank = len(READER_CLASSES) - 1
    label_len = ops.sum(ops.cast(ops.not_equal(labels, blank), "int32"), axis=1)
    steps = ops.full_like(label_len, ops.shape(probs)[1])
    # keras.ops.ctc_loss takes logits and log-softmaxes them: log-probabilities are their own log-softmax.
    return ops.ctc_loss(labels, ops.log(probs + 1e-7), label_len, steps, mask_index=blank)


def ctc_loss(y_true, y_pred):
    """CTC loss of the reader over its per-column softmax; labels are padded with the blank (last class).

    Labels of ``MAX_CHARS`` read the whole text over the joined column
    sequence (either head may read a one-row plate). Labels of twice that
    length give each row its own text (an empty bottom row for one-row
    plates), and each head is trained on its row alone: no ambiguity about
    which head reads what, so the reader learns faster.
    """
    labels = ops.cast(y_true, "int32")
    if y_true.shape[-1] == 2 * MAX_CHARS:
        half = y_pred.shape[1] // 2
        return _ctc(labels[:, :MAX_CHARS], y_pred[:, :half]) + _ctc(labels[:, MAX_CHARS:], y_pred[:, half:])
    return _ctc(labels, y_pred)


class _PlateAccuracy(keras.callbacks.Callback):
    """Validation exact match of whole plates, decoded by the edge's own CTC decoder."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        super().__init__()
        self.x = x[..., None].astype(np.float32) / 255.0
        self.truth = ["".join(READER_CLASSES[k] for k in row if READER_CLASSES[k] != BLANK) for row in y]

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        probs = self.model.predict(self.x, batch_size=256, verbose=0)
        reads = [decode_ctc(p, READER_CLASSES, BLANK).text for p in probs]
        acc = float(np.mean([r == t for r, t in zip(reads, self.truth)]))
        if logs is not None:
            logs["val_plate_accuracy"] = acc
        print(f"epoch {epoch + 1}: val plate accuracy {acc:.4f}", flush=True)


class _LogProgress(keras.callbacks.Callback):
    """One log line every ``every`` batches with rate and ETA (for background runs: --verbose 2)."""

    def __init__(self, every: int, steps: int) -> None:
        super().__init__()
        self.every, self.steps = every, steps

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.epoch, self.start = epoch, time.monotonic()

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        if (batch + 1) % self.every == 0:
            rate = (batch + 1) / (time.monotonic() - self.start)
            eta = (self.steps - batch - 1) / rate
            loss = (logs or {}).get("loss", float("nan"))
            print(f"epoch {self.epoch + 1} step {batch + 1}/{self.steps} loss {loss:.4f} "
                  f"{rate:.2f} steps/s, epoch ETA {eta / 60:.1f} min", flush=True)


class _TimeLimit(keras.callbacks.Callback):
    """Stop after ``minutes`` of training (checked after every batch)."""

    def __init__(self, minutes: float) -> None:
        super().__init__()
        self.deadline = time.monotonic() + minutes * 60

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        if time.monotonic() > self.deadline and not self.model.stop_training:
            print(f"time limit reached at step {batch + 1}; stopping", flush=True)
            self.model.stop_training = True


def _score(model: keras.Model, val_seq: "_Batches", accuracy: "_PlateAccuracy | None") -> dict:
    """Validation loss and metrics, named as in the training logs (val_*)."""
    logs = {f"val_{k}": float(v) for k, v in model.evaluate(val_seq, verbose=0, return_dict=True).items()}
    if accuracy is not None:
        accuracy.set_model(model)
        accuracy.on_epoch_end(-1, logs)
    return logs


def _set_threads(threads: int) -> None:
    """CPU threads for training, on whichever backend Keras runs (a GPU run leaves them alone under torch)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    elif backend == "torch":
        import torch

        if ops.zeros(()).device.type == "cpu":
            torch.set_num_threads(threads)


def build_for(kind: str) -> keras.Model:
    """A fresh model of ``kind`` at its training input size."""
    if kind == "detector":
        return build_detector(DETECTOR_CROP, DETECTOR_CROP)
    if kind == "reader":
        return build_reader()
    raise ValueError(f"unknown kind '{kind}', expected 'detector' or 'reader'")


def train(
    kind: str,
    data: Path,
    run_dir: Path,
    epochs: int = 20,
    batch: int = 32,
    minutes: float = 55.0,
    lr: float = 2e-3,
    threads: int = 2,
    seed: int = 0,
    val_fraction: float = 0.05,
    verbose: int = 2,
    init: Path | None = None,
    transplant: float = 0.0,
) -> dict:
    """Train ``kind`` on the set at ``data``; resumes if ``run_dir`` holds a backup.

    ``init``: an exported int8 model (a model set directory or a .tflite file) to start from
    (see ``trainer.from_tflite``); a resumed run continues from its own backup instead.
    ``transplant``: detector only, the share of training crops given a plate from another scene.
    """
    _set_threads(threads)
    keras.utils.set_random_seed(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    d = load_set(data)
    n_val = max(1, int(len(d["x"]) * val_fraction))
    train_seq = _Batches(kind, d["x"][n_val:], d["y"][n_val:], batch, seed, train=True, transplant=transplant)
    val_seq = _Batches(kind, d["x"][:n_val], d["y"][:n_val], batch, seed, train=False)

    model = build_for(kind)
    if init is not None:
        from trainer.from_tflite import load_int8_weights

        source = init / f"{kind}.tflite" if init.is_dir() else init
        if not source.is_file():
            raise FileNotFoundError(f"--init {init}: no {source.name} there")
        load_int8_weights(model, source)
    steps = epochs * len(train_seq)
    # BatchNorm's moving statistics are what the exported model uses: make them settle within the run,
    # also in a short one (the default momentum 0.99 needs a few thousand steps).
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = min(0.99, max(0.5, 1.0 - 10.0 / steps))
    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps, alpha=0.02, warmup_target=None)
    opt = keras.optimizers.Adam(schedule)
    if kind == "reader":
        model.compile(opt, ctc_loss)
        monitor = "val_plate_accuracy"
    else:
        model.compile(opt, detector_loss, metrics=[keras.metrics.MeanMetricWrapper(plate_iou, name="iou")])
        monitor = "val_iou"
    # The accuracy callback runs first, so the checkpoint below sees its figure.
    callbacks = [_PlateAccuracy(d["x"][:n_val][:2000], d["y"][:n_val][:2000])] if kind == "reader" else []
    callbacks += [
        keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
        keras.callbacks.ModelCheckpoint(str(run_dir / "best.weights.h5"), monitor=monitor, mode="max",
                                        save_best_only=True, save_weights_only=True),
        keras.callbacks.CSVLogger(str(run_dir / "log.csv"), append=True),
        _TimeLimit(minutes),
    ]
    if verbose == 2:
        callbacks.append(_LogProgress(max(1, len(train_seq) // 20), len(train_seq)))
    start = time.monotonic()
    hist = model.fit(train_seq, validation_data=val_seq, epochs=epochs, callbacks=callbacks, verbose=verbose)
    wall = time.monotonic() - start
    # A time-limited run may stop mid-epoch, after the last checkpoint: keep whichever weights score better.
    final = _score(model, val_seq, callbacks[0] if kind == "reader" else None)
    best = run_dir / "best.weights.h5"
    if best.is_file():
        last = model.get_weights()
        model.load_weights(best)
        at_best = _score(model, val_seq, callbacks[0] if kind == "reader" else None)
        # Ties (e.g. no whole plate right yet in a short run) go to the lower loss.
        if (at_best[monitor], -at_best["val_loss"]) > (final[monitor], -final["val_loss"]):
            final = at_best
        else:
            model.set_weights(last)
    model.save(run_dir / "model.keras")
    info = {
        "kind": kind,
        "data": str(data),
        "samples": int(len(d["x"])),
        "epochs_run": len(hist.history.get("loss", [])),
        "epochs_planned": epochs,
        "batch": batch,
        "lr": lr,
        "threads": threads,
        "init": str(init) if init is not None else None,
        "transplant": transplant,
        "wall_s_this_session": round(wall, 1),
        "val": final,
        "macs_train_input": count_macs(model),
    }
    prev = run_dir / "train.json"
    if prev.is_file():
        info["wall_s_total"] = round(json.loads(prev.read_text()).get("wall_s_total", 0) + wall, 1)
    else:
        info["wall_s_total"] = round(wall, 1)
    prev.write_text(json.dumps(info, indent=2))
    return info
