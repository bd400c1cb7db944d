"""Pictures of an evaluation: a failure gallery per set and charts across model sets.

``trainer.evaluate`` computes; this module only draws, next to the JSON report.
"""
from __future__ import annotations

import itertools
import re
from pathlib import Path

import cv2
import numpy as np

from trainer.evaluate import HEIGHT_BINS


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[-40:]


def failure_gallery(items: list[tuple[np.ndarray, str, str]], path: Path, cols: int = 4) -> Path | None:
    """PNG grid of reader crops, each captioned ``truth -> read`` (green truth, red read)."""
    if not items:
        return None
    tiles = []
    for crop, truth, read in items:
        tile = cv2.cvtColor(cv2.resize(crop, (288, 96)), cv2.COLOR_GRAY2BGR)
        caption = np.full((26, tile.shape[1], 3), 255, np.uint8)
        cv2.putText(caption, truth, (4, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 140, 0), 2)
        cv2.putText(caption, read, (150, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 200), 2)
        tiles.append(cv2.copyMakeBorder(np.vstack([tile, caption]), 2, 2, 2, 2, cv2.BORDER_CONSTANT,
                                        value=(128, 128, 128)))
    while len(tiles) % cols:
        tiles.append(np.full_like(tiles[0], 255))
    grid = np.vstack([np.hstack(tiles[i : i + cols]) for i in range(0, len(tiles), cols)])
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), grid)
    return path


def charts(report: dict, path: Path) -> Path | None:
    """Exact match and detection recall per set for each model set, and exact match by plate height."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(report)
    sets = [s for s in report[models[0]] if "images" in report[models[0]][s]["summary"]]
    if not sets:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(models)
    for k, m in enumerate(models):
        exact = [report[m][s]["summary"]["exact"] for s in sets]
        bars = axes[0].bar(np.arange(len(sets)) + k * width, exact, width, label=Path(m).name or m)
        axes[0].bar_label(bars, fmt="%.2f", fontsize=8)
    axes[0].set_xticks(np.arange(len(sets)) + width * (len(models) - 1) / 2, sets)
    axes[0].set_ylim(0, 1)
    axes[0].set_title("exact match of the best plate")
    axes[0].legend()
    order = [f"{lo}-{hi}" if hi < 10_000 else f"{lo}+" for lo, hi in itertools.pairwise(HEIGHT_BINS)]
    for m in models:
        for s in sets:
            bins = report[m][s]["summary"]["by_height"]
            if bins:
                axes[1].plot([order.index(b["height_px"]) for b in bins], [b["exact"] for b in bins], marker="o",
                             label=f"{Path(m).name or m} / {s}")
    axes[1].set_xticks(range(len(order)), order)
    axes[1].set_ylim(0, 1)
    axes[1].set_xlabel("plate height in the image (px)")
    axes[1].set_title("exact match by plate height")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_pictures(report: dict, out_json: Path) -> list[Path]:
    """Draw everything for a report written to ``out_json``; pops the galleries out of the report."""
    written = []
    for models, sets in report.items():
        for set_name, result in sets.items():
            items = result.pop("gallery", None)
            if items:
                name = f"{out_json.stem}_{_slug(models)}_{set_name}_failures.png"
                p = failure_gallery(items, out_json.with_name(name))
                written.append(p)
    chart = charts(report, out_json.with_name(f"{out_json.stem}_charts.png"))
    return [p for p in [*written, chart] if p]
