"""Train -> quantize -> edge, end to end on tiny data, through the same commands a user runs.

Tiny models trained for a minute read badly; what is asserted is what breaks
when the chain breaks: the exported float model run by the edge must equal
Keras (pre-processing and I/O), int8 must follow float, the reader must have
learned from its labels (encoding and decoding agree), and `edge read` must
keep its JSON contract on the result.
"""
from __future__ import annotations

import collections
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import ROOT, run_edge

pytest.importorskip("tensorflow", reason="the training end to end needs the trainer's TensorFlow")
pytestmark = pytest.mark.slow

#: Keras's line at the start of each epoch (``--verbose 2``).
EPOCH = re.compile(r"Epoch (\d+)/(\d+)$")


def _trainer(progress: Callable[[str], None], *args: str, timeout: float = 900) -> None:
    """``python -m trainer ARGS`` as a user runs it; each step and each epoch is shown on the terminal as it starts.

    The whole chain takes minutes: without these lines ``make test`` would show nothing new meanwhile.
    """
    step = " ".join(a for a in args[:4] if not a.startswith("--") or a == "--kind")
    progress(f"end to end: trainer {step}")
    start = time.monotonic()
    with tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "trainer", *args], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=stderr, text=True)
        killer = threading.Timer(timeout, proc.kill)  # a hung step fails the test instead of the whole run
        killer.start()
        tail: collections.deque[str] = collections.deque(maxlen=40)
        try:
            for line in proc.stdout:
                tail.append(line)
                if m := EPOCH.match(line.strip()):
                    progress(f"end to end: trainer {step}: epoch {m[1]} of {m[2]} ({time.monotonic() - start:.0f} s)")
            proc.wait()
        finally:
            killer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stderr.seek(0)
        errors = stderr.read()
    assert proc.returncode == 0, (f"trainer {' '.join(args)} failed (exit {proc.returncode}; killed after "
                                  f"{timeout:.0f} s if negative):\n{''.join(tail)[-2000:]}\n{errors[-3000:]}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, progress: Callable[[str], None]) -> Path:
    work = tmp_path_factory.mktemp("e2e")
    # A pool of 4 texts: enough for a tiny CTC reader to learn in a minute what it reads.
    _trainer(progress, "synth", "data", "--kind", "reader", "--n", "800", "--seed", "1", "--texts", "4",
             "--out", str(work / "reader.npz"))
    _trainer(progress, "synth", "data", "--kind", "detector", "--n", "96", "--seed", "2",
             "--out", str(work / "detector.npz"))
    _trainer(progress, "train", "--kind", "reader", "--data", str(work / "reader.npz"), "--run",
             str(work / "run_reader"), "--epochs", "15", "--batch", "32", "--lr", "3e-3", "--verbose", "2")
    _trainer(progress, "train", "--kind", "detector", "--data", str(work / "detector.npz"), "--run",
             str(work / "run_detector"), "--epochs", "2", "--batch", "8", "--verbose", "2")
    for kind in ("reader", "detector"):
        _trainer(progress, "export", "--kind", kind, "--run", str(work / f"run_{kind}"), "--data",
                 str(work / f"{kind}.npz"), "--out", str(work / "export"))
    return work


def test_training_log_and_resume_state(trained: Path) -> None:
    info = json.loads((trained / "run_reader" / "train.json").read_text())
    assert info["epochs_run"] == 15 and info["samples"] == 800
    assert (trained / "run_reader" / "log.csv").read_text().count("\n") == 16  # header + one line per epoch


def test_exported_float_equals_keras_and_int8_follows(trained: Path) -> None:
    for kind in ("reader", "detector"):
        report = json.loads((trained / "export" / f"{kind}_export.json").read_text())
        assert report["float"]["agreement"]["match"] == 1.0, (kind, report["float"])
        # A tiny reader's decoded text is fragile under int8 (half its characters are unsure); the real
        # models' agreement is in the model card.
        assert report["int8"]["agreement"]["match"] >= (0.25 if kind == "reader" else 0.8), (kind, report["int8"])
        assert set(report["int8"]["ops"]) <= {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "RESIZE_NEAREST_NEIGHBOR",
                                               "LOGISTIC", "CONCATENATION", "RESHAPE", "SOFTMAX", "RELU"}
        meta = json.loads((trained / "export" / "int8" / f"{kind}.json").read_text())
        assert meta["input"]["dtype"] == "int8" and meta["output"]["dtype"] == "int8"


def test_reader_learned_and_int8_reads_like_float(trained: Path) -> None:
    from edge.pipeline import Pipeline
    from edge.plates import BLANK, READER_CLASSES
    from trainer.data import load_set
    from trainer.evaluate import _char_accuracy

    data = load_set(trained / "reader.npz")
    crops, labels = data["x"][:300], data["y"][:300]
    truth = ["".join(READER_CLASSES[k] for k in row).rstrip(BLANK) for row in labels]
    reads = {}
    for precision in ("float", "int8"):
        reader = Pipeline.from_dir(trained / "export" / precision).reader
        reads[precision] = [reader.read_crop(c).text for c in crops]
    # The tiny reader learned these 4 plate texts: reading them back proves that labels, CTC training
    # and the edge's decoding agree. A reader whose labels and decoding disagree stays near 0.
    chars = float(np.mean([_char_accuracy(t, r) for t, r in zip(truth, reads["float"], strict=True)]))
    print(f"float char accuracy {chars:.3f}")
    assert chars > 0.2, f"float reader char accuracy {chars:.3f} on its own training plates"
    same = float(np.mean([a == b for a, b in zip(reads["float"], reads["int8"], strict=True)]))
    print(f"int8 = float on {same:.3f}")
    assert same >= 0.25, f"int8 and float read the same text on only {same:.0%} of the plates"
    chars8 = float(np.mean([_char_accuracy(t, r) for t, r in zip(truth, reads["int8"], strict=True)]))
    print(f"int8 char accuracy {chars8:.3f}")
    assert abs(chars8 - chars) < 0.2, (chars8, chars)


def test_edge_read_on_trained_int8_models(trained: Path, tmp_path: Path) -> None:
    from trainer.synth import make_scene

    paths = []
    for i in range(3):
        scene = make_scene(np.random.default_rng((5, i)), 640, 480)
        paths.append(tmp_path / f"scene{i}.jpg")
        cv2.imwrite(str(paths[-1]), scene.image)
    proc = run_edge("read", "--json", "--models", str(trained / "export" / "int8"), *map(str, paths))
    assert proc.returncode == 0, proc.stderr
    objs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["image"] for o in objs] == list(map(str, paths))
    for o in objs:
        assert "error" not in o
        for p in o["plates"]:
            assert 0 <= p["confidence"] <= 1 and len(p["box"]) == 4


def test_keras_networks_start_from_exported_int8_models(trained: Path) -> None:
    """`train --init`: the dequantized int8 weights in the Keras network compute what the int8 model computes."""
    import keras

    from trainer.data import load_set
    from trainer.from_tflite import check, load_int8_weights
    from trainer.nets import build_detector, build_reader

    int8 = trained / "export" / "int8"
    reader = build_reader()
    assert load_int8_weights(reader, int8 / "reader.tflite") == 20
    crops = load_set(trained / "reader.npz")["x"][:64]
    agree = check(reader, int8 / "reader.tflite", "reader", crops)
    assert agree["argmax_agree"] > 0.97 and agree["mean_abs_diff"] < 0.01, agree
    assert all(not layer.trainable for layer in reader.layers if isinstance(layer, keras.layers.BatchNormalization))
    frames = load_set(trained / "detector.npz")["x"][:8]
    detector = build_detector(*frames.shape[1:3])
    load_int8_weights(detector, int8 / "detector.tflite")
    # As close to the int8 model as the trained Keras network was at export (int8 rounding is the difference).
    exported = json.loads((trained / "export" / "detector_export.json").read_text())["int8"]["agreement"]
    got = check(detector, int8 / "detector.tflite", "detector", frames)["mean_abs_diff"]
    assert got < 2 * exported["mean_abs_diff"] + 0.005, (got, exported)
    # Another architecture is refused, naming the file.
    with pytest.raises(ValueError, match=r"reader\.tflite"):
        load_int8_weights(build_detector(*frames.shape[1:3]), int8 / "reader.tflite")


def test_a_detector_narrows_from_its_int8_file_keeping_the_first_channels(trained: Path) -> None:
    """`train --init --fine-channels N`: every convolution takes its wider partner's first channels."""
    import keras

    from trainer.from_tflite import int8_detector_fine, load_int8_weights
    from trainer.nets import DETECTOR_FINE, build_detector, detector_fine

    int8 = trained / "export" / "int8" / "detector.tflite"
    assert int8_detector_fine(int8) == DETECTOR_FINE
    wide = build_detector(64, 64)
    load_int8_weights(wide, int8)
    narrow = build_detector(64, 64, fine=DETECTOR_FINE // 2)
    with pytest.raises(ValueError, match=r"detector\.tflite: no convolution fits"):
        load_int8_weights(narrow, int8)  # not asked to narrow
    assert load_int8_weights(narrow, int8, narrow=True) == 34 and detector_fine(narrow) == DETECTOR_FINE // 2

    def convs(model: keras.Model) -> list[keras.layers.Layer]:
        kinds = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
        return [layer for layer in model.layers if isinstance(layer, kinds)]

    narrowed = 0
    for w, n in zip(convs(wide), convs(narrow), strict=True):
        kw, kn = w.get_weights()[0], n.get_weights()[0]
        np.testing.assert_array_equal(kn, kw[:, :, : kn.shape[2], : kn.shape[3]])
        narrowed += kn.shape != kw.shape
    assert narrowed == 10, narrowed  # the stride-4 layers and the plate mask's input
