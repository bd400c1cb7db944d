"""Fixtures of the daemon harness (helpers in harness.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import HERE, ROOT, Broker, Subscriber


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory with clip.avi, frames/, truth.json and models/ (see clipmodels.py)."""
    cached = os.environ.get("EDGE_HARNESS_CACHE")
    out = Path(cached) if cached else tmp_path_factory.mktemp("clip")
    if not (out / "truth.json").is_file():
        env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"}
        proc = subprocess.run([sys.executable, str(HERE / "clipmodels.py"), str(out)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"clip/model build failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    truth = json.loads((out / "truth.json").read_text())
    reads = truth["report"]["reads"]
    # The harness asserts exact events: the models must read this clip, or nothing below means anything.
    assert reads["wrong"] == 0 and reads["spurious"] == 0 and reads["missed"] <= 3, truth["report"]
    return out


@pytest.fixture
def truth(clip: Path) -> dict:
    return json.loads((clip / "truth.json").read_text())


@pytest.fixture
def broker(tmp_path: Path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture
def subscriber(broker: Broker):
    s = Subscriber(broker.port).start()
    yield s
    s.stop()
