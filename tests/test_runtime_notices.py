"""The TFLite runtime's own stderr notice (XNNPACK) stays out of the edge's output; nothing else is lost."""
from __future__ import annotations

import json
import os

import pytest

from conftest import ROOT, run_edge
from edge.model import RUNTIME_NOTICES, runtime_notices_dropped


def test_read_prints_only_its_own_lines() -> None:
    images = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "demo").glob("*.jpg"))[:2]
    proc = run_edge("read", "--json", *images)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["image"] for line in proc.stdout.splitlines()] == images
    assert "XNNPACK" not in proc.stderr and "INFO:" not in proc.stderr, proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("read 2 of 2 images"), proc.stderr


def test_only_the_notice_is_dropped_and_the_rest_keeps_its_order(capfd: pytest.CaptureFixture[str]) -> None:
    with runtime_notices_dropped():
        os.write(2, b"before\n" + RUNTIME_NOTICES[0] + b"\nafter, no newline")
    os.write(2, b"\nlater\n")
    assert capfd.readouterr().err == "before\nafter, no newline\nlater\n"


def test_an_error_inside_leaves_stderr_restored(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="inside"), runtime_notices_dropped():
        os.write(2, b"written before the error\n")
        raise ValueError("inside")
    os.write(2, b"written after\n")
    assert capfd.readouterr().err == "written before the error\nwritten after\n"
