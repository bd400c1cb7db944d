"""Contact sheets of synthetic samples, for checking realism by eye."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .scene import Scene, make_plate_patch, make_scene
from .text import catalogue, random_text


def _annotate(scene: Scene, draw_quads: bool) -> np.ndarray:
    img = scene.image.copy()
    if draw_quads:
        for p in scene.plates:
            cv2.polylines(img, [np.round(p.quad).astype(np.int32)], True, (0, 255, 0), 1, cv2.LINE_AA)
    caption = "  ".join(f"{catalogue().entry(p.format).rule.display(p.text) or p.text} "
                        f"[{p.format}{'/2' if p.rows == 2 else ''}]"
                        for p in scene.plates) or "(no plate)"
    bar = np.full((18, img.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, caption, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([img, bar])


def preview_grid(rng: np.random.Generator, path: str | Path, kind: str = "plates", n: int = 32,
                 country: str | None = None) -> None:
    """Write a PNG grid of ``n`` samples ("plates": reader patches, "scenes": frames with quads drawn).

    ``country`` (a country file's code) shows that country's plates only, its formats in turn (``kind`` plates).
    """
    if kind not in ("plates", "scenes"):
        raise ValueError(f"kind must be 'plates' or 'scenes', not {kind!r}")
    if country is not None:
        cat = catalogue()
        if country.upper() not in cat.countries:
            raise ValueError(f"no country file for {country!r} (known: {', '.join(sorted(cat.countries))})")
        names = [f.name for f in cat.countries[country.upper()].formats]
        tiles = []
        for i in range(n):
            text, fmt = random_text(rng, names[i % len(names)])
            tiles.append(_annotate(make_plate_patch(rng, plate=(text, fmt)), False))
    else:
        make = make_plate_patch if kind == "plates" else make_scene
        tiles = [_annotate(make(rng), kind == "scenes") for _ in range(n)]
    cols = 4 if kind == "plates" else 3
    tiles += [np.full_like(tiles[0], 255)] * (-len(tiles) % cols)
    grid = np.vstack([np.hstack(tiles[i: i + cols]) for i in range(0, len(tiles), cols)])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), grid):
        raise OSError(f"could not write {path}")
