"""Edge TPU: the compiled variants are verified by their own recorded hash; without libedgetpu (as here) asking
for the Edge TPU runs the CPU models after exactly one warning."""
from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from deploytools import DEPLOY, ROOT
from edge.config import ConfigError, parse_config
from edge.model import ModelError, edgetpu_path, load_edgetpu_delegate, load_model_set, read_metadata, verify_edgetpu

pytestmark = pytest.mark.skipif(load_edgetpu_delegate()[0] is not None,
                                reason="libedgetpu and an Edge TPU are present: the fallback cannot be shown here")


@pytest.fixture
def with_variants(untrained_models: Path, tmp_path: Path) -> Path:
    """The untrained set with stand-in NAME_edgetpu.tflite files (copies) whose hashes are recorded: one for each of
    its models (the detector, its wide form and the reader)."""
    models = tmp_path / "models"
    shutil.copytree(untrained_models, models)
    names = sorted(p.stem for p in models.glob("*.tflite"))
    assert names == ["detector", "detector_wide", "reader"]
    for name in names:
        shutil.copy(models / f"{name}.tflite", models / f"{name}_edgetpu.tflite")
    proc = subprocess.run([sys.executable, str(DEPLOY / "edgetpu_hash.py"), str(models)], capture_output=True,
                          text=True)
    assert proc.returncode == 0 and "edgetpu_sha256" in proc.stdout, proc.stdout + proc.stderr
    return models


def fallback_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "edge.model" and r.levelno == logging.WARNING]


def test_no_variants_falls_back_with_one_warning(untrained_models: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        models = load_model_set(untrained_models, 1, "edgetpu")
    det, rd, wide = models.detector, models.reader, models.wide
    assert wide is not None and (det.accelerator, rd.accelerator, wide.accelerator) == ("cpu", "cpu", "cpu")
    assert det.run_path == untrained_models / "detector.tflite"
    [warning] = fallback_warnings(caplog)
    assert "detector_edgetpu.tflite and" in warning and "not found" in warning and "CPU models" in warning


def test_no_libedgetpu_falls_back_with_one_warning(with_variants: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        models = load_model_set(with_variants, 1, "edgetpu")
    det, rd, wide = models.detector, models.reader, models.wide
    assert wide is not None and (det.accelerator, rd.accelerator, wide.accelerator) == ("cpu", "cpu", "cpu")
    [warning] = fallback_warnings(caplog)
    assert "libedgetpu.so.1 cannot be loaded" in warning


def test_cpu_asks_for_nothing(with_variants: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        load_model_set(with_variants, 1, "cpu")
    assert fallback_warnings(caplog) == []
    with pytest.raises(ModelError, match="accelerator 'tpu'"):
        load_model_set(with_variants, 1, "tpu")


def test_variant_must_match_its_recorded_hash(with_variants: Path) -> None:
    det = with_variants / "detector.tflite"
    assert verify_edgetpu(det, read_metadata(det)) == edgetpu_path(det)
    with open(edgetpu_path(det), "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelError, match=r"detector_edgetpu\.tflite: sha256 .* does not match 'edgetpu_sha256'"):
        verify_edgetpu(det, read_metadata(det))
    meta = read_metadata(det).model_copy(update={"edgetpu_sha256": None})
    with pytest.raises(ModelError, match=r"detector\.json: no 'edgetpu_sha256'.*edgetpu_hash\.py"):
        verify_edgetpu(det, meta)


def test_update_verification_covers_the_variants(with_variants: Path) -> None:
    verify = ["bash", "-c", f'. "{DEPLOY}/lib.sh"; verify_models "$1"', "verify", str(with_variants)]
    ok = subprocess.run(verify, capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.count("ok    ") == 6, ok.stdout  # 3 models, each with its variant
    with open(with_variants / "reader_edgetpu.tflite", "ab") as f:
        f.write(b"\0")
    bad = subprocess.run(verify, capture_output=True, text=True)
    assert bad.returncode == 1 and "FAIL  " in bad.stdout and "reader.json records" in bad.stdout, bad.stdout


def test_read_cli_warns_once_and_reads(untrained_models: Path, tmp_path: Path) -> None:
    image = tmp_path / "frame.jpg"
    cv2.imwrite(str(image), np.full((240, 320, 3), 128, np.uint8))
    proc = subprocess.run([sys.executable, "-m", "edge", "read", "--json", "--accelerator", "edgetpu", "--models",
                           str(untrained_models), str(image), str(image)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 2
    assert [line for line in proc.stderr.splitlines() if "Edge TPU" in line] == [
        line for line in proc.stderr.splitlines() if line.startswith("WARNING: Edge TPU asked for")]
    assert sum("Edge TPU" in line for line in proc.stderr.splitlines()) == 1, proc.stderr


def test_config_key() -> None:
    base = {"camera": {"type": "v4l2", "path": "0"}}
    assert parse_config(base).detection.accelerator == "cpu"
    assert parse_config(base | {"detection": {"accelerator": "edgetpu"}}).detection.accelerator == "edgetpu"
    with pytest.raises(ConfigError, match=r"detection\.accelerator"):
        parse_config(base | {"detection": {"accelerator": "tpu"}})
