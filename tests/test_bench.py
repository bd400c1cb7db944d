"""``python -m tools.bench --quick``: the benchmark runs on the shipped models and its counts add up."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_quick_bench_writes_consistent_counts(tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    proc = subprocess.run([sys.executable, "-m", "tools.bench", "--quick", "--no-real", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert {"machine", "frames", "models", "stages", "modes", "peak_rss_mb", "pi_assumptions", "relay_latency",
            "openalpr_comparison"} <= set(r)
    det_macs, rd_macs = r["models"]["detector"]["macs"], r["models"]["reader"]["macs"]
    whole_macs = r["models"].get("detector_wide", r["models"]["detector"])["macs"]
    assert det_macs > 0 and rd_macs > 0 and r["peak_rss_mb"] > 0
    assert set(r["modes"]) == {"read", "daemon"}
    assert r["modes"]["daemon"]["config"] == "deploy/config.device.yaml"
    for name, mode in r["modes"].items():
        assert set(mode["threads"]) == {"1", "2"}, name
        for timing in mode["threads"].values():
            assert timing["n"] == r["frames"]["count"] and 0 < timing["median_ms"] <= timing["p95_ms"]
            assert timing["fps"] > 0
        t, per = mode["totals"], mode["per_frame"]
        assert t["frames"] == r["frames"]["count"] * r["frames"]["passes"]
        # Every frame runs the detector on the whole frame at least, and the demo scenes each hold a plate.
        assert t["detector_runs"] >= t["frames"] and t["reader_runs"] > 0, name
        # Each 720p frame's whole-frame pass goes through the wide detector where the set has one; the rest through
        # the detector.
        detection = t["frames"] * whole_macs + (t["detector_runs"] - t["frames"]) * det_macs
        assert t["macs"] == detection + t["reader_runs"] * rd_macs, name
        assert per["detection_macs"] == round(detection / t["frames"])
        assert per["total_macs"] == round(t["macs"] / t["frames"]) and per["total_macs"] > per["detection_macs"]
        assert 0 <= per["stopped_early_share"] <= 1
        for board, gmacs in (("pi4", 4.0), ("pi5", 10.0)):
            est = mode["pi_estimate"][board]
            assert est["assumed_gmacs"] == gmacs
            assert est["ms_per_frame"] == round(per["total_macs"] / (gmacs * 1e9) * 1000, 1)
    # A video frame is capped by the device configuration's max_detector_runs; a still is not.
    cap = r["modes"]["daemon"]["search"]["max_detector_runs"]
    assert r["modes"]["daemon"]["totals"]["detector_runs"] <= cap * r["modes"]["daemon"]["totals"]["frames"]
    relay = r["relay_latency"]
    assert relay["plate"] and relay["back_to_back"]["runs"] > 0 and relay["fps_10"]["fps"] == 10.0
    assert relay["back_to_back"]["first_frame_to_pulse_ms"]["median"] > 0
    assert r["openalpr_comparison"] == {"skipped": "--quick"}
    assert "OpenALPR comparison: skipped" in proc.stdout
    # The chart needs matplotlib, which the edge alone (as on a Pi) does not install.
    assert (tmp_path / "x.png").is_file() == (importlib.util.find_spec("matplotlib") is not None)
