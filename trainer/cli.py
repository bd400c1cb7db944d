"""Trainer command line: one verb per job.

  python -m trainer synth data    --kind reader|detector --n N --out FILE.npz
  python -m trainer synth preview --kind plates|scenes --out grid.png
  python -m trainer synth scenes  --n 6 --out demo/
  python -m trainer synth clip    --out demo/clip.mp4
  python -m trainer train         --kind reader|detector --data FILE.npz --run DIR
  python -m trainer export        --kind reader|detector --run DIR --data FILE.npz --out DIR [--install edge/models]
  python -m trainer widen         MODELS --data FILE.npz
  python -m trainer evaluate      --models DIR [--models DIR ...] [--set FOLDER ...] [--synthetic N] --out report.json
  python -m trainer review        FOLDER [--port N] [--host 127.0.0.1] [--no-open]
  python -m trainer finetune      --data FOLDER [--data FOLDER ...] --out DIR [--models DIR] [--minutes N]

TensorFlow is imported only by the verbs that need it (train, export, widen, finetune). `train` resumes a stopped
run when rerun with the same --run, `finetune` when rerun with the same --out; their --help has the details.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

#: What TensorFlow writes to stderr while it starts on a machine with no GPU to use: its C++ logging's
#: notes (INFO lines, the line about logging before initialisation), the CPU-feature note and the
#: failed CUDA start (``cuInit``) with its kin. Warnings and errors other than these still get through.
_TF_START_NOISE = re.compile(
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"
    r"|^I\d{4} [\d:.]+ +\d+ \S+:\d+\] "
    r"|^To enable the following instructions: .* in other operations, rebuild TensorFlow"
    r"|^[EW]\d{4} .*(failed call to cuInit|Could not find cuda drivers|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|TF-TRT Warning: Could not find TensorRT|computation_placer\.cc.*already registered)"
)


def gpu_wanted() -> bool:
    """Whether a CUDA GPU may be used: CUDA_VISIBLE_DEVICES names one or, unset, an NVIDIA driver is loaded."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return visible.strip() not in ("", "-1")
    return Path("/proc/driver/nvidia/version").exists()


def drop_tf_start_noise(text: str) -> str:
    """``text`` without the lines of TensorFlow's start-up noise (``_TF_START_NOISE``)."""
    return "".join(line for line in text.splitlines(keepends=True) if not _TF_START_NOISE.search(line.rstrip("\n")))


@contextlib.contextmanager
def _stderr_filtered() -> Iterator[None]:
    """Pass what is written to file descriptor 2 (C++ libraries included) through ``drop_tf_start_noise``.

    Lines are forwarded as they come, so a crash inside still shows what led to it.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()

    def forward() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                kept = drop_tf_start_noise(line.decode(errors="replace"))
                if kept:
                    os.write(saved, kept.encode())

    reader = threading.Thread(target=forward, daemon=True)
    reader.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the reader drains it and stops
        reader.join(timeout=5)
        os.close(saved)


def start_tensorflow_quietly() -> None:
    """Import Keras (TensorFlow under it) and find the devices, without TensorFlow's start-up noise.

    Only where no GPU is wanted (``gpu_wanted``): there a failed CUDA start is expected, and its lines are
    dropped; with a GPU in play everything TensorFlow prints gets through, as it may be the reason the GPU
    goes unused. Must run before anything imports TensorFlow.
    """
    if gpu_wanted() or "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # INFO lines once TensorFlow's logging is set up
    with _stderr_filtered():
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices()  # the CUDA start (cuInit) happens here, inside the filter


def _use_countries(args: argparse.Namespace) -> None:
    """Draw from the shipped country files plus the user's folders (``--countries``), validated up front."""
    from edge.formats import COUNTRIES_DIR, load_countries
    from trainer.synth.text import use_countries

    folders = [COUNTRIES_DIR, *getattr(args, "countries", [])]
    load_countries(*folders)  # a bad file stops here, naming the file and the key
    use_countries(*folders)


def _synth(args: argparse.Namespace) -> int:
    _use_countries(args)
    if args.what == "preview":
        import numpy as np

        from trainer.synth import preview_grid

        preview_grid(np.random.default_rng(args.seed), args.out, args.kind, args.n, country=args.country)
        print(f"wrote {args.out}")
        return 0
    if args.what == "scenes":
        return _write_scenes(args)
    if args.what == "clip":
        import numpy as np

        from trainer.synth.clip import make_clip, write_clip

        frames, truth = make_clip(np.random.default_rng(args.seed), args.vehicles, args.width, args.height)
        write_clip(args.out, frames, truth, args.fps)
        print(f"wrote {len(frames)} frames to {args.out}: " + ", ".join(v["text"] for v in truth))
        return 0
    from trainer.data import generate, save_set

    photos: tuple[str, ...] = ()
    if args.backgrounds is not None:
        from trainer.synth.scene import list_backgrounds

        photos = list_backgrounds(args.backgrounds)
        print(f"{len(photos)} background pictures from {args.backgrounds}")
    data = generate(args.kind, args.n, args.seed, workers=args.workers, texts=args.texts, photos=photos)
    from trainer.synth.text import catalogue

    save_set(args.out, data, {"kind": args.kind, "seed": args.seed, "texts": args.texts, "generator": "trainer.synth",
                              "formats": catalogue().format_set.to_meta(),
                              "backgrounds": str(args.backgrounds) if args.backgrounds else None,
                              "background_count": len(photos)})
    print(f"wrote {len(data['x'])} {args.kind} samples to {args.out}")
    return 0


def _write_scenes(args: argparse.Namespace) -> int:
    import cv2
    import numpy as np

    from trainer.synth import make_scene

    args.out.mkdir(parents=True, exist_ok=True)
    lines = ["file\ttext\tx1\ty1\tx2\ty2"]
    for i in range(args.n):
        rng = np.random.default_rng((args.seed, i))
        scene = make_scene(rng, width=args.width, height=args.height, max_plates=1)
        name = f"scene_{i:02d}.jpg"
        cv2.imwrite(str(args.out / name), scene.image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        for p in scene.plates:
            x1, y1 = p.quad.min(axis=0)
            x2, y2 = p.quad.max(axis=0)
            lines.append(f"{name}\t{p.text}\t{x1:.0f}\t{y1:.0f}\t{x2:.0f}\t{y2:.0f}")
    (args.out / "labels.tsv").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.n} scenes and labels.tsv to {args.out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    start_tensorflow_quietly()
    from trainer.train import train

    info = train(args.kind, args.data, args.run, epochs=args.epochs, batch=args.batch, minutes=args.minutes,
                 lr=args.lr, threads=args.threads, seed=args.seed, verbose=args.verbose, init=args.init,
                 transplant=args.transplant, fine=args.fine_channels, max_steps=args.max_steps, fresh=args.fresh)
    print(json.dumps(info, indent=2))
    return 0


def _export(args: argparse.Namespace) -> int:
    start_tensorflow_quietly()
    from trainer.export import export, install

    report = export(args.kind, args.run, args.data, args.out, n_rep=args.calibration, countries=args.countries)
    (args.out / f"{args.kind}_export.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    if args.install:
        install(args.out, args.install)
        print(f"installed int8 models into {args.install}")
    return 0


def _widen(args: argparse.Namespace) -> int:
    start_tensorflow_quietly()
    from edge.model import ModelError
    from trainer.data import DETECTOR_INPUT, load_set
    from trainer.export import widen

    x = load_set(args.data)["x"]
    if x.ndim != 4 or tuple(x.shape[1:3]) != DETECTOR_INPUT:
        raise SystemExit(f"{args.data}: not a detector set (its images are {list(x.shape[1:])}, the detector's "
                         f"input is {list(DETECTOR_INPUT)}): make one with `synth data --kind detector`")
    try:
        report = widen(args.models, x[: args.check])
    except (ModelError, ValueError) as exc:  # ValueError: a detector already as wide as a wide one
        raise SystemExit(f"error: {exc}") from None
    print(json.dumps(report, indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from edge.pipeline import Pipeline
    from trainer import evaluate as ev

    report: dict = {}
    for models in args.models:
        pipe = Pipeline.from_dir(models, num_threads=args.threads)
        name = str(models)
        res: dict = {}
        for folder in args.set:
            res[folder.name] = ev.evaluate_folder(pipe, folder, args.limit)
        if args.synthetic:
            res["synthetic_plates"] = ev.evaluate_synthetic_reader(pipe, args.synthetic, args.seed)
            res["synthetic_scenes"] = ev.evaluate_synthetic_scenes(pipe, max(1, args.synthetic // 4), args.seed)
        report[name] = res
    print(ev.summary_table(report))
    if args.out:
        from trainer.report import write_pictures

        args.out.parent.mkdir(parents=True, exist_ok=True)
        pictures = write_pictures(report, args.out)
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}" + "".join(f"\nwrote {p}" for p in pictures))
    else:
        for res in report.values():
            for r in res.values():
                r.pop("gallery", None)
    return 0


def _review(args: argparse.Namespace) -> int:
    from trainer.review import serve

    return serve(args.folder, host=args.host, port=args.port, open_browser=not args.no_open)


class _Help(argparse.RawDescriptionHelpFormatter):
    """Help that shows each option's default, unless its text already says it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        nothing = default is None or default is False or default is argparse.SUPPRESS or default == []
        if "default" in text or action.required or nothing or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    """The trainer's argument parser: one sub-command per verb, every option with its help and default."""
    p = argparse.ArgumentParser(prog="python -m trainer", description=__doc__, formatter_class=_Help)
    sub = p.add_subparsers(dest="verb", required=True)

    sy = sub.add_parser("synth", help="make synthetic training sets or preview grids", formatter_class=_Help)
    sy.add_argument("--countries", type=Path, action="append", default=[], metavar="DIR",
                    help="folder of your own country files (*.yaml), drawn besides the shipped countries/ (a file "
                         "replaces the shipped country of the same code); repeatable (default: the shipped ones only)")
    sy_sub = sy.add_subparsers(dest="what", required=True)
    data = sy_sub.add_parser("data", help="write a training set (.npz) for one network", formatter_class=_Help)
    data.add_argument("--kind", choices=["reader", "detector"], required=True, help="the network the set is for")
    data.add_argument("--n", type=int, required=True, help="number of samples")
    data.add_argument("--seed", type=int, default=0,
                      help="sample i uses seed (SEED, i): held-out sets take another SEED")
    data.add_argument("--workers", type=int, default=2, help="worker processes")
    data.add_argument("--texts", type=int, default=0,
                      help="reader: draw plates from a fixed pool of N texts (a quick learnability check); "
                           "0: all random")
    data.add_argument("--backgrounds", type=Path, default=None, metavar="DIR",
                      help="optional folder of your own background pictures (streets, car parks; no readable plates "
                           "in them): used for 70 %% of backgrounds instead of procedural ones (default: procedural "
                           "only)")
    data.add_argument("--out", type=Path, required=True, help="the .npz to write (and OUT.json describing it)")
    prev = sy_sub.add_parser("preview", help="write a PNG grid of synthetic samples to look at", formatter_class=_Help)
    prev.add_argument("--kind", choices=["plates", "scenes"], default="plates", help="what to show")
    prev.add_argument("--country", default=None, metavar="CODE",
                      help="plates of one country only (ISO 3166-1 alpha-2 code of a country file), each format "
                           "in turn (default: all countries)")
    prev.add_argument("--n", type=int, default=32, help="number of samples in the grid")
    prev.add_argument("--seed", type=int, default=0, help="seed of the samples")
    prev.add_argument("--out", type=Path, default=Path("preview.png"), help="the PNG to write")
    sc = sy_sub.add_parser("scenes", help="write synthetic camera frames as JPEG with a labels.tsv (demo, tests)",
                           formatter_class=_Help)
    sc.add_argument("--n", type=int, default=6, help="number of frames")
    sc.add_argument("--seed", type=int, default=2026, help="frame i uses seed (SEED, i)")
    sc.add_argument("--width", type=int, default=1280, help="frame width in pixels")
    sc.add_argument("--height", type=int, default=720, help="frame height in pixels")
    sc.add_argument("--out", type=Path, required=True, help="folder to write the frames and labels.tsv into")
    cl = sy_sub.add_parser("clip", help="write a synthetic camera clip (MPEG-4) with known plates, for demos",
                           formatter_class=_Help)
    cl.add_argument("--vehicles", type=int, default=3, help="vehicles that drive through, one after another")
    cl.add_argument("--seed", type=int, default=7, help="seed of the clip")
    cl.add_argument("--width", type=int, default=1280, help="frame width in pixels")
    cl.add_argument("--height", type=int, default=720, help="frame height in pixels")
    cl.add_argument("--fps", type=float, default=8.0, help="frames per second")
    cl.add_argument("--out", type=Path, required=True, help="the .mp4 to write")
    sy.set_defaults(func=_synth)

    tr = sub.add_parser(
        "train", formatter_class=_Help,
        help="train one network; rerun the same command to resume",
        description=textwrap.fill(
            "Train one network in a run folder. Each epoch's end and a stop (--minutes, --max-steps) write "
            "RUN/checkpoint.npz: weights, optimizer state (the learning-rate schedule follows its step count), "
            "epoch and step. Rerunning with the same --run resumes there, with the run's own --batch, --lr, "
            "--seed, --init and --transplant (giving other values is refused); a finished run says so and "
            "exits, unless --epochs asks for more. --fresh starts over.", 78, break_on_hyphens=False))
    tr.add_argument("--kind", choices=["reader", "detector"], required=True, help="the network to train")
    tr.add_argument("--data", type=Path, required=True, help=".npz from `synth data`")
    tr.add_argument("--run", type=Path, required=True,
                    help="run folder: checkpoint.npz, best.weights.h5, model.keras, log.csv, train.json")
    tr.add_argument("--epochs", type=int, default=None,
                    help="epochs of the whole run (default: 20 for a new run, a resumed run's own; more than a "
                         "finished run's trains on at the schedule's final learning rate)")
    tr.add_argument("--batch", type=int, default=None,
                    help="samples per training step (default: 32 for a new run, a resumed run's own)")
    tr.add_argument("--lr", type=float, default=None,
                    help="peak learning rate of the cosine schedule (default: 0.002 for a new run, a resumed "
                         "run's own)")
    tr.add_argument("--minutes", type=float, default=55.0,
                    help="stop this session after this much time, checkpointing; rerun to resume")
    tr.add_argument("--max-steps", type=int, default=None, metavar="N",
                    help="stop this session after N training steps, checkpointing; rerun to resume "
                         "(default: no limit)")
    tr.add_argument("--fresh", action="store_true",
                    help="start the run over: delete its checkpoint, best weights, model.keras, log.csv and "
                         "train.json first (default: resume where there is a checkpoint)")
    tr.add_argument("--threads", type=int, default=2, help="CPU threads for training")
    tr.add_argument("--seed", type=int, default=None,
                    help="seed of the initial weights, the data order and the augmentation (default: 0 for a new "
                         "run, a resumed run's own)")
    tr.add_argument("--init", type=Path, default=None, metavar="MODELS",
                    help="start from an exported int8 model instead of random weights: a model set directory "
                         "(e.g. edge/models, the shipped models) or a .tflite file. Fine-tunes it on --data; "
                         "its BatchNorm stays frozen (folded at export) (default: random weights)")
    tr.add_argument("--transplant", type=float, default=None, metavar="P",
                    help="detector: share of training crops that get a plate from another scene pasted in, "
                         "away from its car (default: 0, off, for a new run; see the model card for what 0.5 "
                         "measured)")
    tr.add_argument("--fine-channels", type=int, default=None, metavar="N",
                    help="detector: channels of its stride-4 layers, the costliest per channel (default: the "
                         "--init model's, else 32 as the shipped one; 32 costs 0.161 GMAC a 512x384 pass, 24 "
                         "0.138, 16 0.120). Fewer than the --init model's narrows it: those layers keep their "
                         "first N channels and training recovers the rest")
    tr.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2],
                    help="1: progress bar, 2: a line every 1/20 epoch and one per epoch (for logs), 0: quiet")
    tr.set_defaults(func=_train)

    ex = sub.add_parser("export", help="export float and int8 TFLite with metadata, checked against Keras",
                        formatter_class=_Help)
    ex.add_argument("--kind", choices=["reader", "detector"], required=True, help="the network to export")
    ex.add_argument("--run", type=Path, required=True, help="run folder of `train` (its model.keras is exported)")
    ex.add_argument("--data", type=Path, required=True, help="set for int8 calibration and the agreement check")
    ex.add_argument("--out", type=Path, required=True, help="writes OUT/float and OUT/int8")
    ex.add_argument("--install", type=Path, default=None,
                    help="also copy the int8 set into this models directory (default: no copy)")
    ex.add_argument("--countries", type=Path, action="append", default=None, metavar="DIR",
                    help="reader: the country folders it was trained with (default: what --data's sidecar records, "
                         "else the shipped countries/)")
    ex.add_argument("--calibration", type=int, default=1000, metavar="N",
                    help="samples drawn from --data to calibrate the int8 ranges")
    ex.set_defaults(func=_export)

    wd = sub.add_parser(
        "widen", formatter_class=_Help,
        help="add the wide detector (detector_wide.tflite) to a model set exported without one",
        description="Write MODELS/detector_wide.tflite and its .json: the network of MODELS/detector.tflite at a "
                    "512x320 input, through which the whole-frame look at a 16:9 frame (720p, 1080p) goes, at the "
                    "scale the 512x384 input sees it, for five sixths of the MACs, since the 4:3 input pads 96 rows "
                    "below it. It is the same flatbuffer with its sizes scaled (same weights, same int8 "
                    "quantization); detector.tflite stays as it is. Every detector `export` and `finetune` write "
                    "comes with one; this adds it to a set exported before: the README's \"The wide detector\" has "
                    "what it saves and what it costs on the shared sets.")
    wd.add_argument("models", type=Path, help="model set directory with an int8 detector.tflite")
    wd.add_argument("--data", type=Path, required=True,
                    help="detector set (`synth data --kind detector`) whose scenes check the two detectors agree")
    wd.add_argument("--check", type=int, default=200, metavar="N", help="scenes of --data to check on")
    wd.set_defaults(func=_widen)

    ev = sub.add_parser("evaluate", help="score model sets through the edge pipeline", formatter_class=_Help)
    ev.add_argument("--models", type=Path, action="append", required=True, help="model set directory (repeatable)")
    ev.add_argument("--set", type=Path, action="append", default=[],
                    help="folder with labels.tsv (repeatable) (default: none)")
    ev.add_argument("--synthetic", type=int, default=0,
                    help="also score N held-out synthetic plates (and N/4 scenes); 0: none")
    ev.add_argument("--seed", type=int, default=999, help="seed of the held-out synthetic data")
    ev.add_argument("--limit", type=int, default=None, help="first N images of each set (default: all)")
    ev.add_argument("--threads", type=int, default=2, help="CPU threads of the edge interpreters")
    ev.add_argument("--out", type=Path, default=None,
                    help="write the JSON report here, with its pictures beside it (default: print only)")
    ev.set_defaults(func=_evaluate)

    rv = sub.add_parser(
        "review", formatter_class=_Help,
        help="review a labelled folder's reads in a local web page, keyboard only",
        description=textwrap.fill(
            "Serve a page that shows the folder's crops lowest confidence first (confidence.tsv), the read "
            "filled in: Enter accepts the text as typed, Escape marks 'not a plate', Tab or PageDown skips, "
            "Shift+Tab or PageUp goes back. Each answer is saved to FOLDER/labels.tsv at once (a crop that "
            "is not a plate leaves it), and to FOLDER/review.json; a reload resumes at the first crop "
            "without an answer. The README's 'Reviewing plates' has the details.", 78, break_on_hyphens=False))
    rv.add_argument("folder", type=Path, metavar="FOLDER", help="folder with images and labels.tsv")
    rv.add_argument("--port", type=int, default=8765, help="port to serve on; 0: any free one")
    rv.add_argument("--host", default="127.0.0.1",
                    help="address to serve on (default: 127.0.0.1, this machine only)")
    rv.add_argument("--no-open", action="store_true", help="do not open the page in a browser (default: open it)")
    rv.set_defaults(func=_review)

    from trainer.finetune import add_parser as add_finetune_parser

    add_finetune_parser(sub, _Help)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as e:  # bad input: one line naming it, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
