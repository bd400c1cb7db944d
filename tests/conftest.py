"""Shared fixtures: a real (untrained) int8 model set, exported once per session."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session")
def untrained_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Detector and reader with random weights, exported through the real int8 path.

    Their reads are meaningless; they exercise loading, metadata checks, the
    JSON contract and the quantized I/O without depending on a trained model.
    """
    from trainer.export import export_model
    from trainer.data import DETECTOR_INPUT
    from trainer.nets import build_detector, build_reader

    out = tmp_path_factory.mktemp("untrained")
    rng = np.random.default_rng(0)
    h, w = DETECTOR_INPUT
    export_model("detector", build_detector(h, w, batch=1), rng.integers(0, 256, (4, h, w, 3), np.uint8),
                 rng.integers(0, 256, (2, h, w, 3), np.uint8), out)
    export_model("reader", build_reader(batch=1), rng.integers(0, 256, (8, 64, 192), np.uint8),
                 rng.integers(0, 256, (4, 64, 192), np.uint8), out)
    return out / "int8"


def run_edge(*args: str, timeout: float = 300) -> "subprocess.CompletedProcess[str]":
    """Run ``python -m edge ARGS`` as a user would, from the repository root."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "edge", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
