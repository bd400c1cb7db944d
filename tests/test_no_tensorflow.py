"""The edge must run without TensorFlow: importing it pulls in none, and its tests run where it is absent."""
from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT


def test_edge_imports_no_tensorflow() -> None:
    code = (
        "import sys, edge.__main__, edge.pipeline, edge.model, edge.detect, edge.recognize, edge.plates, edge.formats\n"
        "import edge.vehicle_eval\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'trainer'))\n"
        "print(','.join(bad))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "", f"edge imported: {proc.stdout.strip()}"


def test_the_edge_tests_run_where_tensorflow_is_not_installed() -> None:
    """As in ``make test-edge``: the trainer's tests are skipped with the reason, the edge's run on the shipped set."""
    code = ("import sys\n"
            "sys.modules.update(tensorflow=None, keras=None)  # as if not installed: no import, no find_spec\n"
            "import pytest\n"
            "sys.exit(pytest.main(sys.argv[1:]))\n")
    files = ["tests/test_model.py", "tests/test_detect.py", "tests/test_data.py", "tests/test_end_to_end.py",
             "tests/test_formats.py"]
    proc = subprocess.run([sys.executable, "-c", code, "-rs", "-p", "no:cacheprovider", *files], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-2000:]
    assert "TensorFlow is not installed: the edge alone" in out, out[:2000]
    skipped = [line for line in out.splitlines() if line.startswith("SKIPPED")]
    assert any("tests/test_data.py: needs the trainer, and TensorFlow is not installed" in s for s in skipped), skipped
    assert any("tests/test_end_to_end.py" in s and "needs the trainer's TensorFlow" in s for s in skipped), skipped
    assert any("test_formats.py" in s for s in skipped), skipped  # a test function that imports the trainer
    passed = int(re.search(r"(\d+) passed", out).group(1))
    assert passed >= 40, out[-2000:]  # the edge's own tests ran, the model tests on the shipped set
