"""Load a .tflite model with its metadata sidecar, check both, and run it.

A model is two files side by side: ``NAME.tflite`` and ``NAME.json``. The JSON
holds everything the edge needs to feed the model and read its output (input
size and colour, quantization, alphabet, decoding, the plate formats the
reader was trained with) and the sha256 of the .tflite file. Its one
definition is :class:`ModelMeta`: the exporter writes it, the edge reads it.
The edge hard-codes none of it; a mismatch is a clear error naming the file.

Coral: ``edgetpu_compiler`` turns ``NAME.tflite`` into ``NAME_edgetpu.tflite``
with the same input and output tensors, so that variant shares ``NAME.json``;
its own hash is the ``edgetpu_sha256`` key there (``deploy/edgetpu_hash.py``
records it after compiling). With ``accelerator="edgetpu"`` a model set runs
the variants through ``libedgetpu.so.1``; when the library or a variant is
missing it runs the CPU models after one warning.

A set may also carry ``detector_wide.tflite`` (every exported one does): the
same detector network at a wider input (512x320 where the main one is
512x384), through which the whole-frame look at a 16:9 frame goes, at the
same scale for five sixths of the MACs: the 4:3 input spends 96
of its rows on letterbox below such a frame, the wide one 32 (the context the
frame's bottom edge needs). Its metadata names the main detector file it was
made from (``detector.wide_of``, that file's sha256), so that a set whose two
detectors come from different trainings is an error, not a silent mix.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge.formats import FormatError, FormatPrior, FormatSet

#: Version 2: typed sections, and the reader carries its plate formats.
METADATA_SCHEMA = 2
#: The two models of a set.
ModelKind = Literal["detector", "reader"]
ACCELERATORS = ("cpu", "edgetpu")
EDGETPU_LIBRARY = "libedgetpu.so.1"
#: The model set shipped with the package, used when none is named.
DEFAULT_MODELS = Path(__file__).resolve().parent / "models"

log = logging.getLogger(__name__)


class ModelError(RuntimeError):
    """A model file or its metadata is missing, corrupt or inconsistent."""


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def interpreter_class() -> Any:
    """The TFLite interpreter class: ai-edge-litert, else tflite-runtime."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError as exc:
            raise ModelError(
                "no TFLite runtime found: install ai-edge-litert (pip install ai-edge-litert)"
            ) from exc
    return Interpreter


#: Lines the TFLite runtime prints on its own to stderr (file descriptor 2, from C++) when it loads a model:
#: the XNNPACK notice, once per process. Neither ai-edge-litert nor tflite-runtime offers a setting that
#: silences it (TF_CPP_MIN_LOG_LEVEL does not), and it would land in the middle of every command's output
#: and in the daemon's log.
RUNTIME_NOTICES = (b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",)
_stderr_lock = threading.Lock()


@contextlib.contextmanager
def runtime_notices_dropped() -> Iterator[None]:
    """Run the block with fd 2 diverted to a file; after it, write back all of it but ``RUNTIME_NOTICES``.

    Only the runtime's notices go: anything else written to stderr meanwhile (by any thread) comes out
    after the block, in its order. Where fd 2 cannot be diverted (closed, no temporary file), the block
    just runs.
    """
    with _stderr_lock, contextlib.ExitStack() as stack:
        try:
            diverted = stack.enter_context(tempfile.TemporaryFile())
            _flush_stderr()
            saved = os.dup(2)
        except OSError:
            saved = -1
        if saved < 0:
            yield
            return
        os.dup2(diverted.fileno(), 2)
        try:
            yield
        finally:
            _flush_stderr()
            os.dup2(saved, 2)
            os.close(saved)
            diverted.seek(0)
            kept = b"".join(line for line in diverted.read().splitlines(keepends=True)
                            if line.rstrip(b"\r\n") not in RUNTIME_NOTICES)
            while kept:
                try:
                    kept = kept[os.write(2, kept):]
                except OSError:  # stderr went away meanwhile: nothing left to show it on
                    break


def _flush_stderr() -> None:
    """Flush Python's stderr buffer to fd 2 (before fd 2 changes), if there is one to flush."""
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
    except (OSError, ValueError):  # closed or broken: nothing buffered can reach fd 2 anyway
        pass


def edgetpu_path(tflite_path: Path) -> Path:
    """Where ``edgetpu_compiler`` writes the variant of a model: ``NAME_edgetpu.tflite`` beside it."""
    return tflite_path.with_name(f"{tflite_path.stem}_edgetpu.tflite")


def verify_edgetpu(tflite_path: Path, meta: ModelMeta) -> Path:
    """The Edge TPU variant of ``tflite_path``, checked against ``edgetpu_sha256`` in its metadata."""
    tpu, meta_path = edgetpu_path(tflite_path), tflite_path.with_suffix(".json")
    if not tpu.is_file():
        raise ModelError(f"{tpu}: Edge TPU model not found (compile {tflite_path.name} with edgetpu_compiler)")
    want = meta.edgetpu_sha256
    if not want:
        raise ModelError(f"{meta_path}: no 'edgetpu_sha256' for {tpu.name}; record it with "
                         f"deploy/edgetpu_hash.py {tflite_path.parent}")
    digest = file_sha256(tpu)
    if digest != want:
        raise ModelError(f"{tpu}: sha256 {digest[:12]}… does not match 'edgetpu_sha256' in {meta_path} "
                         f"({str(want)[:12]}…); the file is corrupt or was recompiled without recording it")
    return tpu


def load_edgetpu_delegate() -> tuple[Any | None, str]:
    """``(delegate, "")`` for the Edge TPU, or ``(None, why not)``; never raises."""
    try:
        from ai_edge_litert.interpreter import load_delegate
    except ImportError:
        try:
            from tflite_runtime.interpreter import load_delegate
        except ImportError:
            return None, "no TFLite runtime with load_delegate is installed"
    try:
        # Probe the library first: the runtime's Delegate, failing to load it, leaves an object whose
        # finalizer prints a traceback (AttributeError '_library') at exit.
        ctypes.CDLL(EDGETPU_LIBRARY)
    except OSError as exc:
        return None, f"{EDGETPU_LIBRARY} cannot be loaded ({exc})"
    try:
        return load_delegate(EDGETPU_LIBRARY), ""
    except (ValueError, OSError, RuntimeError) as exc:  # no Edge TPU plugged in, or a mismatched library
        return None, f"{EDGETPU_LIBRARY} cannot be loaded ({str(exc).strip() or type(exc).__name__})"


@dataclass(frozen=True)
class TensorSpec:
    """Shape, dtype and affine quantization of one model input or output."""

    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int

    @classmethod
    def from_detail(cls, d: dict[str, Any]) -> TensorSpec:
        scale, zp = d.get("quantization", (0.0, 0))
        return cls(tuple(int(v) for v in d["shape"]), np.dtype(d["dtype"]).name, float(scale), int(zp))


class _Meta(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TensorMeta(_Meta):
    """Shape, dtype and quantization of the model's input or output, as exported."""

    shape: list[int]
    dtype: Literal["int8", "uint8", "float32"]
    scale: float = 0.0
    zero_point: int = 0
    color: Literal["rgb", "gray"] | None = Field(None, description="input only: the pixels' colour")
    value: str | None = Field(None, description="input only: how pixels map to model inputs")


class DetectorMeta(_Meta):
    """How the detector's output becomes boxes."""

    stride: int = Field(gt=0, description="input pixels per output cell")
    threshold: float = Field(0.5, gt=0, lt=1, description="plate probability of a plate cell")
    min_cells: int = Field(3, ge=1, description="cells a plate needs")
    output: str = ""
    letterbox: str = ""
    wide_of: str | None = Field(None, description="a wide detector only: the sha256 of the main detector.tflite "
                                                   "whose network it is, at a wider input")


class FormatsMeta(_Meta):
    """The plate formats a reader was trained with: the format part of its country files and their sha256."""

    sha256: str
    countries: list[dict[str, Any]] = Field(min_length=1)
    prior: FormatPrior | None = Field(None, description="how often each format occurs where the camera is, learnt "
                                      "from the user's labelled plates by trainer finetune (none: all alike)")


class ReaderMeta(_Meta):
    """How the reader's columns become text, and the formats that decode it."""

    classes: str = Field(min_length=2)
    blank: str = Field(min_length=1, max_length=1)
    decoding: Literal["ctc-greedy", "ctc-format"]
    max_chars: int = Field(gt=0)
    crop_margin: tuple[float, float]
    columns: str = ""
    formats: FormatsMeta

    @model_validator(mode="after")
    def _blank_in_classes(self) -> ReaderMeta:
        if self.blank not in self.classes:
            raise ValueError(f"blank {self.blank!r} is not one of the classes")
        return self


class ModelMeta(_Meta):
    """The metadata sidecar of one model (``NAME.json``): written by ``trainer.export``, read here."""

    schema_version: int = Field(alias="schema")
    kind: ModelKind
    version: str
    file: str
    sha256: str
    size_bytes: int = Field(ge=0)
    macs: int = Field(ge=0)
    note: str = Field("", description="free text, e.g. what distinguishes this build")
    edgetpu_compile: str = ""
    edgetpu_sha256: str | None = None
    input: TensorMeta
    output: TensorMeta
    detector: DetectorMeta | None = None
    reader: ReaderMeta | None = None

    @model_validator(mode="after")
    def _section_of_kind(self) -> ModelMeta:
        if getattr(self, self.kind) is None:
            raise ValueError(f"a {self.kind} needs its '{self.kind}' section")
        return self

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2, exclude_none=True)


def read_metadata(tflite_path: Path) -> ModelMeta:
    """Read and validate the JSON sidecar of ``tflite_path`` (without loading the model)."""
    meta_path = tflite_path.with_suffix(".json")
    if not tflite_path.is_file():
        raise ModelError(f"{tflite_path}: model file not found")
    if not meta_path.is_file():
        raise ModelError(f"{meta_path}: metadata file not found (every .tflite needs its .json beside it)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{meta_path}: metadata is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise ModelError(f"{meta_path}: metadata must be a JSON object")
    if meta.get("schema") != METADATA_SCHEMA:
        raise ModelError(f"{meta_path}: metadata schema {meta.get('schema')} is not the supported {METADATA_SCHEMA} "
                         "(export the model again with this version's trainer)")
    try:
        parsed = ModelMeta.model_validate(meta)
    except ValidationError as exc:
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise ModelError(f"{meta_path}: invalid metadata: {where}") from None
    digest = file_sha256(tflite_path)
    if digest != parsed.sha256:
        raise ModelError(
            f"{tflite_path}: sha256 {digest[:12]}… does not match its metadata ({parsed.sha256[:12]}…); "
            "the file is corrupt or was replaced without its .json"
        )
    return parsed


def reader_formats(meta: ModelMeta, source: Path) -> FormatSet:
    """The plate formats a reader's metadata carries, compiled; errors name the file."""
    if meta.reader is None:
        raise ModelError(f"{source}: not a reader")
    try:
        return FormatSet.from_meta(meta.reader.formats.model_dump(), str(source))
    except FormatError as exc:
        raise ModelError(str(exc)) from None


class Model:
    """One TFLite model with its metadata; ``run`` takes and returns float arrays.

    With an Edge TPU ``delegate``, the verified ``NAME_edgetpu.tflite`` variant
    runs instead of ``NAME.tflite`` (``run_path``), checked against the same metadata.
    """

    def __init__(self, tflite_path: str | Path, kind: str, num_threads: int = 2,
                 delegate: Any | None = None) -> None:
        self.path = Path(tflite_path)
        self.meta = read_metadata(self.path)
        if self.meta.kind != kind:
            raise ModelError(f"{self.path}: metadata says kind '{self.meta.kind}', expected '{kind}'")
        self.run_path = verify_edgetpu(self.path, self.meta) if delegate is not None else self.path
        self.accelerator = "edgetpu" if delegate is not None else "cpu"
        try:
            with runtime_notices_dropped():  # the runtime announces XNNPACK from allocate_tensors
                self._interp = interpreter_class()(model_path=str(self.run_path), num_threads=num_threads,
                                                   experimental_delegates=[delegate] if delegate is not None
                                                   else None)
                self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{self.run_path}: the TFLite runtime cannot load it: {exc}") from exc
        inputs, outputs = self._interp.get_input_details(), self._interp.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"{self.run_path}: expected one input and one output, found {len(inputs)} and "
                             f"{len(outputs)}")
        self._in_index, self._out_index = inputs[0]["index"], outputs[0]["index"]
        self.input = TensorSpec.from_detail(inputs[0])
        self.output = TensorSpec.from_detail(outputs[0])
        self._check("input", self.input)
        self._check("output", self.output)
        # Pixels in [0, 255] map to model inputs x = p / 255; with scale 1/255 and
        # zero point -128 the int8 input is p - 128, i.e. a byte XOR without any math.
        self._xor_fast = (
            self.input.dtype == "int8"
            and self.input.zero_point == -128
            and abs(self.input.scale * 255.0 - 1.0) < 1e-6
        )

    def _check(self, which: str, actual: TensorSpec) -> None:
        want: TensorMeta = getattr(self.meta, which)
        problems = []
        if list(actual.shape) != want.shape:
            problems.append(f"shape {list(actual.shape)} != {want.shape}")
        if actual.dtype != want.dtype:
            problems.append(f"dtype {actual.dtype} != {want.dtype}")
        if actual.dtype in ("int8", "uint8"):
            if not np.isclose(actual.scale, want.scale, rtol=1e-6, atol=0.0):
                problems.append(f"scale {actual.scale} != {want.scale}")
            if actual.zero_point != want.zero_point:
                problems.append(f"zero point {actual.zero_point} != {want.zero_point}")
        if problems:
            raise ModelError(f"{self.run_path}: {which} does not match its metadata: " + "; ".join(problems))

    @property
    def precision(self) -> str:
        return self.input.dtype if self.input.dtype in ("int8", "uint8") else "float32"

    def run_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Run on uint8 pixels shaped like the input (without batch); return float output."""
        if pixels.dtype != np.uint8:
            raise TypeError("run_pixels takes uint8 pixels")
        pixels = pixels.reshape(self.input.shape)
        if self._xor_fast:
            x = (pixels ^ np.uint8(0x80)).view(np.int8)
        else:
            x = self.quantize(pixels.astype(np.float32) / 255.0)
        return self._invoke(x)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Float model input -> the input tensor's dtype."""
        if self.input.dtype == "float32":
            return x.astype(np.float32).reshape(self.input.shape)
        info = np.iinfo(self.input.dtype)
        q = np.round(x / self.input.scale + self.input.zero_point)
        return np.clip(q, info.min, info.max).astype(self.input.dtype).reshape(self.input.shape)

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        self._interp.set_tensor(self._in_index, x)
        self._interp.invoke()
        y = self._interp.get_tensor(self._out_index)[0]
        if self.output.dtype == "float32":
            return y.astype(np.float32)
        return (y.astype(np.float32) - self.output.zero_point) * self.output.scale


#: The optional wide detector of a model set, beside ``detector.tflite`` (see the module docstring).
WIDE_DETECTOR = "detector_wide.tflite"


@dataclass(frozen=True)
class ModelSet:
    """The loaded models of a set: the detector, the reader, and the wide detector where the set has one."""

    detector: Model
    reader: Model
    wide: Model | None = None


def model_paths(models_dir: str | Path) -> tuple[Path, Path]:
    """The detector and reader .tflite paths of a model set directory."""
    d = Path(models_dir)
    if not d.is_dir():
        raise ModelError(f"{d}: model directory not found")
    return d / "detector.tflite", d / "reader.tflite"


def wide_detector_path(models_dir: str | Path) -> Path | None:
    """The set's wide detector (``WIDE_DETECTOR``), or None when it has none."""
    path = Path(models_dir) / WIDE_DETECTOR
    return path if path.is_file() else None


def load_model_set(models_dir: str | Path, num_threads: int = 2, accelerator: str = "cpu") -> ModelSet:
    """Detector, reader and (where the set has one) wide detector of a model set on ``accelerator`` (``cpu`` or
    ``edgetpu``).

    ``edgetpu`` without ``libedgetpu.so.1`` or without the compiled variants
    falls back to the CPU models with one warning that says why; a variant that
    is present but fails its hash check is an error, as for any model file. A
    wide detector made from another detector file than the set's is an error.
    """
    if accelerator not in ACCELERATORS:
        raise ModelError(f"accelerator '{accelerator}' is not one of {', '.join(ACCELERATORS)}")
    det_path, rd_path = model_paths(models_dir)
    wide_path = wide_detector_path(models_dir)
    paths = [det_path, rd_path] + ([wide_path] if wide_path else [])
    delegates: list[Any | None] = [None] * len(paths)
    if accelerator == "edgetpu":
        missing = [str(edgetpu_path(p)) for p in paths if not edgetpu_path(p).is_file()]
        reason = f"{' and '.join(missing)} not found" if missing else ""
        if not reason:
            # One delegate per interpreter, as pycoral does: the Edge TPU context is not shared between them.
            for i in range(len(paths)):
                delegates[i], reason = load_edgetpu_delegate()
                if reason:
                    delegates = [None] * len(paths)
                    break
        if reason:
            log.warning("Edge TPU asked for (accelerator: edgetpu) but %s: running the CPU models in %s instead",
                        reason, Path(models_dir))
    detector = Model(det_path, "detector", num_threads, delegates[0])
    wide = None
    if wide_path is not None:
        wide = Model(wide_path, "detector", num_threads, delegates[2])
        made_from = wide.meta.detector.wide_of if wide.meta.detector else None
        if made_from != detector.meta.sha256:
            raise ModelError(f"{wide_path}: made from another detector ({str(made_from)[:12]}…) than "
                             f"{det_path} ({detector.meta.sha256[:12]}…); export the set's detectors together "
                             f"(python -m trainer widen {Path(models_dir)}) or remove {WIDE_DETECTOR}")
    return ModelSet(detector, Model(rd_path, "reader", num_threads, delegates[1]), wide)
