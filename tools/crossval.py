"""Honest figures for fine-tuning: two-fold cross-validation on a labelled set, split by plate text.

  python -m tools.crossval --set ../shared/data/real/seed480 [--minutes 25] [--fold A|B] [--out DIR]

Half A holds the rows whose plate text (as ``run_eval.py`` normalizes it) has a SHA-1 hex digest starting with
0-7, half B the rest, so that no plate lies in both. Each half is written as a labelled folder (``labels.tsv``
with the set's own rows, and links to the set's images). Fold A fine-tunes the starting models on half A
(``python -m trainer finetune --data A --holdout 0``: all of A is trained on, none of B is seen) and scores
half B with ``run_eval.py`` and ``edge read --json --models``; fold B does the other way round. The starting
models are scored on both halves too. Prints, and writes to OUT as ``crossval.json`` and ``crossval.md``, per
fold the fine-tuned and the starting models' figures on the half not trained on, and the folds' mean.

A fold's fine-tuning resumes where a stopped one left off (``trainer finetune`` keeps its state in
``OUT/fold_X/models/work``); ``--fold`` runs one fold, and the summary takes every fold scored so far.
These figures are the shared sets' only use in fine-tuning: no shipped model is trained on them.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RUN_EVAL = ROOT.parent / "shared" / "eval" / "run_eval.py"
HALVES = ("A", "B")
#: The half each fold trains on -> the half it is scored on.
OTHER = {"A": "B", "B": "A"}
FIGURES = ("exact", "lenient", "det_recall")


def norm(text: str) -> str:
    """A plate text as ``run_eval.py`` compares it: upper case, letters and digits only."""
    return "".join(c for c in str(text).upper() if c.isalnum())


def half_of(text: str) -> str:
    """``A`` when the SHA-1 hex digest of the (normalized) text starts with 0-7, else ``B``."""
    return "A" if hashlib.sha1(norm(text).encode()).hexdigest()[0] in "01234567" else "B"


def _link(target: Path, link: Path) -> None:
    """``link`` -> ``target`` (absolute), replacing a link that points elsewhere."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def split_set(folder: Path, out: Path) -> dict[str, Any]:
    """Write ``out/A`` and ``out/B``: the rows of ``folder/labels.tsv`` by ``half_of`` their text, each with
    links to its images; return what went where. Rows with no text are left out; an image with rows in both
    halves (two plates) is linked in both, each half with its own rows."""
    labels = folder / "labels.tsv"
    if not labels.is_file():
        raise FileNotFoundError(f"{labels}: no labels.tsv in this folder")
    lines = labels.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise ValueError(f"{labels}: empty (a header line, then one row per plate)")
    rows: dict[str, list[str]] = {h: [] for h in HALVES}
    texts: dict[str, set[str]] = {h: set() for h in HALVES}
    files: dict[str, set[str]] = {h: set() for h in HALVES}
    left_out = 0
    for n, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if not line.strip():
            continue
        if len(fields) < 2 or not fields[0]:
            raise ValueError(f"{labels}:{n}: expected file<TAB>text[<TAB>x1<TAB>y1<TAB>x2<TAB>y2], got {line!r}")
        text = norm(fields[1])
        if not text:
            left_out += 1
            continue
        h = half_of(text)
        rows[h].append(line)
        texts[h].add(text)
        files[h].add(fields[0])
    source = folder.resolve()
    for h in HALVES:
        dest = out / h
        dest.mkdir(parents=True, exist_ok=True)
        for name in sorted(files[h]):
            _link(source / name, dest / name)
        (dest / "labels.tsv").write_text("\n".join([lines[0], *rows[h]]) + "\n", encoding="utf-8")
    return {"set": folder.name, "source": str(source), "rows": {h: len(rows[h]) for h in HALVES},
            "texts": {h: len(texts[h]) for h in HALVES}, "images": {h: len(files[h]) for h in HALVES},
            "images_in_both": len(files["A"] & files["B"]), "rows_without_text": left_out}


def default_python() -> str:
    """The checkout's environment where there is one (as the README's commands use it), else this interpreter."""
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.is_file() else sys.executable


Runner = Callable[[list[str]], int]


def _run(argv: list[str]) -> int:
    print("$ " + shlex.join(argv), flush=True)
    return subprocess.run(argv, cwd=ROOT).returncode


def score(python: str, run_eval: Path, models: Path, half: Path, out_json: Path, runner: Runner = _run) -> dict | None:
    """``run_eval.py`` of ``edge read --json --models MODELS`` on ``half``: its figures, or None where it failed."""
    out_json.unlink(missing_ok=True)
    cmd = f"{shlex.quote(python)} -m edge read --json --models {shlex.quote(str(models))}"
    code = runner([python, str(run_eval), "--cmd", cmd, "--set", str(half), "--out", str(out_json)])
    if code != 0 or not out_json.is_file():
        print(f"scoring {models} on {half} failed (exit {code})", file=sys.stderr)
        return None
    result = json.loads(out_json.read_text())
    return result.get(half.name)


def run_fold(train: str, args: argparse.Namespace, runner: Runner = _run) -> dict[str, Any]:
    """Fine-tune on half ``train`` and score the other half; the fold's record (also written beside it)."""
    test = OTHER[train]
    fold = args.out / f"fold_{train}"
    models = fold / "models"
    fold.mkdir(parents=True, exist_ok=True)
    argv = [args.python, "-m", "trainer", "finetune", "--data", str(args.out / "halves" / train), "--out",
            str(models), "--models", str(args.models), "--minutes", f"{args.minutes:g}", "--holdout",
            f"{args.holdout:g}", *args.finetune_arg]
    record: dict[str, Any] = {"trained_on": train, "scored_on": test, "finetune": shlex.join(argv)}
    code = runner(argv)
    record["finetune_exit"] = code
    state_path = models / "work" / "finetune.json"
    if state_path.is_file():
        state = json.loads(state_path.read_text())
        record["training"] = {k: {"steps": v.get("global_step"), "planned": v.get("steps_planned"),
                                  "finished": v.get("finished")} for k, v in state.get("trained", {}).items()}
        record["wall_s"] = round(sum(s.get("wall_s", 0.0) for s in state.get("sessions", [])), 1)
    if code == 0 and (models / "reader.tflite").is_file():
        record["finetuned"] = score(args.python, args.run_eval, models, args.out / "halves" / test,
                                    fold / "finetuned_eval.json", runner)
    else:
        print(f"fold {train}: the fine-tuning failed (exit {code}); not scored", file=sys.stderr)
    (fold / "fold.json").write_text(json.dumps(record, indent=2))
    return record


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def summarize(split: dict[str, Any], shipped: dict[str, dict | None], folds: dict[str, dict[str, Any]]) -> dict:
    """The report: per fold the fine-tuned and the starting models' figures on the half not trained on, and the
    folds' means (only over folds scored)."""
    rows: list[dict[str, Any]] = []
    for train in HALVES:
        fold = folds.get(train)
        if fold is None:
            continue
        test = OTHER[train]
        ft, base = fold.get("finetuned") or {}, shipped.get(test) or {}
        rows.append({"fold": f"{train}->{test}", "trained_on": train, "scored_on": test,
                     "images": base.get("images", ft.get("images")),
                     **{f"finetuned_{k}": ft.get(k) for k in FIGURES}, **{f"shipped_{k}": base.get(k) for k in FIGURES},
                     "gain_exact": None if ft.get("exact") is None or base.get("exact") is None
                     else ft["exact"] - base["exact"], "wall_s": fold.get("wall_s")})
    scored = [r for r in rows if r["finetuned_exact"] is not None and r["shipped_exact"] is not None]
    mean = None
    if scored:
        mean = {key: statistics.fmean(r[key] for r in scored) for key in ("finetuned_exact", "shipped_exact",
                                                                          "gain_exact", "finetuned_lenient",
                                                                          "shipped_lenient")
                if all(r[key] is not None for r in scored)} | {"folds": len(scored)}
    return {"set": split["set"], "split": split, "folds": rows, "mean": mean,
            "shipped": {h: shipped.get(h) for h in HALVES}}


def markdown(report: dict) -> str:
    """The report as a markdown table."""
    lines = [f"Two-fold cross-validation on `{report['set']}`, split by plate text (A: SHA-1 of the text starts "
             f"with 0-7; {report['split']['rows']['A']} rows in A, {report['split']['rows']['B']} in B). Each fold "
             "fine-tunes on one half and is scored on the other with `run_eval.py`; the starting models are "
             "scored on the same half.", "",
             "| fold | scored on | n | exact fine-tuned | exact starting | gain | lenient fine-tuned "
             "| lenient starting | det@.5 fine-tuned | det@.5 starting |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["folds"]:
        lines.append(f"| {r['fold']} | {r['scored_on']} | {r['images']} | {_figure(r['finetuned_exact'])} | "
                     f"{_figure(r['shipped_exact'])} | {_figure(r['gain_exact'])} | "
                     f"{_figure(r['finetuned_lenient'])} | {_figure(r['shipped_lenient'])} | "
                     f"{_figure(r['finetuned_det_recall'])} | {_figure(r['shipped_det_recall'])} |")
    m = report["mean"]
    if m:
        lines.append(f"| mean of {m['folds']} | | | {_figure(m.get('finetuned_exact'))} | "
                     f"{_figure(m.get('shipped_exact'))} | {_figure(m.get('gain_exact'))} | "
                     f"{_figure(m.get('finetuned_lenient'))} | {_figure(m.get('shipped_lenient'))} | | |")
    return "\n".join(lines) + "\n"


def _load_folds(out: Path) -> dict[str, dict[str, Any]]:
    """The fold records written so far (a fold run today, the other tomorrow)."""
    folds = {}
    for train in HALVES:
        path = out / f"fold_{train}" / "fold.json"
        if path.is_file():
            folds[train] = json.loads(path.read_text())
    return folds


def main(argv: list[str] | None = None, runner: Runner = _run) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.crossval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", type=Path, required=True, help="labelled folder (labels.tsv and its images)")
    ap.add_argument("--out", type=Path, default=None,
                    help="folder for the halves, the folds' model sets and the report (default: work/crossval/SET)")
    ap.add_argument("--fold", choices=["A", "B", "both"], default="both",
                    help="the fold to run: A fine-tunes on A and scores B, B the other way round (default: both)")
    ap.add_argument("--minutes", type=float, default=25.0, help="trainer finetune --minutes, per fold (default: 25)")
    ap.add_argument("--holdout", type=float, default=0.0,
                    help="trainer finetune --holdout inside the half trained on (default: 0, the other half is the "
                         "held-out set)")
    ap.add_argument("--models", type=Path, default=ROOT / "edge" / "models",
                    help="the model set to start from and to compare with (default: the shipped edge/models)")
    ap.add_argument("--finetune-arg", action="append", default=[], metavar="ARG",
                    help="one more argument for trainer finetune, e.g. --finetune-arg=--detector (repeatable)")
    ap.add_argument("--python", default=default_python(), help="interpreter for the trainer and edge read "
                    "(default: the checkout's .venv/bin/python)")
    ap.add_argument("--run-eval", type=Path, default=RUN_EVAL, help=f"the scorer (default: {RUN_EVAL})")
    args = ap.parse_args(argv)
    args.out = (args.out or ROOT / "work" / "crossval" / args.set.name).resolve()
    args.models = args.models.resolve()
    if not args.run_eval.is_file():
        print(f"error: {args.run_eval}: run_eval.py not found (--run-eval)", file=sys.stderr)
        return 2
    try:
        split = split_set(args.set, args.out / "halves")
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.set}: half A {split['rows']['A']} rows ({split['texts']['A']} texts), half B {split['rows']['B']} "
          f"rows ({split['texts']['B']} texts), {split['images_in_both']} images in both")
    for train in (HALVES if args.fold == "both" else (args.fold,)):
        run_fold(train, args, runner)
    shipped = {h: score(args.python, args.run_eval, args.models, args.out / "halves" / h,
                        args.out / f"starting_eval_{h}.json", runner) for h in HALVES}
    report = summarize(split, shipped, _load_folds(args.out))
    report["models"] = str(args.models)
    text = markdown(report)
    (args.out / "crossval.json").write_text(json.dumps(report, indent=2))
    (args.out / "crossval.md").write_text(text)
    print(text)
    print(f"wrote {args.out / 'crossval.json'} and {args.out / 'crossval.md'}")
    scored = [r for r in report["folds"] if r["finetuned_exact"] is not None]
    return 0 if scored else 1


if __name__ == "__main__":
    sys.exit(main())
