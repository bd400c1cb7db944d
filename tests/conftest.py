"""Shared fixtures: a real (untrained) int8 model set, exported once per session."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

#: The harness clip build started at collection: clip dir ("out"), its process ("proc") and log file ("log"),
#: and the temporary folder to remove at the end ("tmp", None with EDGE_HARNESS_CACHE).
_harness_build: dict = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the tests that use the harness clip last and start building the clip and its models now.

    The clip's tiny models take minutes of training in ``clipmodels.py``, a
    process of its own; started here, that training runs on the second core
    while the rest of the suite runs, instead of before the harness tests.
    """
    harness = [it for it in items if "clip" in getattr(it, "fixturenames", ())]
    if not harness:
        return
    items[:] = [it for it in items if it not in harness] + harness
    if config.option.collectonly:
        return
    cached = os.environ.get("EDGE_HARNESS_CACHE")
    tmp = None if cached else Path(tempfile.mkdtemp(prefix="edge-harness-"))
    out = Path(cached) if cached else tmp / "clip"
    if (out / "truth.json").is_file():
        return
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "build.log", "w")  # noqa: SIM115  (closed with the process)
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "daemon" / "clipmodels.py"), str(out)], cwd=ROOT,
                            env=os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"}, stdout=log, stderr=subprocess.STDOUT)
    _harness_build.update(out=out, proc=proc, log=log, tmp=tmp)


def harness_build() -> tuple[Path, "subprocess.Popen[bytes]", Path] | None:
    """The clip build started at collection (clip dir, process, its log), if any."""
    if not _harness_build:
        return None
    return _harness_build["out"], _harness_build["proc"], Path(_harness_build["log"].name)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _harness_build:
        return
    proc = _harness_build["proc"]
    if proc.poll() is None:  # the harness was deselected or the run stopped early
        proc.kill()
        proc.wait()
    _harness_build["log"].close()
    if _harness_build["tmp"] is not None:
        shutil.rmtree(_harness_build["tmp"], ignore_errors=True)


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
