"""Export a trained network to float and full-integer int8 TFLite, with metadata.

Each export is checked before it is written out as done: every op must be in
the Edge TPU's mapped set, and the exported model, run through the edge's own
``Model`` class, must agree with Keras on held-out samples. ``widen``
adds a detector's wide form (``detector_wide.tflite``, see ``edge.model``) to
a set: the same flatbuffer with its sizes scaled, so the same weights and the
same int8 quantization.
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Literal

import keras
import numpy as np
import tensorflow as tf

from edge.detect import letterbox
from edge.formats import COUNTRIES_DIR, FormatSet
from edge.model import (
    METADATA_SCHEMA,
    WIDE_DETECTOR,
    DetectorMeta,
    FormatsMeta,
    Model,
    ModelKind,
    ModelMeta,
    ReaderMeta,
    TensorMeta,
    file_sha256,
    interpreter_class,
    read_metadata,
)
from edge.plates import BLANK, MAX_CHARS, READER_CLASSES
from edge.recognize import decode_ctc
from trainer.data import DETECTOR_INPUT, DETECTOR_STRIDE, READER_MARGIN, load_set, wide_input
from trainer.nets import build_detector, build_reader, count_macs, detector_fine

#: TFLite builtin ops that the Edge TPU compiler maps (its documented op table, the subset we use).
EDGE_TPU_OPS = {
    "CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "CONCATENATION", "RESHAPE", "RESIZE_NEAREST_NEIGHBOR",
    "RESIZE_BILINEAR", "RELU", "RELU6", "LOGISTIC", "SOFTMAX", "MAX_POOL_2D", "AVERAGE_POOL_2D",
    "FULLY_CONNECTED", "MUL", "MEAN", "PAD", "QUANTIZE", "DEQUANTIZE",
}
#: Builtin op codes of the resizes whose output size ``reshaped_detector`` scales.
BUILTIN_RESIZE_BILINEAR, BUILTIN_RESIZE_NEAREST = 23, 97
EDGETPU_COMPILE = "edgetpu_compiler --show_operations --out_dir {dir} {file}"


def exportable(kind: str, trained: keras.Model) -> keras.Model:
    """The model at its deployment input size, batch 1, with the trained weights."""
    if kind == "detector":
        model = build_detector(*DETECTOR_INPUT, batch=1, fine=detector_fine(trained))
    else:
        h, w = trained.input.shape[1:3]
        model = build_reader(h, w, batch=1)
    model.set_weights(trained.get_weights())
    return model


def _representative(x: np.ndarray, n: int):
    def gen():
        for i in range(min(n, len(x))):
            s = x[i : i + 1].astype(np.float32) / 255.0
            if s.ndim == 3:
                s = s[..., None]
            # Pin the calibrated input range to exactly [0, 1], so the int8 input is pixel - 128.
            s.reshape(-1)[0], s.reshape(-1)[1] = 0.0, 1.0
            yield [s]

    return gen


def convert(model: keras.Model, rep_x: np.ndarray | None, n_rep: int = 200) -> bytes:
    """TFLite flatbuffer: float32 when ``rep_x`` is None, else full-integer int8 with int8 I/O."""
    if model.input.shape[0] != 1:
        raise ValueError("export needs the batch-1 model (see exportable())")
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if rep_x is not None:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = _representative(rep_x, n_rep)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    return conv.convert()


def op_names(tflite_bytes: bytes) -> list[str]:
    """Builtin op names in a flatbuffer, in graph order."""
    interp = interpreter_class()(model_content=tflite_bytes)
    return [op["op_name"] for op in interp._get_ops_details()]


def _write(kind: ModelKind, tflite: bytes, out: Path, macs: int, formats: FormatSet | None,
           wide_of: str | None = None, version: str | None = None, note: str = "") -> Model:
    """Write ``out/<kind>.tflite`` (``detector_wide.tflite`` with ``wide_of``, the sha256 of the detector whose
    network it is) and its metadata (``version``: default now); return it loaded through the edge."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / (WIDE_DETECTOR if wide_of else f"{kind}.tflite")
    path.write_bytes(tflite)
    interp = interpreter_class()(model_content=tflite)
    inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]

    def spec(d: dict, color: Literal["rgb", "gray"] | None = None, value: str | None = None) -> TensorMeta:
        scale, zp = d["quantization"]
        return TensorMeta(shape=[int(v) for v in d["shape"]], dtype=np.dtype(d["dtype"]).name, scale=float(scale),
                          zero_point=int(zp), color=color, value=value)

    meta = ModelMeta(
        schema_version=METADATA_SCHEMA, kind=kind, note=note,
        version=version or dt.datetime.now(dt.UTC).strftime("%Y.%m.%d.%H%M"),
        file=path.name, sha256=file_sha256(path), size_bytes=path.stat().st_size, macs=macs,
        # The compiler is x86-64 only; a Coral user runs this on a workstation, next to the file.
        edgetpu_compile=EDGETPU_COMPILE.format(dir=".", file=path.name),
        input=spec(inp, color="rgb" if inp["shape"][-1] == 3 else "gray", value="pixel / 255"), output=spec(outp),
        **_kind_section(kind, formats, wide_of))
    path.with_suffix(".json").write_text(meta.to_json())
    return Model(path, kind, num_threads=2)


def _kind_section(kind: str, formats: FormatSet | None, wide_of: str | None = None) -> dict:
    if kind == "detector":
        return {"detector": DetectorMeta(stride=DETECTOR_STRIDE, threshold=0.5, min_cells=3,
                                         output="plate probability per cell", letterbox="top-left, black padding",
                                         wide_of=wide_of)}
    if formats is None:
        raise ValueError("a reader export needs the plate formats it was trained with")
    return {"reader": ReaderMeta(classes=READER_CLASSES, blank=BLANK, decoding="ctc-format", max_chars=MAX_CHARS,
                                 crop_margin=READER_MARGIN, formats=FormatsMeta(**formats.to_meta()),
                                 columns="top-row columns left to right, then bottom-row columns")}


def training_formats(data: Path, countries: list[Path] | None = None) -> FormatSet:
    """The formats a set was drawn from: its sidecar records them; else the country folders (default: shipped)."""
    info = Path(str(data) + ".json")
    if not countries and info.is_file():
        recorded = json.loads(info.read_text()).get("formats")
        if recorded:
            return FormatSet.from_meta(recorded, str(info))
    return FormatSet.load(*(countries or [COUNTRIES_DIR]))


def export(kind: ModelKind, run_dir: Path, data: Path, out_dir: Path, n_rep: int = 1000, n_check: int = 500,
           countries: list[Path] | None = None) -> dict:
    """Export ``run_dir/model.keras`` to ``out_dir/float`` and ``out_dir/int8``; return a check report.

    A reader carries the formats of the country files its data was drawn from (``training_formats``).
    """
    trained = keras.models.load_model(run_dir / "model.keras", compile=False)
    d = load_set(data)
    rng = np.random.default_rng(0)
    rep = d["x"][rng.permutation(len(d["x"]))[:n_rep]]
    check = d["x"][: min(n_check, len(d["x"]))]  # the head of the set is the training validation split
    formats = training_formats(data, countries) if kind == "reader" else None
    return export_model(kind, exportable(kind, trained), rep, check, out_dir, formats)


def reshaped_detector(tflite: bytes, height: int, width: int) -> bytes:
    """The detector flatbuffer ``tflite`` laid out for a ``height`` x ``width`` input: every activation's and
    resize's size scaled, weights and quantization untouched, so that it computes what the original does on
    the same pixels (the network is fully convolutional) and needs no calibration of its own."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite))
    graph = model.subgraphs[0]
    _, old_h, old_w, _ = graph.tensors[graph.inputs[0]].shape

    def scaled(v: int, new: int, old: int) -> int:
        if v * new % old:
            raise ValueError(f"a {v}-cell side does not scale from {old} to {new} input pixels")
        return v * new // old

    for t in graph.tensors:
        data = model.buffers[t.buffer].data
        if t.shape is not None and len(t.shape) == 4 and (data is None or len(data) == 0):  # activations, not weights
            t.shape[1], t.shape[2] = scaled(t.shape[1], height, old_h), scaled(t.shape[2], width, old_w)
            if t.shapeSignature is not None and len(t.shapeSignature) == 4:
                t.shapeSignature[1:3] = t.shape[1:3]
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        if max(code.builtinCode, code.deprecatedBuiltinCode) in (BUILTIN_RESIZE_NEAREST, BUILTIN_RESIZE_BILINEAR):
            size = model.buffers[graph.tensors[op.inputs[1]].buffer]
            h, w = np.frombuffer(bytes(size.data), np.int32)
            size.data = np.array([scaled(int(h), height, old_h), scaled(int(w), width, old_w)], np.int32).tobytes()
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def widen(models_dir: Path, check_x: np.ndarray) -> dict:
    """Add the wide detector to the model set ``models_dir`` (``export_model`` does, for every detector it
    writes; by hand, a set exported before there was one): ``detector_wide.tflite`` and its .json beside
    ``detector.tflite``, which stays as it is; its network at the wide input (``trainer.data.wide_input``,
    ``reshaped_detector``), naming its sha256.

    Checked as the edge uses it: the top 16:9 of each ``check_x`` scene, letterboxed into either input, must
    give the same plate mask above the frame's bottom edge, where the two inputs' padding differs. Returns its
    MACs, size and that agreement."""
    detector = models_dir / "detector.tflite"
    main = read_metadata(detector)
    _, old_h, old_w, _ = main.input.shape
    size = wide_input(old_h, old_w)
    if size is None:
        raise ValueError(f"{detector}: its {old_w}x{old_h} input is already as wide as a wide detector's")
    height, width = size
    flat = reshaped_detector(detector.read_bytes(), height, width)
    macs = main.macs * height * width // (old_h * old_w)  # every op's work scales with its area
    wide = _write("detector", flat, models_dir, macs, None, wide_of=main.sha256, version=main.version,
                  note=main.note)
    full = Model(detector, "detector", num_threads=2)
    frame_rows = width * 9 // 16
    stride = main.detector.stride if main.detector else 4
    rows = frame_rows // stride - 2  # mask rows clear of the frame's bottom edge
    same: list[float] = []
    for xi in check_x:
        frame = np.ascontiguousarray(xi[:frame_rows, :width, ::-1])  # as BGR: letterbox makes it RGB again
        a = full.run_pixels(letterbox(frame, old_w, old_h)[0])[:rows] >= 0.5
        b = wide.run_pixels(letterbox(frame, width, height)[0])[:rows] >= 0.5
        same.append(float((a == b).mean()))
    return {"file": wide.path.name, "macs": macs, "size_bytes": len(flat),
            "agreement": {"samples": len(check_x), "match_above_bottom_edge": float(np.mean(same))}}


def export_model(kind: ModelKind, model: keras.Model, rep_x: np.ndarray, check_x: np.ndarray, out_dir: Path,
                 formats: FormatSet | None = None) -> dict:
    """Convert ``model`` to float and int8 TFLite under ``out_dir``, check ops and agreement.

    ``formats``: a reader's plate formats (default: the shipped country files)."""
    if kind == "reader" and formats is None:
        formats = FormatSet.load(COUNTRIES_DIR)
    macs = count_macs(model)
    report: dict = {"kind": kind, "macs": macs}
    for precision, rep in (("float", None), ("int8", rep_x)):
        flat = convert(model, rep, len(rep_x))
        ops = op_names(flat)
        bad = sorted(set(ops) - EDGE_TPU_OPS)
        if precision == "int8" and bad:
            raise RuntimeError(f"{kind} int8 export has ops the Edge TPU does not map: {bad}")
        edge_model = _write(kind, flat, out_dir / precision, macs, formats)
        report[precision] = {"ops": sorted(set(ops)), "size_bytes": len(flat),
                             "agreement": _agreement(kind, model, edge_model, check_x)}
        if kind == "detector" and wide_input(*model.input_shape[1:3]) is not None:
            # Every detector comes with its wide form, through which a 16:9 frame's whole-frame look goes.
            report[precision]["wide"] = widen(out_dir / precision, check_x)
    return report


def _agreement(kind: str, keras_model: keras.Model, edge_model: Model, x: np.ndarray) -> dict:
    """How closely the exported model, run through the edge, follows Keras."""
    same: float = 0
    diffs: list[float] = []
    for xi in x:
        px = xi if xi.ndim == 3 else xi[..., None]
        ref = keras_model(px[None].astype(np.float32) / 255.0, training=False).numpy()[0]
        got = edge_model.run_pixels(px)
        if kind == "reader":
            same += decode_ctc(ref, READER_CLASSES, BLANK).text == decode_ctc(got, READER_CLASSES, BLANK).text
        else:
            diffs.append(float(np.abs(ref - got).mean()))
            same += float(((ref >= 0.5) == (got >= 0.5)).mean())
    out = {"samples": len(x), "match": same / len(x)}
    if diffs:
        out["mean_abs_diff"] = float(np.mean(diffs))
    return out


def install(out_dir: Path, models_dir: Path) -> None:
    """Copy an exported int8 model set (tflite + json) into the edge's model directory."""
    models_dir.mkdir(parents=True, exist_ok=True)
    for f in sorted((out_dir / "int8").glob("*")):
        shutil.copy2(f, models_dir / f.name)
