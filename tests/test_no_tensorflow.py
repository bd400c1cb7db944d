"""The edge must run without TensorFlow: importing it pulls in none."""
from __future__ import annotations

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
