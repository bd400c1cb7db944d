"""Command line of the edge: ``python -m edge read [--json] [--models DIR] IMAGE...``,
``python -m edge run --config FILE`` (the daemon), ``python -m edge check-config FILE``,
``python -m edge health --config FILE``, ``python -m edge formats [--models DIR]`` and
``python -m edge collect pack COLLECT_DIR OUT_DIR`` (see ``edge.collect.pack``).

Exit codes of ``read``: 0 when at least one image was read (plates or not), 1
when no image could be read, 2 for a usage error, 3 when the models cannot be
loaded. ``run`` and ``check-config``: see ``edge.daemon.ExitCode`` (2: the
configuration is invalid, and the message names the key). ``health``: 0 when
every check passed, 1 when one failed, 2 for an invalid configuration.
"""
from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import queue
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from edge.formats import FormatError, FormatSet, PlateFormat, pick_words
from edge.images import MAX_IMAGE_PIXELS, ImageError, decode_image
from edge.model import ACCELERATORS, DEFAULT_MODELS, ModelError, read_metadata, reader_formats
from edge.pipeline import Pipeline, read_as_video
from edge.search import SEARCH_FIELDS, SearchSettings

log = logging.getLogger("edge.read")


def _decode_timed(path: str) -> tuple[np.ndarray | ImageError, float]:
    start = time.perf_counter()
    try:
        image: np.ndarray | ImageError = decode_image(path)
    except ImageError as exc:
        image = exc
    return image, (time.perf_counter() - start) * 1000


#: ``read --workers 0`` (the default) searches this many images at once at most, one per core.
MAX_AUTO_WORKERS = 4


def plan_workers(images: int, workers: int, threads: int | None, accelerator: str,
                 cores: int | None = None) -> tuple[int, int]:
    """How many images ``read`` searches at once, and each search's interpreter threads.

    ``workers`` 0 (auto): as many as the cores hold at ``threads`` each (one thread each when ``threads`` is
    None), at most ``MAX_AUTO_WORKERS`` and the number of images; a Coral serves one interpreter at a time, so
    with ``edgetpu`` one. ``threads`` None: the cores each worker has, or 2 for a single worker (the daemon's
    default).
    """
    cores = cores or os.cpu_count() or 1
    if workers <= 0:
        fit = cores // (threads or 1)
        workers = 1 if accelerator == "edgetpu" else max(1, min(images, fit, MAX_AUTO_WORKERS))
    workers = max(1, min(workers, images))
    if threads is None:
        threads = 2 if workers == 1 else max(1, cores // workers)
    return workers, threads


def read_images(pipelines: Sequence[Pipeline], paths: list[str], frames: int = 1) -> Iterator[dict]:
    """Yield one contract object per image path, in the order given (see the README, 'Reading plates').

    An image that cannot be decoded, or is refused before decoding (see
    ``edge.images``), gets an ``error`` object of type ``unreadable``, one whose
    search raised (a bug, a runtime's error) one of type ``failed``, and the
    batch goes on.
    ``frames`` != 1: see ``read_as_video``; ``latency_ms`` and ``search`` (what the search spent) are then
    per frame.

    Each pipeline searches one image at a time, so several pipelines (each with its own interpreters) search
    as many images at once, on their own threads: the interpreters and OpenCV leave Python's lock while they
    work, and one search's Python leaves a core idle that another's passes fill. The next images are decoded
    on one more thread meanwhile. ``latency_ms`` is an image's own decoding and search.
    """
    free: queue.SimpleQueue[Pipeline] = queue.SimpleQueue()
    for p in pipelines:
        free.put(p)

    def search(path: str, decoded: Future) -> dict:
        try:
            return searched(path, decoded)
        except Exception as exc:  # a bug or a runtime's error on one image: report it there, read the rest
            log.exception("%s: search failed", path)
            return {"image": path, "plates": [], "error": {
                "type": "failed", "message": f"{path}: search failed ({type(exc).__name__}: {exc})"}}

    def searched(path: str, decoded: Future) -> dict:
        image, decode_ms = decoded.result()
        if isinstance(image, ImageError):
            return {"image": path, "plates": [], "error": {"type": "unreadable", "message": str(image)},
                    "latency_ms": round(decode_ms, 2)}
        pipeline = free.get()
        try:
            start = time.perf_counter()
            if frames == 1:
                result = pipeline.run(image)
                reads, counts = result.reads, result.counts.as_json()
                ms = decode_ms + (time.perf_counter() - start) * 1000
            else:
                reads, shown, total = read_as_video(pipeline, image, frames)
                counts = {k: round(v / shown, 2) for k, v in total.as_json().items() if k != "stopped_early"}
                ms = (decode_ms + (time.perf_counter() - start) * 1000) / shown
        finally:
            free.put(pipeline)
        return {"image": path, "plates": [r.as_json() for r in reads], "latency_ms": round(ms, 2), "search": counts}

    # At most this many images decoded or in search at once: memory stays bounded on a folder of thousands.
    window = 2 * len(pipelines) + 1
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as decoder, \
            ThreadPoolExecutor(max_workers=len(pipelines), thread_name_prefix="search") as searcher:
        pending: collections.deque[Future] = collections.deque()
        for path in paths:
            pending.append(searcher.submit(search, path, decoder.submit(_decode_timed, path)))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def cmd_read(args: argparse.Namespace) -> int:
    # The model loader warns (Edge TPU fallback) through logging: one plain line on stderr.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        extra = FormatSet.load(args.countries) if args.countries else None
    except FormatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    base, models, accelerator = SearchSettings(), DEFAULT_MODELS, "cpu"
    threads: int | None = None
    if args.config is not None:
        cfg = _load_config(args.config)
        if cfg is None:
            return 2
        det = cfg.detection
        base, models, threads, accelerator = det.search_settings(), det.models or models, det.threads, det.accelerator
        if det.countries is not None and extra is None:
            try:
                extra = FormatSet.load(det.countries)
            except FormatError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
    # Flags given on the command line override the configuration.
    models = args.models or models
    threads = args.threads or threads
    accelerator = args.accelerator or accelerator
    try:
        search = _search_settings(args, base)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.workers < 0:
        print(f"error: --workers {args.workers}: give 1 or more, or 0 for one per core", file=sys.stderr)
        return 2
    workers, threads = plan_workers(len(args.images), args.workers, threads, accelerator)
    try:
        pipelines = [Pipeline.from_dir(models, threads, accelerator, search=search, extra_formats=extra)
                     for _ in range(workers)]
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    n_ok = n_plates = 0
    errors: collections.Counter[str] = collections.Counter()
    latencies = []
    start = time.perf_counter()
    for obj in read_images(pipelines, args.images, args.frames):
        if "error" in obj:
            errors[obj["error"]["type"]] += 1
            print(f"warning: {obj['error']['message']}", file=sys.stderr)
        else:
            n_ok += 1
            n_plates += bool(obj["plates"])
            latencies.append(obj["latency_ms"])
        if args.json:
            print(json.dumps(obj), flush=True)
        else:
            texts = ", ".join(f"{p['display']} ({p['confidence']:.2f})" for p in obj["plates"]) or "-"
            print(f"{obj['image']}: {texts}  [{obj['latency_ms']:.1f} ms]", flush=True)
    wall_ms = (time.perf_counter() - start) * 1000
    failed = f"{errors['failed']} failed, " if errors["failed"] else ""
    median = f"{statistics.median(latencies):.1f} ms median per image" if latencies else "no timing"
    print(f"read {n_ok} of {len(args.images)} images, {n_plates} with a plate, {errors['unreadable']} unreadable, "
          f"{failed}{median}; "
          f"{wall_ms / len(args.images):.1f} ms per image over the batch ({workers} at once, {threads} "
          f"interpreter thread{'s' if threads > 1 else ''} each)", file=sys.stderr)
    return 0 if n_ok else 1


def _load_config(path: Path):
    """The validated config, or None after printing why not (the daemon's extra may be missing too)."""
    try:
        from edge.config import ConfigError, load_config
    except ImportError as exc:
        print(f"error: the daemon needs its extra dependencies: pip install -e '.[daemon]' ({exc})",
              file=sys.stderr)
        return None
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"error: invalid configuration: {exc}", file=sys.stderr)
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load_config(args.config)
    if cfg is None:
        return 2
    from edge.config import resolved_yaml

    print(resolved_yaml(cfg), end="")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load_config(args.config)
    if cfg is None:
        return 2
    from edge.daemon import run

    return int(run(cfg, args.config))


def cmd_health(args: argparse.Namespace) -> int:
    cfg = _load_config(args.config)
    if cfg is None:
        return 2
    from edge.health import run_checks

    logging.basicConfig(stream=sys.stdout, level=logging.WARNING, format="%(levelname)s: %(message)s")
    results = run_checks(cfg, timeout_s=args.timeout, camera=args.camera, emit=lambda line: print(line, flush=True))
    failed = [r.name for r in results if not r.ok]
    print(f"health: {len(results) - len(failed)} of {len(results)} checks passed"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


def cmd_collect_pack(args: argparse.Namespace) -> int:
    """Pack a collection folder as a labelled folder (``edge.collect.pack``)."""
    from edge.collect import PackError, pack

    skipped = 0

    def warn(line: str) -> None:
        nonlocal skipped
        skipped += 1
        print(f"warning: {line}", file=sys.stderr)

    try:
        n = pack(args.collect_dir, args.out_dir, warn)
    except PackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"packed {n} plates into {args.out_dir} (labels.tsv, confidence.tsv)"
          + (f"; {skipped} skipped" if skipped else ""), file=sys.stderr)
    return 0 if n else 1


def _describe_group(pattern: str) -> str:
    """A group's pattern, with a list of words (``[Z][G]|[S][T]|...``, a country file's ``pick``) shortened to its
    first words and their count: ``(BJ|CK|DA|... 32 listed)``."""
    words = pick_words(pattern)
    if words is None:
        return pattern
    return "(" + "|".join(words) + ")" if len(words) <= 4 else f"({'|'.join(words[:3])}|... {len(words)} listed)"


def describe_format(fmt: PlateFormat) -> str:
    """A format as ``name PATTERN`` with its groups and display separators, e.g. ``gr GGG-NDDD``."""
    shown = _describe_group(fmt.groups[0])
    for sep, g in zip(fmt.separators, fmt.groups[1:], strict=False):
        shown += (sep if sep.strip() else " ") + _describe_group(g)
    return f"{fmt.name} {shown}"


def cmd_formats(args: argparse.Namespace) -> int:
    """One line per country of the model set: code, name, formats."""
    try:
        meta = read_metadata(Path(args.models) / "reader.tflite")
        formats = reader_formats(meta, Path(args.models) / "reader.json")
        if args.countries:
            formats = formats.merged(FormatSet.load(args.countries))
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except FormatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    by_country: dict[str, list[PlateFormat]] = {}
    for fmt in formats.formats:  # most drawn first
        by_country.setdefault(fmt.country, []).append(fmt)
    for c in sorted(formats.countries, key=lambda c: c["code"]):
        fmts = "; ".join(describe_format(f) for f in by_country.get(c["code"], []))
        print(f"{c['code']}  {c['name']}: {fmts}")
    print(f"{len(formats.countries)} countries, {len(formats.formats)} formats (reader {meta.version}); pattern "
          "letters: L A-Z, D 0-9, N 1-9, X A-Z/0-9, others per country file", file=sys.stderr)
    if formats.prior is not None:
        print(f"format prior, learnt from {formats.prior.plates} plates ({formats.prior.source or 'no source'}): "
              + ", ".join(f"{name} {share * 100:.1f} %" for name, share in formats.prior.largest(8))
              + f", no format {formats.prior.none * 100:.1f} %", file=sys.stderr)
    return 0


def _add_search_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per search setting (``edge.search``), with its description and default from there."""
    for name, field in SearchSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        # --max-runs: the flag's name before the settings had one owner.
        aliases = ["--max-runs"] if name == "max_detector_runs" else []
        kind: Callable[[str], Any] = int if field.annotation is int else float
        parser.add_argument(flag, *aliases, dest=name, type=kind, default=None, metavar="N",
                            help=f"{field.description} (default {field.default}, or the --config file's)")


def _search_settings(args: argparse.Namespace, base: SearchSettings) -> SearchSettings:
    """``base`` with the search flags given on the command line; ValueError names the flag."""
    given = {name: getattr(args, name) for name in SEARCH_FIELDS if getattr(args, name, None) is not None}
    try:
        return SearchSettings(**{**base.model_dump(), **given})
    except ValidationError as exc:
        where = ", ".join("--" + str(e["loc"][0]).replace("_", "-") if e["loc"] else "flags" for e in exc.errors())
        msg = "; ".join(e["msg"] for e in exc.errors())
        raise ValueError(f"{where}: {msg}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m edge",
        description="Edge ANPR: find and read number plates with int8 TFLite models.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    rd = sub.add_parser(
        "read",
        help="read the plates in image files",
        description="Read plates in image files. With --json, prints one JSON object per image per line: "
        '{"image", "plates": [{"text", "confidence", "box": [x1,y1,x2,y2], "display", "format", "country", '
        '"detector_score"}], "latency_ms", "search": {"detector_runs", "reader_runs", "macs", "stopped_early"}}; '
        'plates best first; an unreadable image gets an "error" object and the command goes on: a missing or '
        f"empty file, one that is not JPEG, PNG, BMP, WebP, TIFF or PNM, or one over {MAX_IMAGE_PIXELS / 1e6:g} "
        'Mpx (refused from its header, before decoding); so does an image whose search fails ("type": "failed", '
        "with the error, its traceback on stderr). A summary goes to stderr.",
    )
    rd.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, BMP, WebP, TIFF, PNM)")
    rd.add_argument("--json", action="store_true", help="one JSON object per image (the read contract)")
    rd.add_argument("--models", type=Path, default=None,
                    help="directory with detector.tflite, reader.tflite and their .json metadata "
                         "(default: the --config file's, else the shipped models)")
    rd.add_argument("--threads", type=int, default=None,
                    help="TFLite interpreter threads of each image's search (default: the --config file's; else "
                         "the cores each of the --workers has, or 2 for one worker)")
    rd.add_argument("--workers", type=int, default=0, metavar="N",
                    help="images searched at once, each by its own copy of the models (more memory, more images "
                         "a second; results still come in the order given). Default 0: one per core, at most "
                         f"{MAX_AUTO_WORKERS} and as many as the images given; with --accelerator edgetpu, one")
    _add_search_flags(rd)
    rd.add_argument("--config", type=Path, default=None, metavar="FILE",
                    help="take the detection section of this daemon configuration (its search settings, models, "
                         "countries, threads and accelerator) instead of the defaults: reads stills as that "
                         "camera's daemon would search its frames; flags given here override it")
    rd.add_argument("--frames", type=int, default=1, metavar="K",
                    help="show each image K times as consecutive camera frames and keep each plate's surest read "
                         "(0: one full turn of the tiles; latency_ms is then per frame; default 1)")
    rd.add_argument("--countries", type=Path, default=None, metavar="DIR",
                    help="folder of your own country files (*.yaml): their formats are added to those the reader "
                         "carries (see the README, 'Plate formats')")
    rd.add_argument("--accelerator", choices=ACCELERATORS, default=None,
                    help="edgetpu: run the NAME_edgetpu.tflite variants on a Coral through libedgetpu.so.1 "
                    "(the CPU models, after one warning, when either is missing); default: the --config file's, "
                    "else cpu")
    rd.set_defaults(func=cmd_read)
    fm = sub.add_parser(
        "formats",
        help="list the plate formats of a model set, one line per country",
        description="Print one line per country whose formats the reader carries: its ISO 3166-1 code, its name "
        "and its formats (name and pattern, groups shown with their display separators). Reads that fit one of "
        "these are decoded by it; others stay as read.",
        epilog="exit codes: 0 listed, 2 a country file is invalid, 3 the model set cannot be read",
    )
    fm.add_argument("--models", type=Path, default=DEFAULT_MODELS, help="model set directory (default: shipped)")
    fm.add_argument("--countries", type=Path, default=None, metavar="DIR",
                    help="also list the formats of your own country files in DIR, as read --countries adds them")
    fm.set_defaults(func=cmd_formats)
    exit_codes = ("exit codes: 0 stopped (signal, or a file source ended with every event delivered), 1 unexpected "
                  "error, 2 invalid configuration, 3 models cannot be loaded, 4 source unusable at start, "
                  "5 spool cannot be opened/written, 6 a file source ended with events still spooled")
    rn = sub.add_parser(
        "run",
        help="run the daemon: camera -> plates -> vehicles -> MQTT events",
        description="Run the edge daemon with a YAML configuration (see deploy/config.example.yaml). "
        "Stops cleanly on SIGTERM/SIGINT; a file source without loop stops it at its end.",
        epilog=exit_codes,
    )
    rn.add_argument("--config", type=Path, required=True, metavar="FILE", help="YAML configuration file")
    rn.set_defaults(func=cmd_run)
    cc = sub.add_parser(
        "check-config",
        help="validate a configuration file and print it resolved",
        description="Validate a YAML configuration and print it with every default filled in (secrets masked). "
        "Exit 0 when valid, 2 with one line per problem (naming the key) when not.",
    )
    cc.add_argument("config", type=Path, metavar="FILE", help="YAML configuration file")
    cc.set_defaults(func=cmd_check_config)
    hc = sub.add_parser(
        "health",
        help="check that this device can run the daemon with a configuration",
        description="Check, one line each: the model set loads and verifies on the configured accelerator, a "
        "synthetic test frame reads through the pipeline, the spool is writable, the broker accepts the "
        "configured credentials/TLS; with --camera also that the camera delivers a frame.",
        epilog="exit codes: 0 every check passed, 1 a check failed, 2 invalid configuration",
    )
    hc.add_argument("--config", type=Path, required=True, metavar="FILE", help="YAML configuration file")
    hc.add_argument("--timeout", type=float, default=10.0, metavar="S",
                    help="seconds to wait for the broker (and the camera) (default 10)")
    hc.add_argument("--camera", action="store_true",
                    help="also read one frame from the camera (stop the daemon first: it holds the camera)")
    hc.set_defaults(func=cmd_health)
    co = sub.add_parser(
        "collect",
        help="what collection (collect.enabled) saved on this device: pack it for review and fine-tuning",
        description="Commands on a collection folder (collect.folder; see the README, 'Collecting plates').",
    )
    co_sub = co.add_subparsers(dest="collect_command", required=True)
    pk = co_sub.add_parser(
        "pack",
        help="write a collection folder as a labelled folder (labels.tsv, as the shared real sets)",
        description="Write OUT_DIR as a labelled folder of the vehicles in COLLECT_DIR: one image per vehicle "
        "(<id>.jpg: the frame region when frames were kept, else the plate crop) and its crop (crops/<id>.jpg); "
        "labels.tsv with a header and the columns file, text (the vehicle's voted read), and x1 y1 x2 y2 (the "
        "plate's box in the region) when the frame region was kept; rows lowest confidence first. "
        "confidence.tsv, in the same order, gives each file its confidence, crop, best single read and its "
        "confidence, camera, time (UTC), event id, format and country. A vehicle whose sidecar or image "
        "cannot be used is reported, naming the file, and skipped. OUT_DIR must not hold a labels.tsv yet: "
        "a reviewed folder is never overwritten.",
        epilog="exit codes: 0 packed, 1 nothing to pack, 2 COLLECT_DIR is no folder or OUT_DIR cannot be written "
        "or already holds a labels.tsv",
    )
    pk.add_argument("collect_dir", type=Path, metavar="COLLECT_DIR", help="the collection folder (collect.folder)")
    pk.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="the labelled folder to write (new or empty)")
    pk.set_defaults(func=cmd_collect_pack)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
