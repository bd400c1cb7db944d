"""Model loading: metadata and hash checks name the file at fault; quantized input is exact."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.model import Model, ModelError


@pytest.fixture()
def model_copy(untrained_models: Path, tmp_path: Path) -> Path:
    for f in untrained_models.iterdir():
        shutil.copy2(f, tmp_path / f.name)
    return tmp_path


def test_loads_and_reports_int8(untrained_models: Path) -> None:
    m = Model(untrained_models / "reader.tflite", "reader")
    assert m.precision == "int8"
    assert m.input.shape == (1, 64, 192, 1)


def test_missing_metadata_names_the_file(model_copy: Path) -> None:
    (model_copy / "reader.json").unlink()
    with pytest.raises(ModelError, match=r"reader\.json: metadata file not found"):
        Model(model_copy / "reader.tflite", "reader")


def test_hash_mismatch_names_the_file(model_copy: Path) -> None:
    path = model_copy / "reader.tflite"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"reader\.tflite: sha256 .* does not match"):
        Model(path, "reader")


def test_wrong_kind_is_refused(untrained_models: Path) -> None:
    with pytest.raises(ModelError, match="kind 'reader', expected 'detector'"):
        Model(untrained_models / "reader.tflite", "detector")


def test_metadata_shape_disagreeing_with_model_is_refused(model_copy: Path) -> None:
    meta_path = model_copy / "reader.json"
    meta = json.loads(meta_path.read_text())
    meta["input"]["shape"] = [1, 32, 128, 1]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"reader\.tflite: input does not match its metadata: shape"):
        Model(model_copy / "reader.tflite", "reader")


def test_invalid_json_is_named(model_copy: Path) -> None:
    (model_copy / "detector.json").write_text("{not json")
    with pytest.raises(ModelError, match=r"detector\.json: metadata is not valid JSON"):
        Model(model_copy / "detector.tflite", "detector")


def test_fast_int8_input_equals_generic_quantization(untrained_models: Path) -> None:
    m = Model(untrained_models / "reader.tflite", "reader")
    pixels = np.random.default_rng(1).integers(0, 256, (64, 192, 1), np.uint8)
    fast = (pixels ^ np.uint8(0x80)).view(np.int8).reshape(m.input.shape)
    generic = m.quantize(pixels.astype(np.float32) / 255.0)
    np.testing.assert_array_equal(fast, generic)


@pytest.mark.parametrize("damage, message", [
    (lambda m: m.update(input="int8"), r"reader\.json: invalid metadata: input: "),
    (lambda m: m.pop("reader"), r"reader\.json: invalid metadata: .*needs its 'reader' section"),
    (lambda m: m["reader"].pop("formats"), r"reader\.json: invalid metadata: reader\.formats: Field required"),
    (lambda m: m.update(extra_key=1), r"reader\.json: invalid metadata: extra_key: Extra inputs"),
    (lambda m: m.update(schema=1), r"reader\.json: metadata schema 1 is not the supported 2"),
])
def test_malformed_metadata_names_the_file_and_the_key(model_copy: Path, damage, message: str) -> None:
    """The metadata is one typed structure (edge.model.ModelMeta): any other shape is a ModelError, not a crash."""
    meta_path = model_copy / "reader.json"
    meta = json.loads(meta_path.read_text())
    damage(meta)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=message):
        Model(model_copy / "reader.tflite", "reader")


def test_the_reader_carries_its_formats(untrained_models: Path) -> None:
    """The exporter writes the country files it was given into the reader (the shipped set carries those of
    its training: without TensorFlow, where the shipped set stands in, there is no export to check)."""
    pytest.importorskip("tensorflow", reason="checks what the trainer's exporter writes")
    from edge.formats import COUNTRIES_DIR, FormatSet
    from edge.model import read_metadata, reader_formats

    path = untrained_models / "reader.tflite"
    carried = reader_formats(read_metadata(path), path)
    assert carried.to_meta()["sha256"] == FormatSet.load(COUNTRIES_DIR).to_meta()["sha256"]
    assert len(carried.country_codes) >= 30
