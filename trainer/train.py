"""Train the detector or the reader on a synthetic set, resumably, within a time budget.

A run directory holds everything:

- ``checkpoint.npz``: the training state (model weights, optimizer state with its
  step counter, which the learning-rate schedule follows, the epoch and the step
  within it, the wall time spent, the run's arguments and its sessions), written
  at the end of every epoch and when a session stops early; always replaced
  whole (temporary file, then rename), so a kill never leaves half of one;
- ``best.weights.h5``: the weights that scored best on the validation split so far;
- ``model.keras``: the model of the last session (``trainer export`` reads it);
- ``log.csv``: one row per epoch (1-based), a stopped epoch's part and its rest
  in two rows;
- ``train.json``: what was trained on, each session's true wall time and their
  sum, and the final metrics.

Rerunning the same command resumes from ``checkpoint.npz``; ``fresh=True``
starts over.
"""
from __future__ import annotations

import csv
import datetime as dt
import gc
import json
import math
import os
import shutil
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import keras
import numpy as np
from keras import ops

from edge.plates import BLANK, MAX_CHARS, READER_CLASSES
from edge.recognize import decode_ctc
from trainer.data import DETECTOR_STRIDE, load_set, plate_weights, transplant_plate
from trainer.nets import DETECTOR_FINE, build_detector, build_reader, count_macs

DETECTOR_CROP = 256  # the detector is fully convolutional: train on crops, export at full size

CHECKPOINT = "checkpoint.npz"
#: Version of the checkpoint's layout; a newer trainer refuses one it cannot read rather than guess.
CHECKPOINT_FORMAT = 1
#: A new run's arguments where none are given; a resumed run keeps those it was started with.
RUN_DEFAULTS = {"epochs": 20, "batch": 32, "lr": 2e-3, "seed": 0, "val_fraction": 0.05, "transplant": 0.0}
#: Floor of the cosine learning-rate schedule, as a share of the peak rate.
LR_FLOOR = 0.02


class _Cosine(keras.optimizers.schedules.LearningRateSchedule):
    """Keras's cosine decay (``peak`` down to ``floor`` x ``peak`` over ``steps`` steps, then that floor), with
    ``steps`` a variable that ``_EndWithTime`` may move while training."""

    def __init__(self, peak: float, steps: int, floor: float) -> None:
        self.peak, self.floor = peak, floor
        self.steps = keras.Variable(float(steps), dtype="float32", trainable=False, name="decay_steps")

    def __call__(self, step):  # a step tensor in, a rate tensor out
        t = ops.minimum(ops.cast(step, "float32") / self.steps, 1.0)
        return self.peak * (self.floor + (1.0 - self.floor) * 0.5 * (1.0 + ops.cos(math.pi * t)))

    def get_config(self) -> dict:
        return {"peak": self.peak, "steps": int(keras.ops.convert_to_numpy(self.steps)), "floor": self.floor}


class _EndWithTime(keras.callbacks.Callback):
    """Ends the learning-rate schedule by the session's deadline, at the step rate this session has shown.

    A run planned to fill a time (``trainer finetune``) times a step once, at
    the start; when the machine then runs slower, a fixed schedule is cut off
    by the deadline while its rate is still high, and its low-rate end, where
    the weights settle, is lost. This moves the schedule's end to the step the
    deadline will be reached at, re-estimated every ``EVERY`` steps, and never
    past ``planned`` (the run's plan, or where an earlier session ended it).
    """

    #: Steps left out of the rate: the first ones include tracing the training step.
    WARMUP = 10
    EVERY = 20

    def __init__(self, schedule: _Cosine, state: dict, deadline: float, planned: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.schedule, self.state, self.deadline, self.planned, self.clock = schedule, state, deadline, planned, clock
        self.steps = 0
        self.since = 0.0

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        self.steps += 1
        if self.steps == self.WARMUP:
            self.since = self.clock()
        if self.steps < self.WARMUP + self.EVERY or (self.steps - self.WARMUP) % self.EVERY:
            return
        now = self.clock()
        rate = (self.steps - self.WARMUP) / max(now - self.since, 1e-9)
        step = self.state["global_step"]
        end = int(min(self.planned, max(step + 1, step + (self.deadline - now) * rate)))
        self.schedule.steps.assign(float(end))
        self.state["decay_steps_fitted"] = end


class _Batches(keras.utils.PyDataset):
    """Mini-batches from in-memory uint8 arrays, with the kind's augmentation.

    The order of epoch ``e`` and each batch's augmentation draw from
    ``(seed, e)`` and ``(seed, e, batch)``: nothing depends on what was fetched
    before, so a resumed run sees exactly the batches an uninterrupted one would.
    ``skip``: batches of the first epoch already trained before a resume (the
    sequence then holds the rest of that epoch only).
    """

    def __init__(self, kind: str, x: np.ndarray, y: np.ndarray, batch: int, seed: int, train: bool,
                 transplant: float = 0.0, epoch: int = 0, skip: int = 0) -> None:
        super().__init__()
        self.kind, self.x, self.y, self.batch, self.seed, self.train = kind, x, y, batch, seed, train
        #: Detector: share of crops that get a plate from another scene pasted in (``transplant_plate``).
        self.transplant = transplant
        #: The epoch being trained (0-based, as Keras counts); set by ``_Session`` as each epoch begins.
        self.epoch = epoch
        self.skip = skip
        self._order: tuple[int, np.ndarray] | None = None

    @property
    def full_len(self) -> int:
        """Batches in a whole epoch."""
        return math.ceil(len(self.x) / self.batch)

    def __len__(self) -> int:
        return self.full_len - self.skip

    def order(self) -> np.ndarray:
        """Sample order of the current epoch."""
        if not self.train:
            return np.arange(len(self.x))
        cached = self._order
        if cached is None or cached[0] != self.epoch:
            cached = (self.epoch, np.random.default_rng((self.seed, self.epoch)).permutation(len(self.x)))
            self._order = cached  # one assignment: a prefetching thread sees the old pair or the new one
        return cached[1]

    def __getitem__(self, i: int):
        i += self.skip
        idx = np.sort(self.order()[i * self.batch : (i + 1) * self.batch])
        x, y = self.x[idx], self.y[idx]
        if self.kind == "reader":
            return x[..., None].astype(np.float32) / 255.0, y
        return self._detector_batch(x, y, np.random.default_rng((self.seed, self.epoch, i)))

    def _detector_batch(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator):
        s = DETECTOR_STRIDE
        c = DETECTOR_CROP
        xs = np.empty((len(x), c, c, 3), np.float32)
        # Channel 0: the coverage target; channel 1: its per-cell loss weights (``plate_weights``).
        ys = np.empty((len(x), c // s, c // s, 2), np.float32)
        for k in range(len(x)):
            if self.train:
                # Crop origins on the stride grid, so image and mask stay aligned.
                oy = int(rng.integers(0, (x.shape[1] - c) // s + 1)) * s
                ox = int(rng.integers(0, (x.shape[2] - c) // s + 1)) * s
            else:
                oy = ox = 0
            xi = x[k, oy : oy + c, ox : ox + c]
            yi = y[k, oy // s : (oy + c) // s, ox // s : (ox + c) // s]
            if self.train and self.transplant > 0 and rng.random() < self.transplant:
                xi, yi = xi.copy(), yi.copy()
                j = int(rng.integers(len(x)))
                transplant_plate(rng, xi, yi, x[j], y[j], s)
            if self.train and rng.random() < 0.5:
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

    def measure(self, model: keras.Model, label: str) -> float:
        """Exact match of ``model`` on the validation plates, printed under ``label``."""
        probs = model.predict(self.x, batch_size=256, verbose=0)
        reads = [decode_ctc(p, READER_CLASSES, BLANK).text for p in probs]
        acc = float(np.mean([r == t for r, t in zip(reads, self.truth, strict=True)]))
        print(f"{label}: val plate accuracy {acc:.4f}", flush=True)
        return acc

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        acc = self.measure(self.model, f"epoch {epoch + 1}")
        if logs is not None:
            logs["val_plate_accuracy"] = acc


def _atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write ``path`` through a temporary file renamed over it: readers see the old file or the new, whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_save(path: Path, save: Callable[[Path], None]) -> None:
    """``_atomic_write`` for Keras savers, which take a path and insist on its suffix."""
    tmp = path.with_name(f".tmp.{path.name}")
    save(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class _Run:
    """A run directory's training state: what ``checkpoint.npz`` holds, and how it is read and written."""

    def __init__(self, run_dir: Path, state: dict, weights: list[np.ndarray] | None = None,
                 opt_vars: list[np.ndarray] | None = None) -> None:
        self.dir = run_dir
        #: JSON-able: format, kind, data, samples, args, steps_per_epoch, frozen_layers, epoch (completed),
        #: step (batches done of the next epoch), global_step, wall_s, best, sessions.
        self.state = state
        self.weights = weights
        self.opt_vars = opt_vars

    @property
    def path(self) -> Path:
        return self.dir / CHECKPOINT

    @classmethod
    def load(cls, run_dir: Path) -> _Run | None:
        """The run's checkpoint, or None where there is none; a damaged one is an error naming the file."""
        path = run_dir / CHECKPOINT
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                state = json.loads(str(z["state"]))
                weights = [z[f"w{i}"] for i in range(state["n_weights"])]
                opt_vars = [z[f"o{i}"] for i in range(state["n_opt_vars"])]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: unreadable checkpoint ({e}); --fresh starts the run over") from e
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: checkpoint format {state.get('format')!r}, this trainer reads "
                             f"{CHECKPOINT_FORMAT}; --fresh starts the run over")
        return cls(run_dir, state, weights, opt_vars)

    def capture(self, model: keras.Model) -> None:
        """Take the model's and its optimizer's current values as the state to write."""
        self.weights = model.get_weights()
        self.opt_vars = [np.asarray(keras.ops.convert_to_numpy(v)) for v in model.optimizer.variables]

    def write(self) -> None:
        """Replace ``checkpoint.npz`` with the current state, whole."""
        assert self.weights is not None and self.opt_vars is not None
        self.state |= {"n_weights": len(self.weights), "n_opt_vars": len(self.opt_vars)}
        arrays = {f"w{i}": w for i, w in enumerate(self.weights)}
        arrays |= {f"o{i}": v for i, v in enumerate(self.opt_vars)}
        arrays["state"] = np.array(json.dumps(self.state))
        # The ignore: mypy takes **arrays for savez's allow_pickle too, but its keys are array names.
        _atomic_write(self.path, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]

    def restore(self, model: keras.Model) -> None:
        """Put the checkpoint's weights and optimizer state (its step counter included) into ``model``."""
        assert self.weights is not None and self.opt_vars is not None
        current = model.get_weights()
        if [w.shape for w in current] != [w.shape for w in self.weights]:
            raise ValueError(f"{self.path}: its weights do not fit this {self.state['kind']} network "
                             "(another architecture); --fresh starts the run over")
        model.set_weights(self.weights)
        opt = model.optimizer
        opt.build(model.trainable_variables)
        if [tuple(v.shape) for v in opt.variables] != [v.shape for v in self.opt_vars]:
            raise ValueError(f"{self.path}: its optimizer state does not fit this network; "
                             "--fresh starts the run over")
        for var, value in zip(opt.variables, self.opt_vars, strict=True):
            var.assign(value)


class _Session(keras.callbacks.Callback):
    """One session of a run: counts epochs and steps, stops at the session's limits, keeps the best
    weights, logs each epoch and writes the checkpoint at each epoch's end and at a stop."""

    def __init__(self, run: _Run, monitor: str, deadline: float, max_steps: int | None, started: float,
                 wall_before: float, verbose: int) -> None:
        super().__init__()
        self.run, self.monitor, self.deadline, self.max_steps = run, monitor, deadline, max_steps
        self.started, self.wall_before, self.verbose = started, wall_before, verbose
        self.seq: _Batches | None = None
        self.steps_this_session = 0
        #: Why the session ended: "epochs" (all done), "minutes" or "max-steps".
        self.stopped_by = "epochs"
        self.epoch_start = 0.0
        #: 1-based epochs this session trained in, first and last (the same one where it stopped within it).
        self.first_epoch = self.last_epoch = run.state["epoch"] + 1

    @property
    def state(self) -> dict:
        return self.run.state

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        assert self.seq is not None
        self.seq.epoch = epoch
        self.last_epoch = epoch + 1
        self.epoch_start = time.monotonic()

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        assert self.seq is not None
        self.state["step"] = self.seq.skip + batch + 1
        self.state["global_step"] += 1
        self.steps_this_session += 1
        if self.verbose == 2:
            self._progress(logs or {})
        if self.model.stop_training:
            return
        where = f"epoch {self.seq.epoch + 1} step {self.state['step']}/{self.state['steps_per_epoch']}"
        if self.max_steps is not None and self.steps_this_session >= self.max_steps:
            print(f"step limit ({self.max_steps}) reached at {where}; stopping", flush=True)
            self.stopped_by, self.model.stop_training = "max-steps", True
        elif time.monotonic() > self.deadline:
            print(f"time limit reached at {where}; stopping", flush=True)
            self.stopped_by, self.model.stop_training = "minutes", True

    def _progress(self, logs: dict) -> None:
        """One log line every 1/20 epoch with rate and ETA (for background runs: --verbose 2)."""
        assert self.seq is not None
        n = self.state["steps_per_epoch"]
        done = self.state["step"] - self.seq.skip  # steps of this epoch run in this session
        if done % max(1, n // 20):
            return
        rate = done / max(time.monotonic() - self.epoch_start, 1e-9)
        eta = (n - self.state["step"]) / rate
        print(f"epoch {self.seq.epoch + 1} step {self.state['step']}/{n} loss {logs.get('loss', float('nan')):.4f} "
              f"{rate:.2f} steps/s, epoch ETA {eta / 60:.1f} min", flush=True)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = dict(logs or {})
        complete = self.state["step"] >= self.state["steps_per_epoch"]
        value = logs.get(self.monitor)
        if value is not None and (self.state["best"] is None or value > self.state["best"]):
            _atomic_save(self.dir / "best.weights.h5", self.model.save_weights)
            self.state["best"] = float(value)
        if complete:
            self.state["epoch"], self.state["step"] = epoch + 1, 0
        self.checkpoint()
        self._log_row(epoch + 1, complete, logs)

    @property
    def dir(self) -> Path:
        return self.run.dir

    def checkpoint(self, ended: str | None = None, capture: bool = True) -> None:
        """Write the training state, with this session's record brought up to date.

        ``capture=False`` keeps the weights and optimizer state last captured: the session's end record,
        written after the model may have been given its best weights instead of its last.
        """
        wall = time.monotonic() - self.started
        self.state["wall_s"] = round(self.wall_before + wall, 1)
        self.state["sessions"][-1] |= {"wall_s": round(wall, 1), "epochs": [self.first_epoch, self.last_epoch],
                                       "end_step": self.state["global_step"], "steps": self.steps_this_session,
                                       "ended": ended}
        if capture:
            self.run.capture(self.model)
        self.run.write()

    def _log_row(self, epoch: int, complete: bool, logs: dict) -> None:
        path = self.dir / "log.csv"
        keys = sorted(logs)
        new = not path.is_file() or path.stat().st_size == 0
        with open(path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["epoch", "complete", "global_step", *keys])
            w.writerow([epoch, int(complete), self.state["global_step"], *(logs[k] for k in keys)])


def _score(model: keras.Model, val_seq: _Batches, accuracy: _PlateAccuracy | None, label: str) -> dict:
    """Validation loss and metrics, named as in the training logs (val_*)."""
    logs = {f"val_{k}": float(v) for k, v in model.evaluate(val_seq, verbose=0, return_dict=True).items()}
    if accuracy is not None:
        logs["val_plate_accuracy"] = accuracy.measure(model, label)
    return logs


def _set_threads(threads: int) -> None:
    """CPU threads for training, on whichever backend Keras runs (a GPU run leaves them alone under torch)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # fixed once TensorFlow has started in this process: keep what it has
            print(f"note: TensorFlow already started in this process; --threads {threads} not applied",
                  file=sys.stderr)
    elif backend == "torch":
        import torch

        if ops.zeros(()).device.type == "cpu":
            torch.set_num_threads(threads)


def build_for(kind: str, fine: int | None = None) -> keras.Model:
    """A fresh model of ``kind`` at its training input size; ``fine``: a detector's stride-4 channels
    (None: ``trainer.nets.DETECTOR_FINE``)."""
    if kind == "detector":
        return build_detector(DETECTOR_CROP, DETECTOR_CROP, fine=DETECTOR_FINE if fine is None else fine)
    if kind == "reader":
        return build_reader()
    raise ValueError(f"unknown kind '{kind}', expected 'detector' or 'reader'")


def _run_args(run: _Run | None, given: dict, data: Path, samples: int) -> dict:
    """The run's arguments: a new run's from ``given`` (defaults for the unset), a resumed run's its own.

    A value given explicitly that differs from the resumed run's own is refused: it would change the
    data stream or the model under the optimizer's feet.
    """
    if run is None:
        return {k: (RUN_DEFAULTS[k] if given.get(k) is None else given[k]) for k in RUN_DEFAULTS} | {
            "init": None if given.get("init") is None else str(given["init"]), "fine": given.get("fine")}
    own = run.state["args"]
    where = run.path
    if run.state["samples"] != samples:
        raise ValueError(f"{where}: the run was trained on {run.state['samples']} samples of "
                         f"{run.state['data']}, {data} has {samples}; use that set, or --fresh to start over")
    if Path(data).resolve() != Path(run.state["data"]).resolve():
        print(f"note: the run was trained on {run.state['data']}; continuing on {data} (same size)",
              file=sys.stderr)
    # A detector run of a trainer before --fine-channels was built 32 channels wide there.
    own = own | {"fine": own.get("fine", 32 if run.state["kind"] == "detector" else None)}
    for key in ("batch", "lr", "seed", "val_fraction", "transplant", "init", "fine"):
        value = given.get(key)
        if value is not None and (str(value) if key == "init" else value) != own[key]:
            flag = "--fine-channels" if key == "fine" else "--" + key.replace("_", "-")
            raise ValueError(f"{where}: {flag} {value} differs from the run's own {own[key]}; a resumed run keeps "
                             "its arguments (leave the flag out, or --fresh to start over with new ones)")
    epochs = own["epochs"] if given.get("epochs") is None else given["epochs"]
    return own | {"epochs": epochs}


def _refuse_unresumable(run_dir: Path) -> None:
    """Refuse a folder holding a model or a record but no checkpoint (a run of an older trainer, or
    another folder) rather than overwrite it."""
    found = [n for n in ("model.keras", "train.json", "backup") if (run_dir / n).exists()]
    if found:
        raise ValueError(f"{run_dir}: holds {', '.join(found)} but no {CHECKPOINT} to resume from (a run of "
                         "an older trainer, or another folder); pass --fresh to start it over, or another --run")


def _clear(run_dir: Path) -> None:
    """Remove what a run folder holds from an earlier run, so a new one starts clean."""
    for name in (CHECKPOINT, "best.weights.h5", "model.keras", "log.csv", "train.json"):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "backup", ignore_errors=True)  # BackupAndRestore's folder, from older trainers


def _finished_info(run_dir: Path, run: _Run) -> dict:
    """train.json of a finished run (the state's summary where it is missing)."""
    record = run_dir / "train.json"
    if record.is_file():
        try:
            return json.loads(record.read_text())
        except ValueError:
            pass
    return {"kind": run.state["kind"], "epochs_run": run.state["epoch"], "finished": True}


def train(
    kind: str,
    data: Path,
    run_dir: Path,
    epochs: int | None = None,
    batch: int | None = None,
    minutes: float = 55.0,
    lr: float | None = None,
    threads: int = 2,
    seed: int | None = None,
    val_fraction: float | None = None,
    verbose: int = 2,
    init: Path | None = None,
    transplant: float | None = None,
    fine: int | None = None,
    max_steps: int | None = None,
    fresh: bool = False,
    callbacks: list[keras.callbacks.Callback] | None = None,
    end_with_time: bool = False,
) -> dict:
    """Train ``kind`` on the set at ``data`` in ``run_dir``, resuming from its checkpoint if it has one.

    ``epochs``: the run's total; a finished run asked for no more returns its record without training,
    one asked for more trains on at the schedule's final learning rate. ``batch``, ``lr``, ``seed``,
    ``val_fraction``, ``init``, ``transplant``: a new run's arguments (None: ``RUN_DEFAULTS``); a resumed
    run keeps its own and refuses different ones. ``minutes`` and ``max_steps`` (optimizer steps) bound
    this session: it then checkpoints and stops, and the next call resumes at that step.
    ``init``: an exported int8 model (a model set directory or a .tflite file) to start from
    (see ``trainer.from_tflite``). ``transplant``: detector only, the share of training crops given a
    plate from another scene. ``fine``: detector only, its stride-4 channels (``trainer.nets.build_detector``;
    None: the ``init`` model's, else ``trainer.nets.DETECTOR_FINE``); fewer than the ``init`` model's
    narrows it to its first channels there (``trainer.from_tflite.load_int8_weights``). ``fresh``: start
    over, deleting the run's checkpoint, best weights, model, log and record. ``callbacks``: more Keras
    callbacks for this session (a progress display), run after the trainer's own. ``end_with_time``: end the
    learning-rate schedule by this session's deadline where the step rate seen says the plan would not fit
    (``_EndWithTime``); for a run planned to fill ``minutes``. Returns what ``train.json`` holds.
    """
    started = time.monotonic()
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"--max-steps {max_steps}: must be at least 1")
    if kind not in ("reader", "detector"):
        raise ValueError(f"unknown kind '{kind}', expected 'detector' or 'reader'")
    if fine is not None and (kind != "detector" or fine < 1):
        raise ValueError(f"--fine-channels {fine}: " + ("at least 1" if kind == "detector"
                                                        else f"the detector's, not the {kind}'s"))
    run_dir.mkdir(parents=True, exist_ok=True)
    run = None if fresh else _Run.load(run_dir)
    if run is None and not fresh:
        _refuse_unresumable(run_dir)
    if run is not None and run.state["kind"] != kind:
        raise ValueError(f"{run.path}: a {run.state['kind']} run, not a {kind} one; another --run, or --fresh")
    d = load_set(data)
    given = {"epochs": epochs, "batch": batch, "lr": lr, "seed": seed, "val_fraction": val_fraction,
             "init": init, "transplant": transplant, "fine": fine}
    args = _run_args(run, given, data, len(d["x"]))
    if run is not None and run.state["epoch"] >= args["epochs"]:
        print(f"{run_dir}: finished, {run.state['epoch']} epochs done ({args['epochs']} asked for); "
              f"--epochs above {run.state['epoch']} trains more, --fresh starts over", file=sys.stderr)
        return _finished_info(run_dir, run)
    if run is None:  # only now that the data and the arguments are known good
        _clear(run_dir)

    _set_threads(threads)
    keras.utils.set_random_seed(args["seed"])
    n_val = max(1, int(len(d["x"]) * args["val_fraction"]))
    x_train, y_train = d["x"][n_val:], d["y"][n_val:]
    val_seq = _Batches(kind, d["x"][:n_val], d["y"][:n_val], args["batch"], args["seed"], train=False)
    steps_per_epoch = math.ceil(len(x_train) / args["batch"])

    if run is None:
        source = None
        if args["init"] is not None:
            source = Path(args["init"])
            source = source / f"{kind}.tflite" if source.is_dir() else source
            if not source.is_file():
                raise FileNotFoundError(f"--init {args['init']}: no {source.name} there")
        if kind == "detector":
            from trainer.from_tflite import int8_detector_fine

            init_fine = None if source is None else int8_detector_fine(source)
            if args["fine"] is not None and init_fine is not None and args["fine"] > init_fine:
                raise ValueError(f"--fine-channels {args['fine']}: more than the {init_fine} of --init {source}; "
                                 "a detector can be narrowed from its file, not widened")
            if args["fine"] is None:
                args["fine"] = DETECTOR_FINE if init_fine is None else init_fine
        model = build_for(kind, args["fine"])
        if source is not None:
            from trainer.from_tflite import load_int8_weights

            load_int8_weights(model, source, narrow=True)
        # The schedule spans the epochs planned at the start; a run extended later trains on at its floor.
        args["decay_steps"] = args["epochs"] * steps_per_epoch
        state = {"format": CHECKPOINT_FORMAT, "kind": kind, "data": str(data), "samples": len(d["x"]),
                 "args": args, "steps_per_epoch": steps_per_epoch, "epochs_planned": args["epochs"],
                 # By index: layer names differ between builds in one process, indices do not.
                 "frozen_layers": [i for i, layer in enumerate(model.layers) if not layer.trainable],
                 "epoch": 0, "step": 0, "global_step": 0, "wall_s": 0.0, "best": None, "sessions": []}
        run = _Run(run_dir, state)
    else:
        state = run.state
        model = build_for(kind, args["fine"])
        for i in state["frozen_layers"]:  # as --init froze them (its file is not needed to resume)
            model.layers[i].trainable = False
        state["epochs_planned"] = args["epochs"]
        if state["sessions"] and state["sessions"][-1].get("ended") is None:
            state["sessions"][-1]["ended"] = "interrupted"  # killed: its time up to its last checkpoint counts
        print(f"resuming {run_dir} at epoch {state['epoch'] + 1} step {state['step']} "
              f"({state['step']} of {steps_per_epoch} steps of that epoch done, global step "
              f"{state['global_step']}, {state['wall_s'] / 60:.1f} min so far)", file=sys.stderr, flush=True)
    # BatchNorm's moving statistics are what the exported model uses: make them settle within the run,
    # also in a short one (the default momentum 0.99 needs a few thousand steps).
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = min(0.99, max(0.5, 1.0 - 10.0 / args["decay_steps"]))
    # A session fitted to its time ends the schedule no later than the last one fitted it to: as for a run
    # given more epochs, what follows trains on at the floor.
    decay_steps = state.get("decay_steps_fitted", args["decay_steps"]) if end_with_time else args["decay_steps"]
    schedule = _Cosine(args["lr"], decay_steps, LR_FLOOR)
    opt = keras.optimizers.Adam(schedule)
    if kind == "reader":
        model.compile(opt, ctc_loss)
        monitor = "val_plate_accuracy"
    else:
        model.compile(opt, detector_loss, metrics=[keras.metrics.MeanMetricWrapper(plate_iou, name="iou")])
        monitor = "val_iou"
    if run.weights is not None:
        run.restore(model)
    state["sessions"].append({"started": _now(), "start_step": state["global_step"], "wall_s": 0.0, "ended": None})

    accuracy = _PlateAccuracy(d["x"][:n_val][:2000], d["y"][:n_val][:2000]) if kind == "reader" else None
    session = _Session(run, monitor, started + minutes * 60, max_steps, started,
                       wall_before=sum(s.get("wall_s", 0.0) for s in state["sessions"][:-1]), verbose=verbose)
    # The accuracy callback runs first, so the session's best weights and log see its figure.
    callbacks = ([accuracy] if accuracy else []) + [session] + list(callbacks or [])
    if end_with_time:  # after the session's callback, which counts the step
        callbacks.insert(callbacks.index(session) + 1,
                         _EndWithTime(schedule, state, session.deadline, decay_steps))
    # shuffle=False: Keras would shuffle the batches from Python's global random state, which a resumed
    # process does not share; ``_Batches`` shuffles the samples of each epoch from the seed instead.
    first = state["epoch"]
    if state["step"]:  # stopped mid-epoch: the rest of that epoch first
        seq = _Batches(kind, x_train, y_train, args["batch"], args["seed"], train=True,
                       transplant=args["transplant"], epoch=first, skip=state["step"])
        session.seq = seq
        model.fit(seq, validation_data=val_seq, initial_epoch=first, epochs=first + 1, callbacks=callbacks,
                  verbose=verbose, shuffle=False)
    if state["epoch"] < args["epochs"] and not model.stop_training:
        seq = _Batches(kind, x_train, y_train, args["batch"], args["seed"], train=True,
                       transplant=args["transplant"], epoch=state["epoch"])
        session.seq = seq
        model.fit(seq, validation_data=val_seq, initial_epoch=state["epoch"], epochs=args["epochs"],
                  callbacks=callbacks, verbose=verbose, shuffle=False)
    finished = state["epoch"] >= args["epochs"]
    # A stop inside an epoch leaves that epoch's data iterator behind; collected at exit, after Python's
    # state is gone, TensorFlow warns about it. Collect it now.
    gc.collect()

    # A run stopped mid-epoch may end after its best checkpoint: keep whichever weights score better.
    final = _score(model, val_seq, accuracy, "last weights")
    best = run_dir / "best.weights.h5"
    if best.is_file():
        last = model.get_weights()
        model.load_weights(best)
        at_best = _score(model, val_seq, accuracy, "best weights")
        # Ties (e.g. no whole plate right yet in a short run) go to the lower loss.
        if (at_best[monitor], -at_best["val_loss"]) > (final[monitor], -final["val_loss"]):
            final = at_best
        else:
            model.set_weights(last)
    _atomic_save(run_dir / "model.keras", model.save)
    # The checkpoint keeps the training state (captured at the last epoch's end or stop), not the pick above.
    session.checkpoint(ended="finished" if finished else session.stopped_by, capture=False)
    sessions = state["sessions"]
    info = {
        "kind": kind,
        "data": str(data),
        "samples": len(d["x"]),
        "epochs_run": state["epoch"],
        "epochs_planned": args["epochs"],
        "finished": finished,
        "stopped_by": "epochs" if finished else session.stopped_by,
        "step_in_epoch": state["step"],
        "steps_per_epoch": steps_per_epoch,
        "global_step": state["global_step"],
        "batch": args["batch"],
        "lr": args["lr"],
        "lr_decay_steps": args["decay_steps"],
        # Where ``end_with_time`` moved the schedule's end to (None: it ends where planned).
        "lr_decay_steps_fitted": state.get("decay_steps_fitted") if end_with_time else None,
        "seed": args["seed"],
        "threads": threads,
        "init": args["init"],
        "transplant": args["transplant"],
        "fine_channels": args["fine"],
        "sessions": sessions,
        "wall_s_this_session": sessions[-1]["wall_s"],
        "wall_s_total": round(sum(s["wall_s"] for s in sessions), 1),
        "val": final,
        "macs_train_input": count_macs(model),
    }
    _atomic_write(run_dir / "train.json", lambda f: f.write(json.dumps(info, indent=2).encode()))
    return info
