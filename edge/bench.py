"""Benchmark the shipped (or given) model set on this machine: ``python -m edge.bench``.

Prints a table and writes JSON: detector and reader latency (median, p95)
with 1 and 2 interpreter threads, end-to-end milliseconds per 1280x720
frame, peak RSS of this process, model sizes and MACs. Runs on the device
too (no trainer needed), so a Pi can be measured the same way.
"""
from __future__ import annotations

import argparse
import itertools
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from edge.__main__ import DEFAULT_MODELS
from edge.model import model_paths, read_metadata
from edge.pipeline import Pipeline

DEMO_DIR = Path(__file__).resolve().parents[1] / "demo"


def _frames(n: int) -> list[np.ndarray]:
    """1280x720 frames: the demo images scaled to 720p, else a synthetic-noise frame."""
    frames = [cv2.imread(str(p)) for p in sorted(DEMO_DIR.glob("*.jpg"))]
    frames = [cv2.resize(f, (1280, 720)) for f in frames if f is not None]
    if not frames:
        frames = [np.random.default_rng(0).integers(0, 256, (720, 1280, 3), np.uint8)]
    return [frames[i % len(frames)] for i in range(n)]


def _stats(ms: list[float]) -> dict:
    s = sorted(ms)
    return {"median_ms": round(statistics.median(s), 3), "p95_ms": round(s[min(len(s) - 1, int(0.95 * len(s)))], 3),
            "n": len(s)}


def _time(fn, repeat: int) -> list[float]:
    fn()  # warm-up: first invoke allocates
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def run(models: Path, repeat: int) -> dict:
    """Measure everything; returns the result dict."""
    frames = _frames(8)
    result: dict = {"machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                                "python": platform.python_version()},
                    "models": {}, "threads": {}}
    for path in model_paths(models):
        meta = read_metadata(path)
        result["models"][meta["kind"]] = {"file": path.name, "size_bytes": path.stat().st_size, "macs": meta.get("macs"),
                                          "input": meta["input"]["shape"], "dtype": meta["input"]["dtype"]}
    for threads in (1, 2):
        pipe = Pipeline.from_dir(models, num_threads=threads)
        det_in, _ = pipe.detector.prepare(frames[0])
        crop = np.full((pipe.reader.height, pipe.reader.width), 128, np.uint8)
        cycle = itertools.cycle(frames)
        result["threads"][threads] = {
            "detector": _stats(_time(lambda: pipe.detector.probabilities(det_in), repeat)),
            "reader_per_plate": _stats(_time(lambda: pipe.reader.read_crop(crop), repeat)),
            "end_to_end_720p": _stats(_time(lambda: pipe(next(cycle)), repeat)),
        }
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def print_table(r: dict) -> None:
    print(f"machine: {r['machine']['processor']} ({r['machine']['platform']})")
    for kind, m in r["models"].items():
        macs = f"{m['macs'] / 1e6:.1f} MMAC" if m.get("macs") else "-"
        print(f"  {kind:<9} {m['file']:<16} {m['size_bytes'] / 1024:8.1f} KiB  {macs:>12}  input {m['input']} {m['dtype']}")
    print(f"{'stage':<20}{'threads':>8}{'median ms':>11}{'p95 ms':>9}{'fps':>8}")
    for threads, stages in r["threads"].items():
        for stage, s in stages.items():
            fps = f"{1000 / s['median_ms']:.1f}" if stage == "end_to_end_720p" else ""
            print(f"{stage:<20}{threads:>8}{s['median_ms']:>11.2f}{s['p95_ms']:>9.2f}{fps:>8}")
    print(f"peak RSS: {r['peak_rss_mb']} MB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edge.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=DEFAULT_MODELS, help="model set directory (default: shipped)")
    ap.add_argument("--repeat", type=int, default=50, help="timed runs per measurement")
    ap.add_argument("--out", type=Path, default=Path("bench/results.json"), help="JSON results file")
    args = ap.parse_args(argv)
    result = run(args.models, args.repeat)
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
