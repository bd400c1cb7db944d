"""Benchmark the shipped (or given) model set on this machine: ``python -m tools.bench`` (``make bench``).

Prints a table and writes JSON (and a PNG chart beside it): detector and
reader latency (median, p95) with 1 and 2 interpreter threads, end-to-end
milliseconds and fps per 1280x720 frame, peak RSS of this process, model
sizes and MACs, a Raspberry Pi estimate from the MACs (assumptions stated),
and, when the labelled real sets and their scorer are present beside the
checkout (../shared), accuracy and ms per image of ``edge read`` on them
next to OpenALPR 2.3's reference figures. Needs no trainer: run from a
checkout on a Pi, it measures the Pi the same way.
"""
from __future__ import annotations

import argparse
import itertools
import json
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from edge.model import DEFAULT_MODELS, model_paths, read_metadata
from edge.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = ROOT / "demo"
SHARED = ROOT.parent / "shared"

#: OpenALPR 2.3 on the same sets, same kind of machine (2 cores, one long-running process, model load
#: excluded, told the right country): reference figures, not measured by this benchmark.
OPENALPR_REFERENCE = {
    "openalpr-us": {"exact": 0.495, "det_recall": 0.878, "ms_per_image": 309.0, "p95_ms": 531.0, "country": "us"},
    "seed480": {"exact": 0.390, "lenient": 0.498, "det_recall": None, "ms_per_image": 108.0, "p95_ms": 198.0,
                "country": "eu"},
}
#: Effective int8 throughput assumed for the estimates (XNNPACK, all cores, GMAC/s). Stated, not measured:
#: Pi 4 = 4x Cortex-A72 @ 1.5 GHz, Pi 5 = 4x Cortex-A76 @ 2.4 GHz (about 2.5x a Pi 4 on int8 convolution).
PI_GMACS = {"pi4": 4.0, "pi5": 10.0}
#: Detection settings measured: ``read``'s defaults, and those of deploy/config.device.yaml (a test keeps them equal).
MODES = {
    "default": {"tiles": 2, "refine": 4, "tiles_per_frame": 0, "max_runs": 0},
    "device_config": {"tiles": 2, "refine": 4, "tiles_per_frame": 1, "max_runs": 3},
}


def _set_mode(pipe: Pipeline, mode: str) -> None:
    for key, value in MODES[mode].items():
        setattr(pipe, key, value)
    pipe.restart_tiles()


def _frames(n: int) -> list[np.ndarray]:
    """1280x720 frames: the demo images scaled to 720p, else a synthetic-noise frame."""
    read = [cv2.imread(str(p)) for p in sorted(DEMO_DIR.glob("*.jpg"))]
    frames: list[np.ndarray] = [cv2.resize(f, (1280, 720)) for f in read if f is not None]
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


def _measure(pipe: Pipeline, frames: list[np.ndarray], repeat: int) -> dict:
    """Timings of one pipeline: detector, reader per plate, and end to end with read's settings and the device's."""
    det_in, _ = pipe.detector.prepare(frames[0])
    crop = np.full((pipe.reader.height, pipe.reader.width), 128, np.uint8)
    cycle = itertools.cycle(frames)
    out = {
        "detector": _stats(_time(lambda: pipe.detector.probabilities(det_in), repeat)),
        "reader_per_plate": _stats(_time(lambda: pipe.reader.read_crop(crop), repeat)),
        "end_to_end_720p": _stats(_time(lambda: pipe(next(cycle)), repeat)),
    }
    # The Pi's deploy/config.device.yaml: one tile a frame in turn, at most 3 detector runs a frame.
    _set_mode(pipe, "device_config")
    out["end_to_end_720p_device_config"] = _stats(_time(lambda: pipe(next(cycle)), repeat))
    return out


def run(models: Path, repeat: int) -> dict:
    """Measure everything; returns the result dict."""
    frames = _frames(8)
    result: dict = {"machine": {"platform": platform.platform(),
                                "processor": platform.processor() or platform.machine(),
                                "python": platform.python_version()},
                    "models": {}, "threads": {}}
    for path in model_paths(models):
        meta = read_metadata(path)
        result["models"][meta.kind] = {"file": path.name, "size_bytes": path.stat().st_size, "macs": meta.macs,
                                        "input": meta.input.shape, "dtype": meta.input.dtype}
    for threads in (1, 2):
        result["threads"][threads] = _measure(Pipeline.from_dir(models, num_threads=threads), frames, repeat)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    det_macs = result["models"].get("detector", {}).get("macs") or 0
    rd_macs = result["models"].get("reader", {}).get("macs") or 0
    # Detector passes and reader runs as counted on the benchmark frames (each holds one plate).
    runs = _count_runs(models, frames, list(MODES))
    result["runs_per_frame"] = runs
    result["macs_per_frame_one_plate"] = {m: round(r["detector_passes"] * det_macs + r["reader_runs"] * rd_macs)
                                          for m, r in runs.items()}
    result["pi_estimate"] = {
        board: {"assumed_gmacs": g} | {
            f"ms_per_frame_one_plate_{m}": round(macs / (g * 1e9) * 1000, 1)
            for m, macs in result["macs_per_frame_one_plate"].items()}
        for board, g in PI_GMACS.items()
    } if det_macs else {}
    return result


def _count_runs(models: Path, frames: list[np.ndarray], modes: list[str]) -> dict:
    """Mean detector passes and reader runs per frame in each of ``MODES``, on one counting pipeline."""
    pipe = Pipeline.from_dir(models, num_threads=1)
    counts = {"detector_passes": 0, "reader_runs": 0}

    def counted(fn, key):
        def wrapper(*args, **kwargs):
            counts[key] += 1
            return fn(*args, **kwargs)
        return wrapper

    # Wrapped on this one instance to count its calls: the ignores are for that, on purpose.
    pipe.detector.probabilities = counted(pipe.detector.probabilities, "detector_passes")  # type: ignore[method-assign]
    pipe.reader.read_crop = counted(pipe.reader.read_crop, "reader_runs")  # type: ignore[method-assign]
    out = {}
    for mode in modes:
        _set_mode(pipe, mode)
        counts.update(detector_passes=0, reader_runs=0)
        for f in frames:
            pipe(f)
        out[mode] = {k: round(v / len(frames), 2) for k, v in counts.items()}
    return out


def real_sets(models: Path, sets: list[Path], scorer: Path) -> dict:
    """``edge read --json`` on labelled real sets, scored by the official scorer, beside OpenALPR's figures."""
    out = {}
    base = f"{shlex.quote(sys.executable)} -m edge read --json --models {shlex.quote(str(models))}"
    dev = MODES["device_config"]
    # Each still as a turn of the device's tiles (--frames 0): what the camera sees of a car in view that long.
    device = (f" --tiles {dev['tiles']} --refine {dev['refine']} --tiles-per-frame {dev['tiles_per_frame']}"
              f" --max-runs {dev['max_runs']} --frames 0")
    for folder in sets:
        out[folder.name] = {"openalpr_2_3_reference": OPENALPR_REFERENCE.get(folder.name)}
        for key, cmd in (("ours", base), ("ours_device_config", base + device)):
            with tempfile.TemporaryDirectory() as tmp:
                res_path = Path(tmp) / "res.json"
                proc = subprocess.run([sys.executable, str(scorer), "--cmd", cmd, "--set", str(folder), "--out",
                                       str(res_path)], cwd=ROOT, capture_output=True, text=True)
                if proc.returncode != 0 or not res_path.is_file():
                    out[folder.name]["error"] = proc.stderr.strip()[-300:]
                    break
                r = json.loads(res_path.read_text())[folder.name]
            out[folder.name][key] = {"images": r["images"], "exact": r["exact"], "lenient": r["lenient"],
                                     "det_recall": r["det_recall"], "ms_per_image": r["latency_ms_mean"],
                                     "p95_ms": r["latency_ms_p95"], "errors": r["errors"]}
    return out


def print_table(r: dict) -> None:
    """The result of ``run`` (and ``real_sets``) as a table on stdout."""
    print(f"machine: {r['machine']['processor']} ({r['machine']['platform']})")
    for kind, m in r["models"].items():
        macs = f"{m['macs'] / 1e6:.1f} MMAC" if m.get("macs") else "-"
        print(f"  {kind:<9} {m['file']:<16} {m['size_bytes'] / 1024:8.1f} KiB  {macs:>12}  "
              f"input {m['input']} {m['dtype']}")
    print(f"{'stage':<32}{'threads':>8}{'median ms':>11}{'p95 ms':>9}{'fps':>8}")
    for threads, stages in r["threads"].items():
        for stage, s in stages.items():
            fps = f"{1000 / s['median_ms']:.1f}" if stage.startswith("end_to_end") else ""
            print(f"{stage:<32}{threads:>8}{s['median_ms']:>11.2f}{s['p95_ms']:>9.2f}{fps:>8}")
    print(f"peak RSS: {r['peak_rss_mb']} MB")
    for mode, macs in r.get("macs_per_frame_one_plate", {}).items():
        n = r.get("runs_per_frame", {}).get(mode, {})
        print(f"MACs per 720p frame with one plate, {mode}: {macs / 1e9:.2f} G "
              f"({n.get('detector_passes')} detector passes, {n.get('reader_runs')} reader runs)")
    for board, e in r.get("pi_estimate", {}).items():
        print(f"estimate {board}: {e['ms_per_frame_one_plate_default']} ms per frame with one plate by default "
              f"(tiles 2, refine 4), {e['ms_per_frame_one_plate_device_config']} ms with deploy/config.device.yaml "
              f"(one tile a frame, at most 3 detector runs; assuming {e['assumed_gmacs']} GMAC/s int8; not measured)")
    if r.get("real"):
        print(f"{'set':<14}{'':<26}{'exact':>7}{'lenient':>9}{'det@.5':>8}{'ms/img':>8}{'p95':>8}")
        for name, res in r["real"].items():
            if "error" in res:
                print(f"{name:<14}error: {res['error']}")
                continue
            for who, f in (("this model set", res.get("ours")),
                           ("  device config, per turn", res.get("ours_device_config")),
                           ("OpenALPR 2.3 (reference)", res["openalpr_2_3_reference"])):
                if not f:
                    continue
                def fmt(v, p=3):
                    return "-" if v is None else f"{v:.{p}f}"
                print(f"{name:<14}{who:<26}{fmt(f.get('exact')):>7}{fmt(f.get('lenient')):>9}{fmt(f.get('det_recall')):>8}"
                      f"{fmt(f.get('ms_per_image'), 1):>8}{fmt(f.get('p95_ms'), 1):>8}")


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.bench [--models DIR] [--repeat N] [--out FILE] ...``."""
    ap = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=DEFAULT_MODELS, help="model set directory (default: shipped)")
    ap.add_argument("--repeat", type=int, default=50, help="timed runs per measurement")
    ap.add_argument("--out", type=Path, default=Path("bench/results.json"), help="JSON results file")
    ap.add_argument("--real", type=Path, action="append", default=None,
                    help="labelled real set (folder with labels.tsv; repeatable). "
                         "Default: ../shared/data/real/* if present")
    ap.add_argument("--scorer", type=Path, default=SHARED / "eval" / "run_eval.py", help="the real-set scorer")
    ap.add_argument("--no-real", action="store_true", help="skip the real sets")
    args = ap.parse_args(argv)
    result = run(args.models, args.repeat)
    sets = args.real if args.real is not None else sorted((SHARED / "data" / "real").glob("*/"))
    if not args.no_real and sets and args.scorer.is_file():
        result["real"] = real_sets(args.models, sets, args.scorer)
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    chart = _chart(result, args.out.with_suffix(".png"))
    print(f"wrote {args.out}" + (f" and {chart}" if chart else ""))
    return 0


def _chart(r: dict, path: Path) -> Path | None:
    """Bars: end-to-end ms per 720p frame per thread count; ms per image and exact match vs OpenALPR."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the device has no matplotlib: the JSON is the result
        return None
    real = {k: v for k, v in r.get("real", {}).items() if "ours" in v}
    fig, axes = plt.subplots(1, 3 if real else 1, figsize=(14 if real else 5, 4), squeeze=False)
    ax = axes[0][0]
    threads = list(r["threads"])
    ax.bar([f"{t} thread(s)" for t in threads], [r["threads"][t]["end_to_end_720p"]["median_ms"] for t in threads])
    ax.set_title("end to end, ms per 1280x720 frame (median)")
    if real:
        names = list(real)
        x = np.arange(len(names))
        for ax, key, title in ((axes[0][1], "ms_per_image", "ms per image (mean)"),
                               (axes[0][2], "exact", "exact match")):
            ours = [real[n]["ours"][key] or 0 for n in names]
            ref = [(real[n]["openalpr_2_3_reference"] or {}).get(key) or 0 for n in names]
            b1 = ax.bar(x - 0.2, ours, 0.4, label="this model set")
            b2 = ax.bar(x + 0.2, ref, 0.4, label="OpenALPR 2.3 (reference)")
            ax.bar_label(b1, fmt="%.2f" if key == "exact" else "%.0f", fontsize=8)
            ax.bar_label(b2, fmt="%.2f" if key == "exact" else "%.0f", fontsize=8)
            ax.set_xticks(x, names)
            ax.set_title(title)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
