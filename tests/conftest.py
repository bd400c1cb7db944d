"""Shared fixtures and collection rules: a real int8 model set, the harness clip, progress on the terminal.

The edge's tests also run where only the edge is installed, without TensorFlow, as on a Pi (``make
test-edge``). There a test that imports the trainer (a module at its top, or a test function in its body)
is skipped with the reason, so are the emulated device's tests (their clip models are trained here) unless
``EDGE_HARNESS_CACHE`` names a clip already built, and ``untrained_models`` is the shipped model set.
"""
from __future__ import annotations

import ast
import functools
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# The emulated device's fixtures (clip, truth, broker, subscriber) are defined in tests/daemon/harness.py and
# loaded from here as a plugin, for any test to request; the folder goes on sys.path first, as pytest would put
# it there only when it collects a test module from it.
sys.path.insert(0, str(ROOT / "tests" / "daemon"))
pytest_plugins = ["harness"]

#: Whether the trainer can run here: its tests, the training end to end and the harness clip's models need it.
TENSORFLOW = importlib.util.find_spec("tensorflow") is not None
NO_TENSORFLOW = "needs the trainer, and TensorFlow is not installed (the edge alone, as on a Pi)"
NO_HARNESS_CLIP = ("the emulated device's clip models are trained with TensorFlow, which is not installed; "
                   "EDGE_HARNESS_CACHE=DIR with a clip built there by `make test` runs these tests")


def _is_trainer_import(node: ast.AST) -> bool:
    if isinstance(node, ast.Import):
        return any(a.name == "trainer" or a.name.startswith("trainer.") for a in node.names)
    if isinstance(node, ast.ImportFrom):
        return node.level == 0 and (node.module == "trainer" or (node.module or "").startswith("trainer."))
    return False


@functools.cache
def trainer_use(path: Path) -> tuple[bool, frozenset[str]]:
    """Whether test module ``path`` imports the trainer at its top level, and which of its test functions do."""
    try:
        tree = ast.parse(path.read_bytes(), str(path))
    except (OSError, SyntaxError, ValueError):  # pytest reports the module's own error when it imports it
        return False, frozenset()
    top = any(_is_trainer_import(node) for node in tree.body)
    functions = frozenset(
        node.name for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test")
        and any(_is_trainer_import(inner) for inner in ast.walk(node)))
    return top, functions


class _NeedsTensorFlow(pytest.Module):
    """A test module that imports the trainer, where TensorFlow is not installed: not imported, one skip."""

    def collect(self) -> Iterable[pytest.Item | pytest.Collector]:
        item = _NotImported.from_parent(self, name=self.path.name)
        item.add_marker(pytest.mark.skip(reason=NO_TENSORFLOW))
        return [item]


class _NotImported(pytest.Item):
    """Stands for the tests of a module that cannot be imported here; skipped by its mark, named by its file."""

    def runtest(self) -> None:
        raise AssertionError(f"{self.path}: cannot run without TensorFlow")  # the skip mark stops it before

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.path.name}: every test"


def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    if not TENSORFLOW and trainer_use(module_path)[0]:
        return _NeedsTensorFlow.from_parent(parent, path=module_path)
    return None  # pytest's own Module


def pytest_report_header(config: pytest.Config) -> str | None:
    if TENSORFLOW:
        return None
    return ("TensorFlow is not installed: the edge alone, as on a Pi. The trainer's tests and the training end "
            "to end are skipped, and the emulated device without EDGE_HARNESS_CACHE.")

#: The harness clip build started at collection: clip dir ("out"), its process ("proc") and log file ("log"),
#: and the temporary folder to remove at the end ("tmp", None with EDGE_HARNESS_CACHE).
_harness_build: dict = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the tests that use the harness clip last and start building the clip and its models now.

    The clip's tiny models take minutes of training in ``clipmodels.py``, a
    process of its own; started here, that training runs on the second core
    while the rest of the suite runs, instead of before the harness tests.
    Without TensorFlow, the test functions that import the trainer are
    skipped, and so are the harness tests unless the clip is in the cache.
    """
    if not TENSORFLOW:
        for item in items:
            name = getattr(item, "originalname", item.name)
            if isinstance(item, pytest.Function) and name in trainer_use(Path(item.path))[1]:
                item.add_marker(pytest.mark.skip(reason=NO_TENSORFLOW))
    harness = [it for it in items if "clip" in getattr(it, "fixturenames", ())]
    if not harness:
        return
    items[:] = [it for it in items if it not in harness] + harness
    cached = os.environ.get("EDGE_HARNESS_CACHE")
    if cached and (Path(cached) / "truth.json").is_file():
        return
    if not TENSORFLOW:
        for item in harness:
            item.add_marker(pytest.mark.skip(reason=NO_HARNESS_CLIP))
        return
    if config.option.collectonly:
        return
    tmp = None if cached else Path(tempfile.mkdtemp(prefix="edge-harness-"))
    out = Path(cached) if cached else tmp / "clip"
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "build.log", "w")  # noqa: SIM115  (closed with the process)
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "daemon" / "clipmodels.py"), str(out)], cwd=ROOT,
                            env=os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"}, stdout=log, stderr=subprocess.STDOUT)
    _harness_build.update(out=out, proc=proc, log=log, tmp=tmp)


def harness_build() -> tuple[Path, subprocess.Popen[bytes], Path] | None:
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
def progress(pytestconfig: pytest.Config) -> Callable[[str], None]:
    """``progress(line)`` shows a line on the terminal at once, past pytest's output capture.

    For what runs for minutes inside one test or fixture (training): ``make test`` runs pytest with ``-q``,
    which otherwise prints nothing until the test ends.
    """
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    terminal = pytestconfig.pluginmanager.getplugin("terminalreporter")

    def show(line: str) -> None:
        if capture is None or terminal is None:  # run with -p no:terminal: nowhere to show it
            return
        with capture.global_and_fixture_disabled():
            terminal.write_line(f"    ... {line}")
            terminal.flush()

    return show


@pytest.fixture(scope="session")
def untrained_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Detector and reader with random weights, exported through the real int8 path.

    Their reads are meaningless; they exercise loading, metadata checks, the
    JSON contract and the quantized I/O without depending on a trained model.
    Without TensorFlow (the edge alone) nothing can be exported: a copy of the
    shipped model set stands in, a real int8 set in the same format.
    """
    out = tmp_path_factory.mktemp("untrained")
    if not TENSORFLOW:
        shutil.copytree(ROOT / "edge" / "models", out / "shipped")
        return out / "shipped"
    from trainer.data import DETECTOR_INPUT
    from trainer.export import export_model
    from trainer.nets import build_detector, build_reader

    rng = np.random.default_rng(0)
    h, w = DETECTOR_INPUT
    export_model("detector", build_detector(h, w, batch=1), rng.integers(0, 256, (4, h, w, 3), np.uint8),
                 rng.integers(0, 256, (2, h, w, 3), np.uint8), out)
    export_model("reader", build_reader(batch=1), rng.integers(0, 256, (8, 64, 192), np.uint8),
                 rng.integers(0, 256, (4, 64, 192), np.uint8), out)
    return out / "int8"


def run_edge(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python -m edge ARGS`` as a user would, from the repository root."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "edge", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
