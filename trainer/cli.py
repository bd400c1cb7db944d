"""Trainer command line: one verb per job.

  python -m trainer synth data    --kind reader|detector --n N --out FILE.npz
  python -m trainer synth preview --kind plates|scenes --out grid.png
  python -m trainer synth scenes  --n 6 --out demo/
  python -m trainer synth clip    --out demo/clip.mp4
  python -m trainer train         --kind reader|detector --data FILE.npz --run DIR
  python -m trainer export        --kind reader|detector --run DIR --data FILE.npz --out DIR [--install edge/models]
  python -m trainer evaluate      --models DIR [--models DIR ...] [--set FOLDER ...] [--synthetic N] --out report.json

TensorFlow is imported only by the verbs that need it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


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
        from trainer.synth import preview_grid
        import numpy as np

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
    from trainer.train import train

    info = train(args.kind, args.data, args.run, epochs=args.epochs, batch=args.batch, minutes=args.minutes,
                 lr=args.lr, threads=args.threads, seed=args.seed, verbose=args.verbose, init=args.init,
                 transplant=args.transplant)
    print(json.dumps(info, indent=2))
    return 0


def _export(args: argparse.Namespace) -> int:
    from trainer.export import export, install

    report = export(args.kind, args.run, args.data, args.out, n_rep=args.calibration, countries=args.countries)
    (args.out / f"{args.kind}_export.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    if args.install:
        install(args.out, args.install)
        print(f"installed int8 models into {args.install}")
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
    print(f"{'models':<28}{'set':<18}{'n':>6}{'exact':>8}{'lenient':>9}{'chars':>7}{'det@.5':>8}{'ms':>7}")
    for name, res in report.items():
        for set_name, r in res.items():
            s = r["summary"]
            n = s.get("images", s.get("plates", 0))
            exact = s.get("exact", s.get("read_recall")) or 0.0
            det = s.get("det_recall")
            print(f"{name[-27:]:<28}{set_name:<18}{n:>6}{exact:>8.3f}{s.get('lenient', float('nan')):>9.3f}"
                  f"{s.get('char_accuracy', float('nan')):>7.3f}{det if det is None else round(det, 3)!s:>8}"
                  f"{s.get('latency_ms_median') or float('nan'):>7.1f}")
            if s.get("confusions"):
                print(f"{'':<28}  most confused (truth>read): "
                      + ", ".join(f"{a}>{b} {k}" for a, b, k in s["confusions"][:8]))
            if s.get("by_height"):
                print(f"{'':<28}  exact by plate height (px): "
                      + ", ".join(f"{b['height_px']}: {b['exact']:.3f} ({b['n']})" for b in s["by_height"]))
            if s.get("by_country"):
                print(f"{'':<28}  exact by country: "
                      + ", ".join(f"{c} {b['exact']:.2f} ({b['n']})" for c, b in s["by_country"].items()))
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="verb", required=True)

    sy = sub.add_parser("synth", help="make synthetic training sets or preview grids")
    sy.add_argument("--countries", type=Path, action="append", default=[], metavar="DIR",
                    help="folder of your own country files (*.yaml), drawn besides the shipped countries/ (a file "
                         "replaces the shipped country of the same code); repeatable")
    sy_sub = sy.add_subparsers(dest="what", required=True)
    data = sy_sub.add_parser("data", help="write a training set (.npz) for one network")
    data.add_argument("--kind", choices=["reader", "detector"], required=True)
    data.add_argument("--n", type=int, required=True, help="number of samples")
    data.add_argument("--seed", type=int, default=0, help="sample i uses seed (SEED, i): held-out sets take another SEED")
    data.add_argument("--workers", type=int, default=2, help="worker processes")
    data.add_argument("--texts", type=int, default=0,
                      help="reader: draw plates from a fixed pool of N texts (a quick learnability check); 0: all random")
    data.add_argument("--backgrounds", type=Path, default=None, metavar="DIR",
                      help="optional folder of your own background pictures (streets, car parks; no readable plates "
                           "in them): used for 70 %% of backgrounds instead of procedural ones")
    data.add_argument("--out", type=Path, required=True)
    prev = sy_sub.add_parser("preview", help="write a PNG grid of synthetic samples to look at")
    prev.add_argument("--kind", choices=["plates", "scenes"], default="plates")
    prev.add_argument("--country", default=None, metavar="CODE",
                      help="plates of one country only (ISO 3166-1 alpha-2 code of a country file), each format "
                           "in turn")
    prev.add_argument("--n", type=int, default=32)
    prev.add_argument("--seed", type=int, default=0)
    prev.add_argument("--out", type=Path, default=Path("preview.png"))
    sc = sy_sub.add_parser("scenes", help="write synthetic camera frames as JPEG with a labels.tsv (demo, tests)")
    sc.add_argument("--n", type=int, default=6)
    sc.add_argument("--seed", type=int, default=2026)
    sc.add_argument("--width", type=int, default=1280)
    sc.add_argument("--height", type=int, default=720)
    sc.add_argument("--out", type=Path, required=True)
    cl = sy_sub.add_parser("clip", help="write a synthetic camera clip (MPEG-4) with known plates, for demos")
    cl.add_argument("--vehicles", type=int, default=3)
    cl.add_argument("--seed", type=int, default=7)
    cl.add_argument("--width", type=int, default=1280)
    cl.add_argument("--height", type=int, default=720)
    cl.add_argument("--fps", type=float, default=8.0)
    cl.add_argument("--out", type=Path, required=True)
    sy.set_defaults(func=_synth)

    tr = sub.add_parser("train", help="train one network; rerun the same command to resume")
    tr.add_argument("--kind", choices=["reader", "detector"], required=True)
    tr.add_argument("--data", type=Path, required=True, help=".npz from `synth data`")
    tr.add_argument("--run", type=Path, required=True, help="run directory (checkpoints, log.csv, model.keras)")
    tr.add_argument("--epochs", type=int, default=20)
    tr.add_argument("--batch", type=int, default=32)
    tr.add_argument("--minutes", type=float, default=55.0, help="stop after this much training time")
    tr.add_argument("--lr", type=float, default=2e-3)
    tr.add_argument("--threads", type=int, default=2)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--init", type=Path, default=None, metavar="MODELS",
                    help="start from an exported int8 model instead of random weights: a model set directory "
                         "(e.g. edge/models, the shipped models) or a .tflite file. Fine-tunes it on --data; "
                         "its BatchNorm stays frozen (folded at export)")
    tr.add_argument("--transplant", type=float, default=0.0, metavar="P",
                    help="detector: share of training crops that get a plate from another scene pasted in, "
                         "away from its car (default 0: off; see the model card for what 0.5 measured)")
    tr.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2],
                    help="1: progress bar (default), 2: one line per epoch (for logs), 0: quiet")
    tr.set_defaults(func=_train)

    ex = sub.add_parser("export", help="export float and int8 TFLite with metadata, checked against Keras")
    ex.add_argument("--kind", choices=["reader", "detector"], required=True)
    ex.add_argument("--run", type=Path, required=True)
    ex.add_argument("--data", type=Path, required=True, help="set for int8 calibration and the agreement check")
    ex.add_argument("--out", type=Path, required=True, help="writes OUT/float and OUT/int8")
    ex.add_argument("--install", type=Path, default=None, help="also copy the int8 set into this models directory")
    ex.add_argument("--countries", type=Path, action="append", default=None, metavar="DIR",
                    help="reader: the country folders it was trained with (default: what --data's sidecar records, "
                         "else the shipped countries/)")
    ex.add_argument("--calibration", type=int, default=1000, metavar="N",
                    help="samples drawn from --data to calibrate the int8 ranges (default 1000)")
    ex.set_defaults(func=_export)

    ev = sub.add_parser("evaluate", help="score model sets through the edge pipeline")
    ev.add_argument("--models", type=Path, action="append", required=True, help="model set directory (repeatable)")
    ev.add_argument("--set", type=Path, action="append", default=[], help="folder with labels.tsv (repeatable)")
    ev.add_argument("--synthetic", type=int, default=0, help="also score N held-out synthetic plates (and N/4 scenes)")
    ev.add_argument("--seed", type=int, default=999, help="seed of the held-out synthetic data")
    ev.add_argument("--limit", type=int, default=None, help="first N images of each set")
    ev.add_argument("--threads", type=int, default=2)
    ev.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    ev.set_defaults(func=_evaluate)
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
