"""Benchmark a model set on this machine: ``python -m tools.bench`` (``make bench``).

Two modes are measured on 1280x720 frames (the demo scenes scaled to 720p,
each held for one turn of the tiles, as a vehicle stays in view):

- ``read``: stills, ``Pipeline.run(image)`` with the search defaults
  (``edge.search``): every tile a frame needs, no cap on detector runs;
- ``daemon``: the search settings of the daemon configuration
  (``--config``, default deploy/config.device.yaml), on video frames
  numbered 0..n-1 (``Pipeline.run(image, frame=n)``), as the daemon runs.

For each: ms per frame with 1 and 2 interpreter threads (median, p95, fps),
and per frame (mean) the detector runs, reader runs, detection and total
MACs and the share of frames whose search stopped early, all from the
pipeline's own counts (``FrameReads.counts``); from those MACs a Raspberry Pi
4 and 5 estimate (assumed int8 throughput, stated: not measured). Also the
detector and reader alone, peak RSS, model sizes and MACs, and the relay's
first-frame-to-pulse latency (``edge.relay.measure_latency``) at 10 fps and
back to back.

With ``../shared`` beside the checkout: ms per image of ``edge read`` next to
OpenALPR 2.3 on the first 40 images of the openalpr-us set, each program timed
as a whole process over 41 images and over 1 (start-up and model loading
cancel out of the difference), OpenALPR measured when installed, else its
reference figures, marked as such; and accuracy on the labelled real sets in
both modes (the scorer ../shared/eval/run_eval.py). Prints a table, writes
JSON and a PNG chart beside it. Needs no trainer: from a checkout on a Pi it
measures the Pi the same way.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from edge.model import DEFAULT_MODELS, ModelError, model_paths, read_metadata, wide_detector_path
from edge.pipeline import Pipeline, SearchCounts
from edge.search import SEARCH_FIELDS, SearchSettings

if TYPE_CHECKING:  # the daemon's extra (edge.config) is imported where a configuration is read
    from edge.config import TrackingConfig

ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = ROOT / "demo"
SHARED = ROOT.parent / "shared"
DEVICE_CONFIG = ROOT / "deploy" / "config.device.yaml"
#: The set the OpenALPR comparison runs on (its first COMPARE_IMAGES rows of labels.tsv, in the listed order).
OPENALPR_SET = SHARED / "data" / "real" / "openalpr-us"
COMPARE_IMAGES = 40
COMPARE_REPEATS = 3

#: OpenALPR 2.3 on the whole sets, same kind of machine (2 cores, one long-running process, model load
#: excluded, told the right country): reference figures, not measured by this benchmark.
OPENALPR_REFERENCE = {
    "openalpr-us": {"exact": 0.495, "det_recall": 0.878, "ms_per_image": 309.0, "p95_ms": 531.0, "country": "us"},
    "seed480": {"exact": 0.390, "lenient": 0.498, "det_recall": None, "ms_per_image": 108.0, "p95_ms": 198.0,
                "country": "eu"},
}
#: OpenALPR 2.3 by the difference method on the first 40 openalpr-us images (``alpr -c us``, 41 images minus 1),
#: measured at an earlier version of this benchmark on this kind of machine: the reference when it is not installed.
OPENALPR_DIFFERENCE_REFERENCE: dict[str, Any] = {"ms_per_image_low": 228.0, "ms_per_image_high": 232.0, "images": 40,
                                 "source": "measured at an earlier version on this kind of machine"}
#: Where the OpenALPR Python binding finds its configuration and runtime data (the Debian package's paths).
OPENALPR_CONF = Path("/etc/openalpr/openalpr.conf")
OPENALPR_RUNTIME = Path("/usr/share/openalpr/runtime_data")
#: Effective int8 throughput assumed for the estimates (XNNPACK, all cores, GMAC/s). Stated, not measured:
#: Pi 4 = 4x Cortex-A72 @ 1.5 GHz, Pi 5 = 4x Cortex-A76 @ 2.4 GHz (about 2.5x a Pi 4 on int8 convolution).
PI_GMACS = {"pi4": 4.0, "pi5": 10.0}
PI_ASSUMPTIONS = ("estimate = total MACs per frame / assumed int8 throughput (Pi 4: 4x Cortex-A72 @ 1.5 GHz, "
                  "4 GMAC/s; Pi 5: 4x Cortex-A76 @ 2.4 GHz, 10 GMAC/s; XNNPACK on all cores); not measured, and "
                  "without decoding, resizing and the Python around the models")
#: Frames a scene is shown for in the relay latency runs (the tracker confirms a vehicle well within them).
RELAY_FRAMES = 30


class BenchError(RuntimeError):
    """The benchmark cannot run as asked; the message names the file."""


@dataclass(frozen=True)
class Mode:
    """A measured mode: stills or numbered video frames, with its search settings."""

    description: str
    video: bool
    search: SearchSettings
    #: The daemon configuration the settings come from, if any.
    config: str | None = None


def daemon_mode(config: Path) -> tuple[SearchSettings, int, TrackingConfig]:
    """The search settings, interpreter threads and tracking section of a daemon configuration.

    Only those are taken: the models it names (a folder on the device) need not exist here.
    """
    try:
        from edge.config import ConfigError, load_config
    except ImportError as exc:
        raise BenchError(f"{config}: reading a daemon configuration needs the daemon's extra: {exc}") from None
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        raise BenchError(str(exc)) from None
    return cfg.detection.search_settings(), cfg.detection.threads, cfg.tracking


def _frames() -> tuple[list[np.ndarray], list[str]]:
    """Video-like 1280x720 frames: each demo scene scaled to 720p and held for four frames (one turn of the four
    tiles of a 16:9 frame, so that every scene meets every tile); a noise frame when there is no demo."""
    paths = sorted(DEMO_DIR.glob("*.jpg"))
    scenes = [(p.name, cv2.imread(str(p))) for p in paths]
    frames = [(name, cv2.resize(f, (1280, 720))) for name, f in scenes if f is not None]
    if not frames:
        frames = [("noise", np.random.default_rng(0).integers(0, 256, (720, 1280, 3), np.uint8))]
    held = [item for item in frames for _ in range(4)]
    return [f for _, f in held], [n for n, _ in held]


def _stats(ms: Sequence[float]) -> dict:
    s = sorted(ms)
    return {"median_ms": round(statistics.median(s), 3), "p95_ms": round(s[min(len(s) - 1, int(0.95 * len(s)))], 3),
            "n": len(s)}


def _time(fn: Callable[[], object], repeat: int) -> list[float]:
    fn()  # warm-up: the first invoke allocates
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def _time_mode(pipe: Pipeline, frames: list[np.ndarray], video: bool, passes: int) -> tuple[dict, list[SearchCounts]]:
    """Wall ms per frame of ``pipe.run`` over ``passes`` passes of ``frames`` (numbered 0..n-1 on video), and the
    search counts of every timed frame."""
    pipe.run(frames[0], 0 if video else None)  # warm-up
    ms: list[float] = []
    counts: list[SearchCounts] = []
    for _ in range(passes):
        for n, frame in enumerate(frames):
            t = time.perf_counter()
            result = pipe.run(frame, n if video else None)
            ms.append((time.perf_counter() - t) * 1000)
            counts.append(result.counts)
    stats = _stats(ms)
    stats["mean_ms"] = round(statistics.fmean(ms), 3)
    stats["fps"] = round(1000 / stats["median_ms"], 1) if stats["median_ms"] > 0 else None
    stats["detector_ms_mean"] = round(statistics.fmean(c.detector_ms for c in counts), 3)
    return stats, counts


def _counts(counts: list[SearchCounts], reader_macs: int) -> dict:
    """Totals and per-frame means of a mode's search counts (detection: what the reads did not spend, so that a
    frame counts the detector it went through, with a wide detector in the set)."""
    n = len(counts)
    runs = sum(c.detector_runs for c in counts)
    reads = sum(c.reader_runs for c in counts)
    macs = sum(c.macs for c in counts)
    stopped = sum(c.stopped_early for c in counts)
    return {
        "totals": {"frames": n, "detector_runs": runs, "reader_runs": reads, "macs": macs, "stopped_early": stopped},
        "per_frame": {"detector_runs": round(runs / n, 3), "reader_runs": round(reads / n, 3),
                      "detection_macs": round((macs - reads * reader_macs) / n), "total_macs": round(macs / n),
                      "stopped_early_share": round(stopped / n, 3)},
    }


def _pi_estimate(total_macs: float) -> dict:
    out = {}
    for board, gmacs in PI_GMACS.items():
        ms = total_macs / (gmacs * 1e9) * 1000
        out[board] = {"assumed_gmacs": gmacs, "ms_per_frame": round(ms, 1),
                      "fps": round(1000 / ms, 1) if ms > 0 else None}
    return out


def _stage_times(pipe: Pipeline, frame: np.ndarray, repeat: int) -> dict:
    """The detector alone on a whole frame, and the reader alone on one plate crop."""
    det_in, _ = pipe.detector.prepare(frame)
    crop = np.full((pipe.reader.height, pipe.reader.width), 128, np.uint8)
    return {"detector": _stats(_time(lambda: pipe.detector.probabilities(det_in), repeat)),
            "reader_per_plate": _stats(_time(lambda: pipe.reader.read_crop(crop), repeat))}


def relay_latency(pipe: Pipeline, tracking: TrackingConfig, runs: int) -> dict:
    """First frame to pulse (``edge.relay.measure_latency``) with ``pipe``, back to back and at 10 fps, on the
    first demo scene (scaled to 1280x720) in which the tracker confirms a vehicle."""
    from edge.relay import measure_latency

    for path in sorted(DEMO_DIR.glob("*.jpg")):
        image = cv2.imread(str(path))
        if image is None:
            continue
        frames = [cv2.resize(image, (1280, 720))] * RELAY_FRAMES
        back = measure_latency(pipe, frames, runs=runs, fps=None, tracking=tracking)
        if back["plate"] is None:
            continue
        paced = measure_latency(pipe, frames, runs=runs, fps=10.0, tracking=tracking)
        return {"scene": path.name, "plate": back["plate"], "back_to_back": back, "fps_10": paced}
    return {"scene": None, "plate": None, "note": f"no scene of {DEMO_DIR} gave a confirmed vehicle"}


def run(models: Path, config: Path, passes: int, repeat: int, relay_runs: int) -> dict:
    """Measure everything in this process (no subprocess); returns the result dict."""
    daemon_search, daemon_threads, tracking = daemon_mode(config)
    frames, names = _frames()
    result: dict = {"machine": {"platform": platform.platform(),
                                "processor": platform.processor() or platform.machine(),
                                "python": platform.python_version()},
                    "frames": {"size": [1280, 720], "count": len(frames), "scenes": sorted(set(names)),
                               "held_frames_per_scene": 4, "passes": passes},
                    "models": {}, "stages": {}, "modes": {}, "pi_assumptions": PI_ASSUMPTIONS}
    for path in [*model_paths(models), *filter(None, [wide_detector_path(models)])]:
        meta = read_metadata(path)
        result["models"][path.stem] = {"file": path.name, "size_bytes": path.stat().st_size, "macs": meta.macs,
                                        "input": meta.input.shape, "dtype": meta.input.dtype}
    reader_macs = result["models"]["reader"]["macs"]
    modes = {"read": Mode("stills: run(image), every tile a frame needs, no cap", False, SearchSettings()),
             "daemon": Mode(f"video: run(image, frame=n), the search settings of {_shown(config)}", True,
                            daemon_search, _shown(config))}
    for name, mode in modes.items():
        result["modes"][name] = {"description": mode.description, "search": mode.search.model_dump(),
                                 "threads": {}} | ({"config": mode.config} if mode.config else {})
    daemon_pipe = None
    for threads in (1, 2):
        base = Pipeline.from_dir(models, num_threads=threads)
        result["stages"][str(threads)] = _stage_times(base, frames[0], repeat)
        for name, mode in modes.items():
            # One loaded model set, a pipeline per mode over it.
            pipe = Pipeline(base.detector, base.reader, mode.search)
            stats, counts = _time_mode(pipe, frames, mode.video, passes)
            entry = result["modes"][name]
            entry["threads"][str(threads)] = stats
            if threads == 2:  # the counts do not depend on the threads: those of the last timing
                entry |= _counts(counts, reader_macs)
                entry["pi_estimate"] = _pi_estimate(entry["per_frame"]["total_macs"])
            if name == "daemon" and threads == daemon_threads:
                daemon_pipe = pipe
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if daemon_pipe is None:
        daemon_pipe = Pipeline.from_dir(models, num_threads=daemon_threads, search=daemon_search)
    result["relay_latency"] = relay_latency(daemon_pipe, tracking, relay_runs)
    return result


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _labels(folder: Path, limit: int | None = None) -> list[tuple[Path, str]]:
    """``labels.tsv`` rows of a set as (image path, normalised text), in the listed order."""
    rows = []
    for line in (folder / "labels.tsv").read_text().splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) >= 2:
            rows.append((folder / parts[0], _norm(parts[1])))
    return rows[:limit] if limit else rows


def _norm(text: str) -> str:
    return "".join(c for c in str(text).upper() if c.isalnum())


def _wall(argv: list[str], who: str) -> tuple[float, subprocess.CompletedProcess]:
    """Wall time and result of ``argv``; a ``BenchError`` naming ``who`` when it exits non-zero."""
    t = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise BenchError(f"{who} exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return time.perf_counter() - t, proc


def _difference(many: Callable[[], float], one: Callable[[], float], n: int) -> dict:
    """Per-image ms by the difference method: (median wall of ``many`` - median wall of ``one``) / ``n``, each
    timed COMPARE_REPEATS times, interleaved so that a change of load on the machine touches both."""
    walls_many, walls_one = [], []
    for _ in range(COMPARE_REPEATS):
        walls_many.append(many())
        walls_one.append(one())
    w_many, w_one = statistics.median(walls_many), statistics.median(walls_one)
    return {"ms_per_image": round((w_many - w_one) / n * 1000, 1), "wall_s_many": round(w_many, 3),
            "wall_s_one": round(w_one, 3), "walls_s_many": [round(w, 3) for w in walls_many],
            "walls_s_one": [round(w, 3) for w in walls_one]}


def _exact(texts: Sequence[str | None], labels: Sequence[str]) -> float:
    return round(sum(t is not None and _norm(t) == lab for t, lab in zip(texts, labels, strict=True)) / len(labels), 3)


def _ours_best(stdout: str, paths: Sequence[Path]) -> list[str | None]:
    by_image: dict[str, str | None] = {}
    for line in stdout.splitlines():
        try:
            obj = json.loads(line)
            by_image[obj["image"]] = obj["plates"][0]["text"] if obj.get("plates") else None
        except (ValueError, KeyError, TypeError, IndexError):
            continue
    return [by_image.get(str(p)) for p in paths]


def _alpr_best(obj: dict) -> str | None:
    results = obj.get("results") or []
    best = max(results, key=lambda r: r.get("confidence", 0), default=None)
    return None if best is None else best.get("plate")


def _openalpr_cli(paths: list[Path], batch: list[Path]) -> dict:
    """``alpr -c us -j`` over ``batch`` and over its first image; an ``error`` when its CLI takes one image only."""
    argv = ["alpr", "-c", "us", "-j"]
    answers: list[str] = []

    def many() -> float:
        wall, proc = _wall(argv + [str(p) for p in batch], "alpr")
        answers[:] = [line for line in proc.stdout.splitlines() if line.lstrip().startswith("{")]
        if len(answers) != len(batch):
            raise BenchError(f"alpr printed {len(answers)} JSON lines for {len(batch)} images")
        return wall

    def one() -> float:
        return _wall([*argv, str(batch[0])], "alpr")[0]

    out = _difference(many, one, len(paths)) | {"method": "alpr -c us -j, one process per run"}
    texts: list[str | None] = []
    for line in answers[1:]:  # the first answer is that of the repeated first image
        try:
            texts.append(_alpr_best(json.loads(line)))
        except (ValueError, AttributeError):
            texts.append(None)
    out["texts"] = texts
    return out


def _openalpr_binding(paths: list[Path], batch: list[Path]) -> dict:
    """The Python binding in this process: ``recognize_file`` over ``batch`` and over its first image."""
    from openalpr import Alpr  # type: ignore[import-not-found]

    alpr = Alpr("us", str(OPENALPR_CONF), str(OPENALPR_RUNTIME))
    if not alpr.is_loaded():
        raise BenchError(f"the OpenALPR binding did not load ({OPENALPR_CONF}, {OPENALPR_RUNTIME})")
    answers: list[dict] = []
    try:
        def many() -> float:
            t = time.perf_counter()
            answers[:] = [alpr.recognize_file(str(p)) for p in batch]
            return time.perf_counter() - t

        def one() -> float:
            t = time.perf_counter()
            alpr.recognize_file(str(batch[0]))
            return time.perf_counter() - t

        out = _difference(many, one, len(paths)) | {"method": "Python binding, recognize_file, one process"}
    finally:
        alpr.unload()
    out["texts"] = [_alpr_best(a) for a in answers[1:]]
    return out


def _binding_installed() -> bool:
    return importlib.util.find_spec("openalpr") is not None


def compare_openalpr(models: Path, folder: Path) -> dict:
    """ms per image of ``edge read`` and of OpenALPR 2.3 on the first COMPARE_IMAGES images of ``folder``, by the
    difference method: (wall of a process over those images plus the first again - wall over the first alone) /
    COMPARE_IMAGES, so that start-up and model loading cancel out. OpenALPR is measured when its ``alpr`` command
    (or, else, its Python binding) is installed; otherwise its reference figures stand, marked as such."""
    rows = _labels(folder, COMPARE_IMAGES)
    paths = [p for p, _ in rows]
    missing = [p for p in paths if not p.is_file()]
    if len(rows) < COMPARE_IMAGES or missing:
        return {"skipped": f"{folder}: needs its first {COMPARE_IMAGES} labelled images, "
                           f"{len(rows)} listed, {len(missing)} missing"}
    labels = [t for _, t in rows]
    batch = [paths[0], *paths]  # the first image twice: what the one-image run spends, and the 40 after it
    stdout: list[str] = []

    def timed(base: list[str]) -> tuple[Callable[[], float], Callable[[], float]]:
        def many() -> float:
            wall, proc = _wall(base + [str(p) for p in batch], "edge read")
            stdout[:] = [proc.stdout]
            return wall

        def one() -> float:
            return _wall([*base, str(batch[0])], "edge read")[0]
        return many, one

    out: dict = {"set": folder.name, "images": COMPARE_IMAGES, "repeats": COMPARE_REPEATS,
                 "method": f"per image = (median wall of {COMPARE_IMAGES + 1} images - median wall of 1) / "
                           f"{COMPARE_IMAGES}, {COMPARE_REPEATS} runs each"}
    read = [sys.executable, "-m", "edge", "read", "--json", "--models", str(models)]
    try:
        # ``read``'s defaults search as many images at once as the cores hold (``--workers``); one image at a
        # time is measured too, as a single photo's latency and as a machine with one core would see it.
        serial = _difference(*timed([*read, "--workers", "1"]), COMPARE_IMAGES) | {
            "method": "python -m edge read --json --workers 1, one process per run"}
        serial["exact"] = _exact(_ours_best(stdout[0] if stdout else "", paths), labels)
        ours = _difference(*timed(read), COMPARE_IMAGES) | {
            "method": "python -m edge read --json (its defaults: one image per core at once), one process per run"}
    except (BenchError, OSError, subprocess.TimeoutExpired) as exc:
        return {"skipped": f"edge read on {folder} failed: {exc}"}
    ours["exact"] = _exact(_ours_best(stdout[0] if stdout else "", paths), labels)
    out["ours"] = ours
    out["ours_one_at_a_time"] = serial
    alpr: dict[str, Any]
    if shutil.which("alpr") or _binding_installed():
        alpr = {"measured": True}
        try:
            alpr |= _openalpr_cli(paths, batch) if shutil.which("alpr") else _openalpr_binding(paths, batch)
        except (BenchError, ImportError, OSError, subprocess.TimeoutExpired) as cli_error:
            alpr = {"measured": False, "error": str(cli_error)}
            if shutil.which("alpr") and _binding_installed():  # a CLI of one image per run: the binding then
                try:
                    alpr = {"measured": True} | _openalpr_binding(paths, batch)
                except (BenchError, ImportError, OSError) as exc:
                    alpr["error"] += f"; binding: {exc}"
        if alpr.get("measured"):
            texts = alpr.pop("texts", [])
            alpr["exact"] = _exact(texts, labels) if len(texts) == len(labels) else None
    else:
        alpr = {"measured": False}
    if not alpr.get("measured"):
        ref = OPENALPR_DIFFERENCE_REFERENCE
        why = "measuring it failed" if alpr.get("error") else "OpenALPR 2.3 is not installed here"
        alpr |= {"reference": dict(ref), "ms_per_image": (ref["ms_per_image_low"] + ref["ms_per_image_high"]) / 2,
                 "note": f"reference, not measured in this run ({why})"}
    out["openalpr_2_3"] = alpr
    if ours["ms_per_image"] > 0:
        out["ratio_openalpr_over_ours"] = round(alpr["ms_per_image"] / ours["ms_per_image"], 2)
    if serial["ms_per_image"] > 0:
        out["ratio_openalpr_over_ours_one_at_a_time"] = round(alpr["ms_per_image"] / serial["ms_per_image"], 2)
    return out


def _search_flags(settings: SearchSettings) -> str:
    return "".join(f" --{name.replace('_', '-')} {getattr(settings, name)}" for name in SEARCH_FIELDS)


def real_sets(models: Path, config: Path, sets: list[Path], scorer: Path) -> dict:
    """``edge read --json`` on labelled real sets in both modes, scored by the shared scorer, beside OpenALPR's
    reference figures. The daemon mode shows each still as one turn of its tiles (``--frames 0``)."""
    search, threads, _ = daemon_mode(config)
    base = f"{shlex.quote(sys.executable)} -m edge read --json --models {shlex.quote(str(models))}"
    # The configuration's search settings as flags rather than --config: its models are the device's folder.
    daemon = f"{base} --threads {threads}{_search_flags(search)} --frames 0"
    out: dict = {}
    for folder in sets:
        out[folder.name] = {"openalpr_2_3_reference": OPENALPR_REFERENCE.get(folder.name)}
        for key, cmd in (("read", base), ("daemon", daemon)):
            with tempfile.TemporaryDirectory() as tmp:
                res_path = Path(tmp) / "res.json"
                proc = subprocess.run([sys.executable, str(scorer), "--cmd", cmd, "--set", str(folder), "--out",
                                       str(res_path)], cwd=ROOT, capture_output=True, text=True)
                if proc.returncode != 0 or not res_path.is_file():
                    out[folder.name]["error"] = f"{scorer} on {folder} ({key}): {proc.stderr.strip()[-300:]}"
                    break
                r = json.loads(res_path.read_text())[folder.name]
            out[folder.name][key] = {"images": r["images"], "exact": r["exact"], "lenient": r["lenient"],
                                     "det_recall": r["det_recall"], "ms_per_image": r["latency_ms_mean"],
                                     "p95_ms": r["latency_ms_p95"], "errors": r["errors"]}
    return out


def _fmt(v: float | None, p: int = 3) -> str:
    return "-" if v is None else f"{v:.{p}f}"


def print_table(r: dict) -> None:
    """The result of ``run`` (with the comparison and the real sets) as a table on stdout."""
    print(f"machine: {r['machine']['processor']} ({r['machine']['platform']}), python {r['machine']['python']}")
    for kind, m in r["models"].items():
        macs = f"{m['macs'] / 1e6:.1f} MMAC" if m.get("macs") else "-"
        print(f"  {kind:<14} {m['file']:<21} {m['size_bytes'] / 1024:8.1f} KiB  {macs:>12}  "
              f"input {m['input']} {m['dtype']}")
    f = r["frames"]
    print(f"\n{f['count']} frames of 1280x720 ({len(f['scenes'])} scenes, each held {f['held_frames_per_scene']} "
          f"frames), {f['passes']} passes")
    print(f"{'mode':<8}{'threads':>8}{'median ms':>11}{'p95 ms':>9}{'fps':>8}{'mean ms':>9}{'detector':>10}")
    for name, m in r["modes"].items():
        for threads, s in m["threads"].items():
            print(f"{name:<8}{threads:>8}{s['median_ms']:>11.2f}{s['p95_ms']:>9.2f}{_fmt(s['fps'], 1):>8}"
                  f"{s['mean_ms']:>9.2f}{s['detector_ms_mean']:>10.2f}")
    print("  fps = 1000 / median ms; mean ms and the detector's share of it (its passes alone) are means")
    for threads, stages in r["stages"].items():
        print(f"  alone, {threads} thread(s): detector {stages['detector']['median_ms']:.2f} ms "
              f"(p95 {stages['detector']['p95_ms']:.2f}), reader {stages['reader_per_plate']['median_ms']:.2f} ms "
              f"per plate (p95 {stages['reader_per_plate']['p95_ms']:.2f})")
    print(f"\nper frame (mean)  {'det runs':>9}{'reads':>7}{'det GMAC':>10}{'total GMAC':>12}{'stopped':>9}"
          f"{'Pi 4 ms':>9}{'fps':>6}{'Pi 5 ms':>9}{'fps':>6}")
    for name, m in r["modes"].items():
        pf, pi = m["per_frame"], m["pi_estimate"]
        print(f"{name:<18}{pf['detector_runs']:>9.2f}{pf['reader_runs']:>7.2f}{pf['detection_macs'] / 1e9:>10.3f}"
              f"{pf['total_macs'] / 1e9:>12.3f}{pf['stopped_early_share']:>9.2f}"
              f"{pi['pi4']['ms_per_frame']:>9.1f}{_fmt(pi['pi4']['fps'], 1):>6}"
              f"{pi['pi5']['ms_per_frame']:>9.1f}{_fmt(pi['pi5']['fps'], 1):>6}")
    print(f"  daemon mode: {r['modes']['daemon']['config']}: "
          + ", ".join(f"{k} {v}" for k, v in r["modes"]["daemon"]["search"].items()))
    print(f"  Pi figures are estimates, not measurements: {r['pi_assumptions']}")
    print(f"peak RSS of this process (both thread counts loaded): {r['peak_rss_mb']} MB")
    rl = r["relay_latency"]
    if rl.get("plate") is None:
        print(f"relay, first frame to pulse: not measured ({rl.get('note')})")
    else:
        for key, label in (("fps_10", "at 10 fps"), ("back_to_back", "back to back")):
            m = rl[key]
            if not m.get("runs"):
                print(f"relay, first frame to pulse, {label}: no pulse")
                continue
            lat = m["first_frame_to_pulse_ms"]
            print(f"relay, first frame to pulse, {label}: median {lat['median']:.1f} ms, p95 {lat['p95']:.1f} ms "
                  f"({m['runs']} runs, {m['frames_to_pulse']} frames, decision {m['decision_ms']['median']:.2f} ms; "
                  f"{rl['scene']}, daemon mode)")
    _print_comparison(r.get("openalpr_comparison"))
    if r.get("real"):
        print(f"\n{'set':<14}{'':<33}{'exact':>7}{'lenient':>9}{'det@.5':>8}{'ms':>8}{'p95':>8}")
        for name, res in r["real"].items():
            if "error" in res:
                print(f"{name:<14}error: {res['error']}")
                continue
            for who, fig in (("read (ms per image)", res.get("read")),
                             ("daemon, one turn (ms per frame)", res.get("daemon")),
                             ("OpenALPR 2.3 (reference)", res["openalpr_2_3_reference"])):
                if fig:
                    print(f"{name:<14}{who:<33}{_fmt(fig.get('exact')):>7}{_fmt(fig.get('lenient')):>9}"
                          f"{_fmt(fig.get('det_recall')):>8}{_fmt(fig.get('ms_per_image'), 1):>8}"
                          f"{_fmt(fig.get('p95_ms'), 1):>8}")
        print("  OpenALPR 2.3 rows: reference figures on the whole sets, not measured in this run")


def _serial_ratio(c: dict) -> str:
    r = c.get("ratio_openalpr_over_ours_one_at_a_time")
    return f" (one image at a time: {r:.1f}x)" if r else ""


def _print_comparison(c: dict | None) -> None:
    if c is None:
        return
    if "skipped" in c:
        print(f"\nOpenALPR comparison: skipped ({c['skipped']})")
        return
    print(f"\nms per image, {c['images']} images of {c['set']}: {c['method']}")
    o, a = c["ours"], c["openalpr_2_3"]
    print(f"  this model set (edge read)  {o['ms_per_image']:8.1f} ms  exact {_fmt(o['exact'])}  "
          f"(walls {o['wall_s_many']:.2f} s - {o['wall_s_one']:.2f} s; one image per core at once)")
    if "ours_one_at_a_time" in c:
        s = c["ours_one_at_a_time"]
        print(f"    one image at a time      {s['ms_per_image']:8.1f} ms  exact {_fmt(s['exact'])}  "
              f"(walls {s['wall_s_many']:.2f} s - {s['wall_s_one']:.2f} s; --workers 1)")
    if a.get("measured"):
        print(f"  OpenALPR 2.3, measured      {a['ms_per_image']:8.1f} ms  exact {_fmt(a.get('exact'))}  "
              f"(walls {a['wall_s_many']:.2f} s - {a['wall_s_one']:.2f} s; {a['method']})")
        print(f"  OpenALPR / ours: {c['ratio_openalpr_over_ours']:.1f}x{_serial_ratio(c)}")
    else:
        ref = a["reference"]
        print(f"  OpenALPR 2.3: REFERENCE, NOT MEASURED IN THIS RUN: {ref['ms_per_image_low']:.0f}-"
              f"{ref['ms_per_image_high']:.0f} ms per image on the same {ref['images']} images ({ref['source']})"
              + (f"; measuring failed: {a['error']}" if a.get("error") else "; not installed here"))
        print(f"  OpenALPR (reference, {a['ms_per_image']:.0f} ms) / ours: {c['ratio_openalpr_over_ours']:.1f}x"
              f"{_serial_ratio(c)}")


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.bench [--models DIR] [--config FILE] [--quick] [--no-real] [--out FILE] ...``."""
    ap = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=DEFAULT_MODELS, help="model set directory (default: shipped)")
    ap.add_argument("--config", type=Path, default=DEVICE_CONFIG,
                    help="daemon configuration whose detection search settings are the daemon mode "
                         "(default deploy/config.device.yaml; its models folder need not exist here)")
    ap.add_argument("--passes", type=int, default=5, help="timed passes over the benchmark frames (default 5)")
    ap.add_argument("--repeat", type=int, default=50, help="timed runs of the detector and reader alone")
    ap.add_argument("--quick", action="store_true",
                    help="a fast smoke run: one pass, few repeats, no real sets, no OpenALPR comparison")
    ap.add_argument("--out", type=Path, default=Path("bench/results.json"), help="JSON results file")
    ap.add_argument("--real", type=Path, action="append", default=None,
                    help="labelled real set (folder with labels.tsv; repeatable). "
                         "Default: ../shared/data/real/* if present")
    ap.add_argument("--scorer", type=Path, default=SHARED / "eval" / "run_eval.py", help="the real-set scorer")
    ap.add_argument("--no-real", action="store_true", help="skip the real sets and the OpenALPR comparison")
    args = ap.parse_args(argv)
    if args.passes < 1 or args.repeat < 1:
        ap.error("--passes and --repeat must be at least 1")
    passes, repeat, relay_runs = (1, 5, 2) if args.quick else (args.passes, args.repeat, 5)
    try:
        result = run(args.models, args.config, passes, repeat, relay_runs)
        if args.quick or args.no_real:
            result["openalpr_comparison"] = {"skipped": "--quick" if args.quick else "--no-real"}
        elif not (OPENALPR_SET / "labels.tsv").is_file():
            result["openalpr_comparison"] = {"skipped": f"{OPENALPR_SET} not found"}
        else:
            result["openalpr_comparison"] = compare_openalpr(args.models, OPENALPR_SET)
        sets = args.real if args.real is not None else sorted((SHARED / "data" / "real").glob("*/"))
        if not (args.quick or args.no_real) and sets and args.scorer.is_file():
            result["real"] = real_sets(args.models, args.config, sets, args.scorer)
    except (BenchError, ModelError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    chart = _chart(result, args.out.with_suffix(".png"))
    print(f"wrote {args.out}" + (f" and {chart}" if chart else ""))
    return 0


def _chart(r: dict, path: Path) -> Path | None:
    """Bars: ms per 720p frame per mode and thread count; ms per image and exact match, ours vs OpenALPR."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the device has no matplotlib: the JSON is the result
        return None
    comp = r.get("openalpr_comparison") or {}
    comp = comp if "ours" in comp else {}
    real = {k: v for k, v in r.get("real", {}).items() if "read" in v}
    panels = 1 + bool(comp) + bool(real)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), squeeze=False)
    ax = axes[0][0]
    labels, values = [], []
    for name, m in r["modes"].items():
        for threads, s in m["threads"].items():
            labels.append(f"{name}\n{threads} thr")
            values.append(s["median_ms"])
    ax.bar_label(ax.bar(labels, values), fmt="%.1f", fontsize=8)
    ax.set_title("ms per 1280x720 frame (median)")
    i = 1
    if comp:
        ax = axes[0][i]
        i += 1
        a = comp["openalpr_2_3"]
        who = "OpenALPR 2.3" + ("" if a.get("measured") else "\n(reference,\nnot measured)")
        serial = comp.get("ours_one_at_a_time", {}).get("ms_per_image")
        names = ["this model set", *(["one image\nat a time"] if serial else []), who]
        values = [comp["ours"]["ms_per_image"], *([serial] if serial else []), a["ms_per_image"]]
        bars = ax.bar(names, values, color=["C0", *(["C2"] if serial else []),
                                            "C1" if a.get("measured") else "lightgrey"])
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
        ax.set_title(f"ms per image, {comp['images']} {comp['set']} images\n(wall of 41 - wall of 1) / 40")
    if real:
        ax = axes[0][i]
        names = list(real)
        x = np.arange(len(names))
        for k, (key, label) in enumerate((("read", "read"), ("daemon", "daemon, one turn"))):
            vals = [(real[n].get(key) or {}).get("exact") or 0 for n in names]
            ax.bar_label(ax.bar(x - 0.27 + k * 0.27, vals, 0.27, label=label), fmt="%.2f", fontsize=7)
        ref = [(real[n]["openalpr_2_3_reference"] or {}).get("exact") or 0 for n in names]
        ax.bar_label(ax.bar(x + 0.27, ref, 0.27, label="OpenALPR 2.3 (reference)", color="lightgrey"),
                     fmt="%.2f", fontsize=7)
        ax.set_xticks(x, names)
        ax.set_ylim(0, 1.15)
        ax.set_title("exact match, real sets")
        ax.legend(fontsize=7, loc="upper center", ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
