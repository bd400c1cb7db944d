"""Scenes and reader patches: procedural backgrounds, car-like context, plates, distractors."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .camera import apply_camera, inside
from .fonts import font_table, text_mask
from .render import blend, plate_aspect, plate_width_mm, render_plate, rounded_rect
from .text import catalogue, random_text

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: A car's width in millimetres: how much car there is around a plate of a given size.
CAR_WIDTH_MM = 1800.0

CAR_COLOURS = ((235, 235, 235), (190, 190, 195), (120, 120, 125), (30, 30, 32), (110, 40, 20), (40, 40, 170),
               (50, 30, 90), (50, 80, 40), (150, 180, 200), (180, 130, 90), (200, 200, 210), (60, 60, 60))
LIGHT_CAR_COLOURS = ((240, 240, 238), (225, 228, 230), (200, 200, 205), (175, 178, 182), (150, 150, 155))
WORDS = ("NOTICE", "PARKING", "EXIT", "STOP", "ZAGREB", "CROATIA", "TEL. 01 6578 733", "AUTO", "SERVICE",
         "NO PARKING", "VIDEO SURVEILLANCE", "Golf", "YARIS", "ML 320", "CHEVROLET", "RENAULT 4 GTL",
         "TAXI", "BUS", "SALE", "HOTEL", "www.auto.hr", "OPEN 24H", "Z28", "4x4", "DIESEL", "ONE WAY")


@dataclass
class PlateInstance:
    text: str
    format: str
    quad: np.ndarray  # (4,2) float32 TL, TR, BR, BL, outer plate edge
    rows: int
    #: Plate height in pixels as the camera recorded it: a patch shot at low resolution and enlarged back
    #: to its size shows a plate taller than it was seen (None: as tall as its quad).
    seen_height: float | None = None


@dataclass
class Scene:
    image: np.ndarray  # HxWx3 uint8 BGR
    plates: list[PlateInstance]


def _col(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[float, float, float]:
    b, g, r = rng.integers(lo, hi, 3)
    return float(b), float(g), float(r)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int, amp: float) -> np.ndarray:
    small = rng.normal(0, amp, (max(2, h * cells // w), cells)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def fractal(rng: np.random.Generator, h: int, w: int, octaves: int = 5, roughness: float = 0.6) -> np.ndarray:
    """Zero-mean 1/f-like noise (float32, unit-ish std): the texture statistics of photographed surfaces."""
    out = np.zeros((h, w), np.float32)
    amp, cells = 1.0, int(rng.integers(2, 5))
    for _ in range(octaves):
        if cells > w:
            break
        out += _smooth_noise(rng, h, w, cells, amp)
        amp, cells = amp * roughness, cells * 3
    return out / max(float(out.std()), 1e-6)


def _glow(img: np.ndarray, mask: np.ndarray, colour, strength: float) -> None:
    """Add light: ``mask`` blurred into a halo, as bright lamps bloom on a camera sensor."""
    r = max(1.0, 0.15 * float(np.sqrt(mask.sum() + 1)))
    halo = cv2.GaussianBlur(mask, (0, 0), r) * strength + mask
    img += halo[..., None] * np.float32(colour)


def _tree(rng: np.random.Generator, img: np.ndarray, x: int, y: int, r: int) -> None:
    """A tree crown of leafy texture with a trunk below it."""
    h, w = img.shape[:2]
    cv2.line(img, (x, y), (x + int(rng.integers(-r // 4, r // 4 + 1)), min(h, y + 3 * r)), _col(rng, 30, 80),
             max(2, r // 6))
    x0, y0, x1, y1 = max(0, x - 2 * r), max(0, y - 2 * r), min(w, x + 2 * r), min(h, y + 2 * r)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    crown = np.zeros((y1 - y0, x1 - x0), np.float32)  # drawn in the tree's own box: full-frame noise is slow
    for _ in range(int(rng.integers(3, 8))):
        centre = (x - x0 + int(rng.normal(0, r * 0.5)), y - y0 + int(rng.normal(0, r * 0.4)))
        cv2.circle(crown, centre, int(r * rng.uniform(0.4, 0.8)), 1.0, -1)
    leaves = np.clip(0.5 + 0.35 * fractal(rng, y1 - y0, x1 - x0, 5, 0.8), 0, 1)
    green = np.array([rng.uniform(20, 70), rng.uniform(70, 150), rng.uniform(40, 100)], np.float32)
    a = crown[..., None]
    region = img[y0:y1, x0:x1]
    region[:] = region * (1 - a) + (green * (0.4 + leaves[..., None])) * a


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def list_backgrounds(folder: Path) -> tuple[str, ...]:
    """Image files under ``folder`` (recursive) to use as scene backgrounds; errors name the folder."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: background folder not found")
    files = tuple(sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
    if not files:
        raise ValueError(f"{folder}: no background images ({', '.join(IMAGE_SUFFIXES)}) found")
    return files


def photo_background(rng: np.random.Generator, h: int, w: int, path: str) -> np.ndarray | None:
    """A random crop of the user's photo at ``path`` as a float32 BGR background (None if unreadable)."""
    photo = cv2.imread(path, cv2.IMREAD_COLOR)
    if photo is None or min(photo.shape[:2]) < 16:
        return None
    ph, pw = photo.shape[:2]
    scale = max(h / ph, w / pw) * rng.uniform(1.0, 1.8)
    photo = cv2.resize(photo, (max(w, round(pw * scale)), max(h, round(ph * scale))), interpolation=cv2.INTER_AREA)
    y, x = int(rng.integers(0, photo.shape[0] - h + 1)), int(rng.integers(0, photo.shape[1] - w + 1))
    out = photo[y:y + h, x:x + w].astype(np.float32)
    return out[:, ::-1].copy() if rng.random() < 0.5 else out


def background(rng: np.random.Generator, h: int, w: int, photos: tuple[str, ...] = ()) -> np.ndarray:
    """Street-like float32 BGR background: sky/buildings/fences above, asphalt with markings below.

    With ``photos`` (the user's own background pictures, e.g. streets without
    plates), most backgrounds are a random crop of one of them instead.
    """
    if photos and rng.random() < 0.7:
        img = photo_background(rng, h, w, photos[int(rng.integers(len(photos)))])
        if img is not None:
            return img
    img = np.empty((h, w, 3), np.float32)
    horizon = int(h * rng.uniform(-0.1, 0.6))
    top = np.array(_col(rng, 60, 230), np.float32)
    img[:] = top * np.linspace(1.1, 0.8, h, dtype=np.float32)[:, None, None]
    for _ in range(int(rng.integers(0, 6))):  # buildings, walls, windows
        x, y = int(rng.integers(-w // 4, w)), int(rng.integers(-h // 4, max(1, horizon)))
        bw, bh = int(rng.integers(w // 10, w // 2)), int(rng.integers(h // 8, h))
        cv2.rectangle(img, (x, y), (x + bw, y + bh), _col(rng, 40, 220), -1)
        if rng.random() < 0.5:
            win = _col(rng, 10, 120)
            for wx in range(x + 6, x + bw - 10, max(12, bw // 6)):
                for wy in range(y + 6, min(horizon, y + bh) - 10, max(14, bh // 5)):
                    cv2.rectangle(img, (wx, wy), (wx + max(4, bw // 12), wy + max(5, bh // 10)), win, -1)
    if rng.random() < 0.4 and horizon > 4:  # vegetation: leafy high-frequency clumps
        veg = np.clip(_smooth_noise(rng, horizon, w, 12, 1.0) + _smooth_noise(rng, horizon, w, 96, 0.6), 0, 1)
        blend(img[:horizon], veg, (40, float(rng.integers(70, 140)), float(rng.integers(30, 90))))
    ground = max(0, horizon)
    if h - ground > 4:
        img[ground:] = float(rng.integers(60, 170)) + _smooth_noise(rng, h - ground, w, 8, 10)[..., None] \
            + _smooth_noise(rng, h - ground, w, 128, 5)[..., None]
        img[ground:] += rng.normal(0, rng.uniform(2, 8), (h - ground, w, 1)).astype(np.float32)
        for _ in range(int(rng.integers(0, 4))):  # cracks
            p = np.cumsum(rng.normal(0, 6, (8, 2)), 0) + np.array([rng.integers(0, w), rng.integers(ground, h)])
            cv2.polylines(img, [p.astype(np.int32)], False, (35, 35, 35), 1, cv2.LINE_AA)
        for _ in range(int(rng.integers(0, 3))):  # lane / parking markings
            col: tuple[float, ...] = (235, 235, 235) if rng.random() < 0.6 else (40, 190, 230)
            p = (int(rng.integers(0, w)), int(rng.integers(ground, h)))
            cv2.line(img, p, (p[0] + int(rng.integers(-w, w)), p[1] + int(rng.integers(-h // 2, h // 2))), col,
                     int(rng.integers(2, 8)))
    if rng.random() < 0.35:  # fence / gate bars
        col, y0, y1 = _col(rng, 10, 90), int(rng.integers(0, h // 2)), int(rng.integers(h // 2, h))
        step = int(rng.integers(8, 30))
        for x in range(int(rng.integers(0, step)), w, step):
            cv2.line(img, (x, y0), (x, y1), col, max(1, step // 6))
        cv2.line(img, (0, y0 + 4), (w, y0 + 4), col, 3)
    if rng.random() < 0.25 and h - ground > 8:  # paving stones / bricks on the ground
        step = int(rng.integers(5, 24))
        col = tuple(float(v) for v in img[min(h - 1, ground + 2), 0] * rng.uniform(0.6, 0.85))
        for y in range(ground, h, step):
            cv2.line(img, (0, y), (w, y), col, 1)
            off = (y // step % 2) * step
            for x in range(off, w, 2 * step):
                cv2.line(img, (x, y), (x, min(h, y + step)), col, 1)
    for _ in range(int(rng.integers(0, 4)) if rng.random() < 0.5 else 0):
        _tree(rng, img, int(rng.integers(0, w)), int(rng.integers(0, max(1, horizon + 1))),
              int(rng.integers(h // 12, h // 3) + 2))
    # Photographed surfaces are never flat: multi-scale texture and uneven light over everything.
    img += fractal(rng, h, w)[..., None] * rng.uniform(3, 18) * (1 + rng.normal(0, 0.1, 3)).astype(np.float32)
    img *= (1 + 0.15 * fractal(rng, h, w, 2))[..., None]
    grey = img.mean(axis=2, keepdims=True)  # streets are mostly muted colours
    img[:] = grey + (img - grey) * rng.uniform(0.25, 0.9)
    return img


def _text_patch(rng: np.random.Generator, img: np.ndarray, s: str, x: int, y: int, cap: float,
                col) -> tuple[int, int, int, int]:
    fonts = font_table()
    m = text_mask(fonts[int(rng.integers(0, len(fonts)))].path, s, cap, stretch=rng.uniform(0.8, 1.3))
    blend(img, m, col, x, y)
    return x, y, x + m.shape[1], y + m.shape[0]


def _overlaps(box, boxes, pad: float = 2.0) -> bool:
    return any(box[0] < b[2] + pad and b[0] < box[2] + pad and box[1] < b[3] + pad and b[1] < box[3] + pad
               for b in boxes)


def draw_car(rng: np.random.Generator, img: np.ndarray, cx: float, cy: float, pw: float, ph: float, cw: float,
             keep_clear: list) -> None:
    """A car ``cw`` wide around a plate centred at (cx, cy): body, window, lights, bumper, badge, lettering."""
    ch = cw * rng.uniform(0.7, 0.95)
    x0 = cx - cw / 2 + rng.normal(0, 0.03) * cw
    y0 = cy - ch * rng.uniform(0.6, 0.72)
    # About half of real cars are white, silver or grey: light plates on light paint must be found by their text.
    palette = LIGHT_CAR_COLOURS if rng.random() < 0.45 else CAR_COLOURS
    body = (np.array(palette[int(rng.integers(0, len(palette)))], np.float32)
            + rng.uniform(-15, 15, 3).astype(np.float32))
    H, W = img.shape[:2]
    ground = y0 + ch * 1.02
    shadow = np.zeros((H, W), np.float32)
    cv2.ellipse(shadow, (round(cx), round(ground)), (round(cw * 0.55), max(1, round(ch * 0.05))), 0, 0, 360, 0.6, -1)
    for sx in (x0 + cw * 0.06, x0 + cw * 0.8):  # tyres
        cv2.rectangle(shadow, (round(sx), round(y0 + ch * 0.8)), (round(sx + cw * 0.14), round(ground)), 0.9, -1)
    blend(img, shadow, (18, 18, 20))
    bx0, by0, bx1, by1 = (max(-W, round(v)) for v in (x0, y0, x0 + cw, y0 + ch * 0.93))
    if bx1 > 0 and by1 > 0 and bx0 < W and by0 < H:  # body with vertical shading, clipped to the frame
        xa, ya, xb, yb = max(0, bx0), max(0, by0), min(W, bx1), min(H, by1)
        m = rounded_rect((yb - ya, xb - xa), bx0 - xa, by0 - ya, bx1 - xa, by1 - ya, cw * rng.uniform(0.05, 0.15))
        t = np.linspace(0, 1, by1 - by0, dtype=np.float32)[ya - by0: yb - by0]
        shade = (1.12 - 0.3 * t + rng.uniform(0.05, 0.25) * np.exp(-((t - rng.uniform(0.3, 0.6)) / 0.06) ** 2))
        region = img[ya:yb, xa:xb]
        region[:] = region * (1 - m[..., None]) + (body * shade[:, None, None]) * m[..., None]
    if rng.random() < 0.85:  # rear window with a sky reflection
        pts = np.array([[x0 + cw * rng.uniform(0.12, 0.25), y0 + ch * 0.05],
                        [x0 + cw * rng.uniform(0.75, 0.88), y0 + ch * 0.05],
                        [x0 + cw * 0.92, y0 + ch * rng.uniform(0.3, 0.42)],
                        [x0 + cw * 0.08, y0 + ch * rng.uniform(0.3, 0.42)]], np.float32)
        cv2.fillPoly(img, [np.round(pts).astype(np.int32)], _col(rng, 15, 70), cv2.LINE_AA)
    crease = round(y0 + ch * rng.uniform(0.4, 0.5))
    cv2.line(img, (round(x0 + cw * 0.03), crease), (round(x0 + cw * 0.97), crease), tuple(float(v) for v in body * 0.6),
             1, cv2.LINE_AA)
    front = rng.random() < 0.4
    ly, lh, lw = y0 + ch * rng.uniform(0.38, 0.55), ch * rng.uniform(0.05, 0.12), cw * rng.uniform(0.1, 0.2)
    # Light and gloss are drawn in the car's own box: full-frame float layers per car are slow.
    rx0, ry0 = max(0, int(x0 - cw * 0.1)), max(0, int(y0 - ch * 0.1))
    rx1, ry1 = min(W, int(x0 + cw * 1.1) + 1), min(H, int(y0 + ch * 1.1) + 1)
    lamps = np.zeros((H, W), np.float32)
    for side in (0, 1):  # head lamps (white, often lit) or tail lamps (red, sometimes braking)
        lx = x0 + cw * 0.02 if side == 0 else x0 + cw * 0.98 - lw
        tilt = lh * rng.uniform(-0.5, 0.5) * (1 if side == 0 else -1)
        pts = np.array([[lx, ly + tilt], [lx + lw, ly - tilt], [lx + lw, ly + lh - tilt], [lx, ly + lh + tilt]],
                       np.float32)
        shell = (220, 225, 230) if front else (25, 25, rng.uniform(120, 200))
        cv2.fillPoly(img, [np.round(pts).astype(np.int32)], shell, cv2.LINE_AA)
        core = pts.mean(0)
        cv2.ellipse(lamps, (round(core[0]), round(core[1])), (max(1, round(lw * 0.3)), max(1, round(lh * 0.3))),
                    0, 0, 360, 1.0, -1)
    lit = rng.random() < (0.6 if front else 0.3)
    if lit and rx1 > rx0 and ry1 > ry0:
        _glow(img[ry0:ry1, rx0:rx1], lamps[ry0:ry1, rx0:rx1], (200, 220, 235) if front else (30, 30, 230),
              rng.uniform(0.5, 2.5))
    if front:  # grille between the lamps, above the plate
        gx0, gx1 = round(x0 + cw * 0.25), round(x0 + cw * 0.75)
        gy0, gy1 = round(ly), round(min(cy - ph * 0.8, ly + ch * 0.15))
        if gy1 > gy0 + 2 and not _overlaps((gx0, gy0, gx1, gy1), keep_clear):
            cv2.rectangle(img, (gx0, gy0), (gx1, gy1), _col(rng, 10, 50), -1)
            bar = _col(rng, 90, 200)
            for gy in range(gy0 + 2, gy1, max(2, round(ph * rng.uniform(0.15, 0.4)))):
                cv2.line(img, (gx0, gy), (gx1, gy), bar, 1, cv2.LINE_AA)
    for wx in (x0 + cw * 0.13, x0 + cw * 0.87):  # tyres and rims peeking out below the body
        r = cw * rng.uniform(0.09, 0.12)
        cv2.ellipse(img, (round(wx), round(ground - r * 0.8)), (max(1, round(r * 0.7)), max(1, round(r))),
                    0, 0, 360, (20, 20, 22), -1)
    # Paint is glossy: a soft highlight band and sensor-like mottling on the body.
    hy = round(y0 + ch * rng.uniform(0.1, 0.5))
    if rx1 > rx0 and ry1 > ry0:
        band = np.zeros((ry1 - ry0, rx1 - rx0), np.float32)
        cv2.rectangle(band, (round(x0) - rx0, hy - ry0), (round(x0 + cw) - rx0, hy - ry0 + max(1, round(ch * 0.05))),
                      rng.uniform(10, 50), -1)
        img[ry0:ry1, rx0:rx1] += cv2.GaussianBlur(band, (0, 0), max(1.0, ch * 0.03))[..., None]
    # Modern bumpers are mostly painted like the body; older and utility ones are black or grey plastic.
    bumper = tuple(float(v) for v in (body * rng.uniform(0.2, 0.8) if rng.random() < 0.35
                                      else body * rng.uniform(0.9, 1.05)))
    top = round(cy + ph * rng.uniform(0.6, 1.4))
    cv2.rectangle(img, (round(x0 + cw * 0.01), top), (round(x0 + cw * 0.99), round(y0 + ch * 0.93)), bumper, -1)
    cv2.line(img, (round(x0 + cw * 0.01), top), (round(x0 + cw * 0.99), top),
             tuple(min(255.0, v * 1.4 + 20) for v in bumper), 1)
    _plate_surround(rng, img, body, cx, cy, pw, ph, keep_clear)
    if rng.random() < 0.7:  # badge
        r = max(2, round(ph * rng.uniform(0.2, 0.4)))
        centre = (round(cx), round(cy - ph * rng.uniform(1.1, 2.0)))
        if not _overlaps((centre[0] - r, centre[1] - r, centre[0] + r, centre[1] + r), keep_clear):
            cv2.ellipse(img, centre, (r, round(r * 0.7)), 0, 0, 360, (190, 190, 195), -1, cv2.LINE_AA)
            cv2.ellipse(img, centre, (max(1, r * 2 // 3), max(1, r // 2)), 0, 0, 360, (90, 90, 95), max(1, r // 4),
                        cv2.LINE_AA)
    if rng.random() < 0.6:  # model lettering on the body
        s = WORDS[int(rng.integers(0, len(WORDS)))]
        x, y = round(x0 + cw * rng.uniform(0.05, 0.6)), round(y0 + ch * rng.uniform(0.38, 0.6))
        cap = ph * rng.uniform(0.2, 0.45)
        box = (x, y, x + cap * len(s) * 0.8, y + cap * 1.7)
        if not _overlaps(box, keep_clear):
            _text_patch(rng, img, s, x, y, cap, (200, 200, 205) if body.mean() < 128 else (40, 40, 40))
    if rng.random() < 0.35:  # dealer line under the plate
        s = WORDS[int(rng.integers(0, len(WORDS)))].upper()
        cap = ph * 0.13
        x, y = round(cx - pw * 0.45), round(cy + ph * 0.58)
        if not _overlaps((x, y, x + pw * 0.9, y + cap * 1.7), keep_clear, pad=0):
            _text_patch(rng, img, s, x, y, cap, (230, 230, 230))


def _plate_surround(rng: np.random.Generator, img: np.ndarray, body: np.ndarray, cx: float, cy: float, pw: float,
                    ph: float, keep_clear: list) -> None:
    """What sits within a plate width of a real plate: recess, plate frame, trim, lid edge, camera, screws' shadow.

    Real plates are found among these edges (the plate is drawn over them
    afterwards); a detector that has only seen plates on plain paint rejects
    plates on real car rears.
    """
    def box(x0, y0, x1, y1):
        return round(cx + x0 * pw), round(cy + y0 * ph), round(cx + x1 * pw), round(cy + y1 * ph)

    def tone(k):
        return tuple(float(np.clip(v, 0, 255)) for v in body * k)

    if rng.random() < 0.65:  # recess or holder: a little darker or lighter than the paint, shadowed at the top
        gx, gy = rng.uniform(0.52, 0.75), rng.uniform(0.6, 1.1)
        x0, y0, x1, y1 = box(-gx, -gy, gx, gy)
        cv2.rectangle(img, (x0, y0), (x1, y1), tone(rng.uniform(0.5, 1.05)), -1)
        cv2.line(img, (x0, y0), (x1, y0), tone(rng.uniform(0.25, 0.6)), max(1, round(ph * rng.uniform(0.04, 0.15))),
                 cv2.LINE_AA)
        cv2.line(img, (x0, y1), (x1, y1), tone(rng.uniform(1.1, 1.3)), 1, cv2.LINE_AA)
        for x in (x0, x1):
            cv2.line(img, (x, y0), (x, y1), tone(rng.uniform(0.4, 0.8)), 1, cv2.LINE_AA)
    if rng.random() < 0.4:  # plate frame, chrome or black, often with a dealer's name on its bars
        frame = _col(rng, 170, 235) if rng.random() < 0.5 else _col(rng, 10, 45)
        x0, y0, x1, y1 = box(-0.54, -0.5 - rng.uniform(0.08, 0.25), 0.54, 0.5 + rng.uniform(0.1, 0.35))
        cv2.rectangle(img, (x0, y0), (x1, y1), frame, -1)
        if rng.random() < 0.6 and y1 - (cy + ph * 0.5) > 4:
            s = WORDS[int(rng.integers(0, len(WORDS)))].upper()
            cap = (y1 - (cy + ph * 0.5)) * 0.55
            ink = (235, 235, 235) if np.mean(frame) < 128 else (30, 30, 30)
            _text_patch(rng, img, s, round(cx - pw * 0.3), round(cy + ph * 0.52), cap, ink)
    if rng.random() < 0.5:  # trunk lid edge or chrome strip above the plate
        y = round(cy - ph * rng.uniform(0.8, 1.8))
        half = pw * rng.uniform(0.7, 2.0)
        colour = _col(rng, 180, 245) if rng.random() < 0.5 else tone(rng.uniform(0.3, 0.6))
        thick = max(1, round(ph * rng.uniform(0.05, 0.25)))
        if not _overlaps((cx - half, y - thick, cx + half, y + thick), keep_clear):
            cv2.line(img, (round(cx - half), y), (round(cx + half), y), colour, thick, cv2.LINE_AA)
    if rng.random() < 0.3:  # lid handle or reversing camera just above the plate
        x0, y0, x1, y1 = box(-rng.uniform(0.1, 0.3), -0.5 - rng.uniform(0.35, 0.6), rng.uniform(0.1, 0.3),
                             -0.5 - rng.uniform(0.1, 0.3))
        if not _overlaps((x0, y0, x1, y1), keep_clear):
            cv2.rectangle(img, (x0, y0), (x1, y1), _col(rng, 15, 70), -1)
    if rng.random() < 0.35:  # bumper crease or reflector strip below the plate
        y = round(cy + ph * rng.uniform(0.8, 1.6))
        half = pw * rng.uniform(0.6, 1.8)
        cv2.line(img, (round(cx - half), y), (round(cx + half), y), tone(rng.uniform(0.4, 0.8)) if rng.random() < 0.7
                 else (30, 30, rng.uniform(120, 200)), max(1, round(ph * rng.uniform(0.05, 0.2))), cv2.LINE_AA)


def _plate_quad(rng: np.random.Generator, cx: float, cy: float, pw: float, ph: float, max_roll: float) -> np.ndarray:
    """Outer corners of a plate turned in 3-D (yaw, camera looking down, roll) and projected by a pinhole."""
    yaw = np.deg2rad(np.clip(rng.normal(0, 16), -45, 45))
    pitch = np.deg2rad(np.clip(rng.normal(8, 10), -15, 35))
    roll = np.deg2rad(np.clip(rng.normal(0, max_roll / 3), -max_roll, max_roll))
    cy_, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    rot = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, cp, sp], [0, -sp, cp]]) \
        @ np.array([[cy_, 0, sy], [0, 1, 0], [-sy, 0, cy_]])
    pts = np.array([[-pw / 2, -ph / 2, 0], [pw / 2, -ph / 2, 0], [pw / 2, ph / 2, 0], [-pw / 2, ph / 2, 0]]) @ rot.T
    dist = pw * rng.uniform(2.5, 10)  # camera distance in plate widths: nearer means stronger keystone
    return (pts[:, :2] * (dist / (dist + pts[:, 2:3])) + (cx, cy)).astype(np.float32)


def paste_plate(img: np.ndarray, plate: np.ndarray, quad: np.ndarray) -> None:
    """Warp a BGRA plate onto float image ``img`` at ``quad``, touching only its bounding box."""
    H, W = img.shape[:2]
    x0, y0 = np.floor(quad.min(0)).astype(int) - 1
    x1, y1 = np.ceil(quad.max(0)).astype(int) + 2
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(W, x1), min(H, y1)
    if x1 - x0 < 1 or y1 - y0 < 1:  # wholly outside the image (an oval sticker beside a plate at its edge)
        return
    ph, pw = plate.shape[:2]
    src = np.array([[0, 0], [pw, 0], [pw, ph], [0, ph]], np.float32)
    hom = cv2.getPerspectiveTransform(src, (quad - np.array([x0, y0], np.float32)).astype(np.float32))
    flags = cv2.INTER_AREA if (x1 - x0) < pw / 2 else cv2.INTER_LINEAR
    warped = cv2.warpPerspective(plate, hom, (x1 - x0, y1 - y0), flags=flags, borderValue=(0, 0, 0, 0))
    a = warped[..., 3:4].astype(np.float32) / 255.0
    region = img[y0:y1, x0:x1]
    region[:] = region * (1 - a) + warped[..., :3].astype(np.float32) * a


#: Share of plates of countries with a band code (Europe and neighbours) that carry the oval national sticker
#: beside them, as cars driven abroad without the band must: its letters are never part of the text.
OVAL_SHARE = 0.12


def oval_sticker(rng: np.random.Generator, img: np.ndarray, quad: np.ndarray, format_name: str) -> None:
    """The white oval with the country's distinguishing letters, left of the plate at ``quad`` (some of the
    time, for countries whose style has a band with codes)."""
    band = catalogue().entry(format_name).style.band
    if band is None or not band.codes or band.kind == "mercosur" or rng.random() >= OVAL_SHARE:
        return
    code = band.codes[int(rng.integers(len(band.codes)))]
    tl, tr, br, bl = quad.astype(np.float32)
    down = ((bl - tl) + (br - tr)) / 2
    right = ((tr - tl) + (br - bl)) / 2
    h = float(np.linalg.norm(down))
    if h < 4:
        return
    unit = right / max(1e-6, float(np.linalg.norm(right)))
    ow, oh = 1.5 * h, 1.0 * h
    gap = rng.uniform(0.1, 0.6) * h
    centre = (tl + bl) / 2 - unit * (gap + ow / 2)
    half_r, half_d = unit * ow / 2, down / np.linalg.norm(down) * oh / 2
    oquad = np.array([centre - half_r - half_d, centre + half_r - half_d, centre + half_r + half_d,
                      centre - half_r + half_d], np.float32)
    size = (64, 96)
    canvas = np.zeros((*size, 4), np.uint8)
    cv2.ellipse(canvas, (48, 32), (46, 30), 0, 0, 360, (245, 245, 245, 255), -1, cv2.LINE_AA)
    cv2.ellipse(canvas, (48, 32), (46, 30), 0, 0, 360, (20, 20, 20, 255), 2, cv2.LINE_AA)
    scale = 1.3 if len(code) <= 2 else 0.9
    (tw, th), _ = cv2.getTextSize(code, cv2.FONT_HERSHEY_DUPLEX, scale, 3)
    cv2.putText(canvas, code, (48 - tw // 2, 32 + th // 2), cv2.FONT_HERSHEY_DUPLEX, scale, (15, 15, 15, 255), 3,
                cv2.LINE_AA)
    paste_plate(img, canvas, oquad)


def _plate_width(rng: np.random.Generator, w: int) -> float:
    # Roadside and parking cameras frame whole cars: most plates are 4-15 % of the frame width. (A third of
    # plates at gate-camera scale, up to 60 %, read seed480 2 points better and US plates 5 points worse.)
    lo, hi = (0.04, 0.15) if rng.random() < 0.7 else (0.03, 0.4)
    return w * float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _distractors(rng: np.random.Generator, img: np.ndarray, keep_clear: list) -> None:
    """Signs, stickers and a camera timestamp: text that is not a plate."""
    h, w = img.shape[:2]
    if rng.random() < 0.35:
        ts = f"20{rng.integers(10, 25)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d} " \
             f"{rng.integers(0, 24):02d}:{rng.integers(0, 60):02d}:{rng.integers(0, 60):02d}"
        cap = h * rng.uniform(0.015, 0.035)
        x, y = (int(rng.integers(2, w // 8)), 2) if rng.random() < 0.7 else (int(w * 0.55), int(h - cap * 2))
        if not _overlaps((x, y, x + cap * len(ts) * 0.8, y + 2 * cap), keep_clear):
            _text_patch(rng, img, ts, x, y, cap, (240, 240, 240))
    for _ in range(int(rng.integers(0, 4))):
        cap = h * rng.uniform(0.02, 0.06)
        s = WORDS[int(rng.integers(0, len(WORDS)))] if rng.random() < 0.6 else \
            "".join(LETTERS[i] for i in rng.integers(0, 26, int(rng.integers(2, 7))))
        x, y = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        box = (x - cap, y - cap, x + cap * (len(s) * 0.8 + 1), y + cap * 2.5)
        if _overlaps(box, keep_clear):
            continue
        bg = _col(rng)
        if rng.random() < 0.7:
            cv2.rectangle(img, (round(box[0]), round(box[1])), (round(box[2]), round(box[3])), bg, -1)
        _text_patch(rng, img, s, x, y, cap, (20, 20, 20) if np.mean(bg) > 110 else (235, 235, 235))
        keep_clear.append(box)


def make_scene(rng: np.random.Generator, width: int = 512, height: int = 384, max_plates: int = 3,
               photos: tuple[str, ...] = ()) -> Scene:
    """A street/parking frame with 0..max_plates labelled plates (mostly on cars) and unlabelled text.

    ``photos``: optional background pictures (see ``background``).
    """
    img = background(rng, height, width, photos)
    n = (0 if max_plates == 0 or rng.random() < 0.12
         else int(min(max_plates, rng.choice([1, 2, 3, 4], p=[.55, .28, .12, .05]))))
    placed: list[tuple[PlateInstance, np.ndarray, float, float]] = []  # plate, image, height, car width
    boxes: list = []
    cars: list = []
    for _ in range(n * 8):
        if len(placed) == n:
            break
        text, fmt = random_text(rng)
        share = catalogue().entry(fmt).spec.two_row_share
        two = share >= 1 or (share > 0 and rng.random() < share)
        pw = _plate_width(rng, width)
        ph = pw / plate_aspect(fmt, two)  # nominal; the rendered plate decides the final quad
        if 2 * ph >= height or 1.2 * pw >= width:
            continue  # a big plate in a small (wide) frame: draw another size
        cx, cy = rng.uniform(pw * 0.6, width - pw * 0.6), rng.uniform(ph, height - ph)
        box = (cx - pw * 0.6, cy - ph * 0.7, cx + pw * 0.6, cy + ph * 0.7)
        cw = pw * CAR_WIDTH_MM / plate_width_mm(fmt, two) * rng.uniform(0.95, 1.2) if rng.random() < 0.88 else 0.0
        car = (cx - cw * 0.55, cy - cw * 0.7, cx + cw * 0.55, cy + cw * 0.4)
        if (box[0] < 2 or box[2] > width - 2 or box[1] < 2 or box[3] > height - 2 or _overlaps(box, boxes, pad=4.0)
                or _overlaps(box, cars) or (cw and _overlaps(car, boxes))):
            continue  # plates never touch each other nor sit on another plate's car
        plate, rows = render_plate(rng, text, fmt, two_rows=two, width_px=int(np.clip(pw * 1.4, 48, 320)))
        ph = pw * plate.shape[0] / plate.shape[1]
        quad = _plate_quad(rng, cx, cy, pw, ph, 8.0)
        if not inside(quad, width, height, 2.0):
            continue
        boxes.append(box)
        cars += [car] if cw else []
        placed.append((PlateInstance(text, fmt, quad, rows), plate, ph, cw))
    placed.sort(key=lambda p: p[2])  # far (small) cars first so near cars overlap them
    keep = [(*p[0].quad.min(0), *p[0].quad.max(0)) for p in placed]
    for _ in range(int(rng.integers(0, 3))):  # cars whose plate is hidden or absent: lamps and grilles are not plates
        pw = _plate_width(rng, width)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        ph = pw / 3
        if not _overlaps((cx - pw * 2.5, cy - pw * 2.5, cx + pw * 2.5, cy + pw * 1.5), keep + boxes):
            draw_car(rng, img, cx, cy, pw, ph, pw * rng.uniform(3.5, 6.5), keep)
    for inst, _, ph, cw in placed:
        if cw:
            cx, cy = inst.quad.mean(0)
            draw_car(rng, img, cx, cy, float(np.linalg.norm(inst.quad[1] - inst.quad[0])), ph, cw, keep)
    _distractors(rng, img, list(keep))
    for inst, plate, _, _ in placed:  # plates last: a nearer car's body never hides a labelled plate
        oval_sticker(rng, img, inst.quad, inst.format)
        paste_plate(img, plate, inst.quad)
    out = np.clip(img, 0, 255).astype(np.uint8)
    res_factor = rng.uniform(0.5, 1.0) if rng.random() < 0.15 else 1.0
    # Most frames stand for a larger camera frame that the detector sees shrunk (1280-1920 px wide): its blur,
    # noise and JPEG shrink with it. Real far plates in HD frames stay sharp at the detector's scale.
    camera_scale = (float(np.clip(width / rng.uniform(640, 1920), 0.25, 1.0))
                    if res_factor == 1.0 and rng.random() < 0.85 else 1.0)
    out, quads = apply_camera(rng, out, [p[0].quad for p in placed], res_factor=res_factor, camera_scale=camera_scale)
    plates = [PlateInstance(p[0].text, p[0].format, q.astype(np.float32), p[0].rows)
              for p, q in zip(placed, quads, strict=True)]
    return Scene(out, plates)


def make_plate_patch(rng: np.random.Generator, out_w: int = 256, out_h: int = 128,
                     plate: tuple[str, str] | None = None, photos: tuple[str, ...] = ()) -> Scene:
    """One plate filling 40-90 % of the patch width on car-like context, seen by a low-resolution camera.

    ``plate`` (text, format) fixes the text; by default it is drawn at random.
    """
    text, fmt = plate if plate is not None else random_text(rng)
    pw = out_w * rng.uniform(0.4, 0.9)
    drawn, rows = render_plate(rng, text, fmt, width_px=int(np.clip(pw * 1.25, 64, 320)))
    ph = pw * drawn.shape[0] / drawn.shape[1]
    if ph > out_h * 0.85:  # tall (two-row / US) plates are limited by the patch height
        pw, ph = pw * out_h * 0.85 / ph, out_h * 0.85
    for attempt in range(8):
        cx = out_w / 2 + rng.uniform(-0.5, 0.5) * (out_w - pw) * 0.8
        cy = out_h / 2 + rng.uniform(-0.5, 0.5) * max(0.0, out_h - ph) * 0.6
        quad = _plate_quad(rng, cx, cy, pw, ph, 15.0 / (1 + attempt))
        if inside(quad, out_w, out_h, 1.0):
            break
    else:
        quad = _plate_quad(rng, out_w / 2, out_h / 2, pw * 0.8, ph * 0.8, 0.0)
    img = background(rng, out_h, out_w, photos)
    if rng.random() < 0.85:
        cw = pw * CAR_WIDTH_MM / plate_width_mm(fmt, rows == 2) * rng.uniform(0.95, 1.2)
        draw_car(rng, img, cx, cy, pw, ph, cw, [(*quad.min(0), *quad.max(0))])
    oval_sticker(rng, img, quad, fmt)
    paste_plate(img, drawn, quad)
    out = np.clip(img, 0, 255).astype(np.uint8)
    plate_h = float(np.linalg.norm(quad[3] - quad[0]))
    # Plate heights from barely legible (12 px) to close-up and sharp: close-ups must not look foreign.
    target = (float(np.exp(rng.uniform(np.log(12), np.log(80))))
              * (1.6 if rows == 1 and plate_aspect(fmt) < 2.6 else 1.0) * (1.7 if rows == 2 else 1.0))
    res_factor = min(1.0, target / max(plate_h, 1.0))
    out, quads = apply_camera(rng, out, [quad], warp=False, res_factor=res_factor)
    return Scene(out, [PlateInstance(text, fmt, quads[0], rows, seen_height=plate_h * res_factor)])
