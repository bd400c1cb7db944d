#!/usr/bin/env python3
"""Record the sha256 of each compiled ``NAME_edgetpu.tflite`` as ``edgetpu_sha256`` in ``NAME.json``.

Run it once after ``edgetpu_compiler`` in a model set directory, on the workstation
that compiled the models: the edge and ``deploy/update.sh`` refuse an Edge TPU
model whose hash is not recorded or does not match. Standard library only.

    python3 deploy/edgetpu_hash.py MODELS_DIR
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def record(models_dir: Path) -> int:
    """Write ``edgetpu_sha256`` for every compiled variant in ``models_dir``; return how many."""
    variants = sorted(models_dir.glob("*_edgetpu.tflite"))
    if not variants:
        raise SystemExit(f"{models_dir}: no *_edgetpu.tflite (compile first: edgetpu_compiler --out_dir "
                         f"{models_dir} {models_dir}/detector.tflite {models_dir}/detector_wide.tflite "
                         f"{models_dir}/reader.tflite; the wide detector where the set has one)")
    for tpu in variants:
        meta_path = tpu.with_name(tpu.name.removesuffix("_edgetpu.tflite") + ".json")
        if not meta_path.is_file():
            raise SystemExit(f"{meta_path}: metadata not found for {tpu.name}")
        meta = json.loads(meta_path.read_text())
        meta["edgetpu_sha256"] = sha256(tpu)
        # Write beside and rename, so an interrupted run never leaves half a JSON file.
        tmp = meta_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        tmp.replace(meta_path)
        print(f"{meta_path}: edgetpu_sha256 {meta['edgetpu_sha256'][:12]}… for {tpu.name}")
    return len(variants)


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        raise SystemExit(f"usage: {sys.argv[0]} MODELS_DIR")
    record(Path(sys.argv[1]))
