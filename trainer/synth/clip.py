"""A synthetic camera clip: vehicles with known plates driving through a fixed scene.

Used for the demo and the soak benchmark: the daemon runs on it like on a
camera, and the truth tells what a subscriber should receive.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from .render import plate_width_mm, render_plate
from .scene import CAR_WIDTH_MM, background, draw_car, paste_plate
from .text import random_text


def make_clip(
    rng: np.random.Generator, vehicles: int = 3, width: int = 1280, height: int = 720, visible: int = 14, gap: int = 4
) -> tuple[list[np.ndarray], list[dict]]:
    """BGR frames and the truth: per vehicle its text and the frames it is in view."""
    road = background(rng, height, width)
    empty = np.clip(road, 0, 255).astype(np.uint8)
    frames: list[np.ndarray] = [empty.copy() for _ in range(gap)]
    truth = []
    for _ in range(vehicles):
        text, fmt = random_text(rng)
        plate, _ = render_plate(rng, text, fmt, two_rows=False, width_px=320)
        car_seed = int(rng.integers(1 << 30))
        start = len(frames)
        for i in range(visible):
            k = i / max(1, visible - 1)
            pw = width * (0.13 + 0.07 * k)  # the car comes nearer while it crosses
            ph = pw * plate.shape[0] / plate.shape[1]
            cx, cy = width * (0.3 + 0.4 * k), height * (0.5 + 0.15 * k)
            quad = np.array([[cx - pw / 2, cy - ph / 2], [cx + pw / 2, cy - ph / 2],
                             [cx + pw / 2, cy + ph / 2], [cx - pw / 2, cy + ph / 2]], np.float32)
            img = road.copy()
            # The same seed every frame: the car keeps its look while it moves.
            draw_car(np.random.default_rng(car_seed), img, cx, cy, pw, ph, pw * CAR_WIDTH_MM / plate_width_mm(fmt),
                     [(*quad.min(0), *quad.max(0))])
            paste_plate(img, plate, quad)
            frames.append(np.clip(img, 0, 255).astype(np.uint8))
        truth.append({"text": text, "format": fmt, "first_frame": start, "last_frame": len(frames) - 1})
        frames += [empty.copy() for _ in range(gap)]
    return frames, truth


def write_clip(path: Path, frames: list[np.ndarray], truth: list[dict], fps: float) -> None:
    """Write an MPEG-4 clip and ``<path>.json`` with the truth and frame rate."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot write MPEG-4 video here")
    for f in frames:
        writer.write(f)
    writer.release()
    Path(str(path) + ".json").write_text(json.dumps({"fps": fps, "frames": len(frames), "size": [w, h],
                                                     "vehicles": truth}, indent=2))
