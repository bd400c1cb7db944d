"""Plate rendering: per-country layouts, colours, fonts, borders, embossing and wear.

Plates are laid out in millimetres (EU 520x110, US 305x152) and drawn at
``width_px`` pixels wide as BGRA, alpha being the plate's rounded outline.
"""
from __future__ import annotations

import cv2
import numpy as np

from edge.plates import FORMATS_BY_NAME

from .fonts import FontSpec, aspect, fonts_for, glyph, paste_glyph, text_mask
from .text import HR_CITIES, split_groups

EU_BLUE = (153, 51, 0)
EU_YELLOW = (0, 204, 255)
BAND_CODES = {"HR": ("HR",), "DE": ("D",), "GR": ("GR",), "GB": ("GB", "UK")}
BAND_PROB = {"HR": 0.45, "DE": 0.9, "GR": 0.75, "GB": 0.35}
US_INKS = ((100, 35, 15), (25, 25, 25), (35, 35, 175), (45, 105, 35), (45, 25, 110), (120, 60, 20))
US_BASES = ((245, 245, 245), (215, 235, 245), (245, 230, 215), (200, 240, 250), (235, 235, 225), (235, 215, 200))
US_STATES = ("CALIFORNIA", "New York", "TEXAS", "Illinois", "MISSOURI", "WASHINGTON", "Ohio", "FLORIDA",
             "Kentucky", "INDIANA", "ARIZONA", "Georgia", "Michigan", "TENNESSEE", "Oregon", "Nevada")
US_SLOGANS = ("THE EMPIRE STATE", "Land of Lincoln", "SHOW-ME STATE", "dmv.ca.gov", "Sunshine State",
              "In God We Trust", "Explore Minnesota", "Great Lakes", "www.ohio.gov", "Evergreen State")
DEALERS = ("SUNTRUP", "AUTO MALL", "FORD", "TOYOTA CENTER", "HONDA CARS", "LOU FUSZ", "CARMAX")


def _shift(a: np.ndarray, dx: int, dy: int) -> np.ndarray:
    out = np.zeros_like(a)
    H, W = a.shape[:2]
    out[max(0, dy): H + min(0, dy), max(0, dx): W + min(0, dx)] = a[max(0, -dy): H - max(0, dy), max(0, -dx): W - max(0, dx)]
    return out


def rounded_rect(shape: tuple[int, int], x0: float, y0: float, x1: float, y1: float, r: float) -> np.ndarray:
    """Filled rounded rectangle mask (float32 0..1), anti-aliased by 4x supersampling at the corners."""
    s = 4
    m = np.zeros((shape[0] * s, shape[1] * s), np.uint8)
    X0, Y0, X1, Y1, R = (round(v * s) for v in (x0, y0, x1, y1, max(r, 0.5)))
    cv2.rectangle(m, (X0 + R, Y0), (X1 - R, Y1), 255, -1)
    cv2.rectangle(m, (X0, Y0 + R), (X1, Y1 - R), 255, -1)
    for cx, cy in ((X0 + R, Y0 + R), (X1 - R, Y0 + R), (X0 + R, Y1 - R), (X1 - R, Y1 - R)):
        cv2.circle(m, (cx, cy), R, 255, -1)
    return cv2.resize(m, shape[::-1], interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def blend(img: np.ndarray, mask: np.ndarray, color, x: int = 0, y: int = 0, opacity: float = 1.0) -> None:
    """Paint ``color`` through ``mask`` placed at (x, y) into float image ``img`` (clipped)."""
    H, W = img.shape[:2]
    h, w = mask.shape[:2]
    xa, ya, xb, yb = max(0, x), max(0, y), min(W, x + w), min(H, y + h)
    if xa >= xb or ya >= yb:
        return
    m = mask[ya - y: yb - y, xa - x: xb - x, None] * opacity
    region = img[ya:yb, xa:xb]
    region *= 1 - m
    region += m * np.asarray(color, np.float32)


def _char(spec: FontSpec, ch: str) -> str:
    """Croatian district codes keep their diacritics where the font has them."""
    return ch if ch.isascii() or ch in spec.diacritics else ch.translate(str.maketrans("ČŠŽ", "CSZ"))


def row_texts(text: str, fmt: str) -> tuple[str, str]:
    """What the top and the bottom row of a two-row plate read (the reader's per-row labels).

    Follows the split that ``_rows`` draws.
    """
    g = split_groups(text, fmt)
    if fmt == "hr":
        return g[0], g[1] + g[2]
    if fmt == "gr":
        return g[0], g[1]
    if fmt == "de":
        return g[0] + g[1], g[2]
    if fmt == "uk_prefix":
        g = [g[0] + g[1], g[2]]
    elif fmt == "uk_suffix":
        g = [g[0], g[1] + g[2]]
    cut = 1 if len(g) < 3 else 2
    return "".join(g[:cut]), "".join(g[cut:])


def _rows(text: str, fmt: str, two_rows: bool, spec: FontSpec) -> list[list]:
    """Token rows: characters, 'gap', 'dash', 'crest' (HR) or 'seals' (DE)."""
    g = split_groups(text, fmt)
    if fmt == "hr":
        a, b = [_char(spec, c) for c in HR_CITIES.get(g[0], g[0])] + ["crest"], list(g[1]) + ["dash"] + list(g[2])
        return [a, b] if two_rows else [a + b]
    if fmt == "gr":
        a, b, sep = list(g[0]), list(g[1]), "dash"
    elif fmt == "de":
        a, b, sep = list(g[0]) + ["seals"] + list(g[1]), list(g[2]), "gap"
    else:
        if fmt == "uk_prefix":  # real plates read A123 BCD / ABC 123D
            g = [g[0] + g[1], g[2]]
        elif fmt == "uk_suffix":
            g = [g[0], g[1] + g[2]]
        cut = 1 if len(g) < 3 else 2
        a = list("".join(g[:cut])) if not two_rows else list(" ".join(g[:cut]))
        a, b, sep = [c if c != " " else "gap" for c in a], list("".join(g[cut:])), "gap"
    return [a, b] if two_rows else [a + [sep] + b]


def _draw_row(ink: np.ndarray, deco: list, tokens: list, spec: FontSpec, x0: float, x1: float,
              cap_top: float, char_h: float, stretch: float, spacing: float) -> None:
    """Lay a token row out centred in [x0, x1], condensing it when too wide."""
    unit = {"gap": 0.35, "dash": 0.28, "crest": 0.5, "seals": 0.42}
    widths = [unit[t] * char_h if t in unit else aspect(spec.path, t) * char_h * stretch for t in tokens]
    space = spacing * char_h
    total = sum(widths) + space * (len(tokens) - 1)
    k = min(1.0, (x1 - x0) / total)
    x = x0 + ((x1 - x0) - total * k) / 2
    for t, w in zip(tokens, widths):
        w *= k
        if t == "dash":
            cv2.rectangle(ink, (round(x + 0.1 * w), round(cap_top + 0.44 * char_h)),
                          (round(x + 0.9 * w), round(cap_top + 0.56 * char_h)), 1.0, -1)
        elif t in ("crest", "seals"):
            deco.append((t, x, cap_top, w, char_h))
        elif t != "gap":
            paste_glyph(ink, glyph(spec.path, t), x, cap_top, w, char_h)
        x += w + space * k


def _crest(img: np.ndarray, x: float, top: float, w: float, h: float) -> None:
    """Croatian shield: red/white checkerboard with a rounded bottom."""
    cw, ch = max(3, round(w * 0.85)), max(4, round(h * 0.62))
    board = (np.indices((5, 5)).sum(0) % 2).astype(np.float32)
    board = cv2.resize(board, (cw, ch), interpolation=cv2.INTER_NEAREST)[..., None]
    colour = board * np.float32((40, 40, 210)) + (1 - board) * np.float32((245, 245, 245))
    shield = np.zeros((ch, cw), np.float32)
    cv2.ellipse(shield, (cw // 2, ch // 2), (cw // 2, ch // 2), 0, 0, 180, 1.0, -1)
    shield[: ch // 2 + 1] = 1.0
    x0, y0 = round(x + (w - cw) / 2), round(top + h * 0.22)
    region = img[y0: y0 + ch, x0: x0 + cw]
    m = shield[: region.shape[0], : region.shape[1], None]
    region[:] = region * (1 - m) + colour[: region.shape[0], : region.shape[1]] * m
    cv2.rectangle(img, (x0, y0 - max(1, ch // 6)), (x0 + cw - 1, y0), (160, 90, 40), -1)


def _seals(img: np.ndarray, rng: np.random.Generator, x: float, top: float, w: float, h: float) -> None:
    """German registration seal over the inspection sticker."""
    r = max(2, round(min(w * 0.45, h * 0.2)))
    cx = round(x + w / 2)
    tuv = [(60, 90, 220), (80, 180, 80), (40, 160, 240), (200, 120, 60), (180, 100, 200)][int(rng.integers(0, 5))]
    cv2.circle(img, (cx, round(top + h * 0.25)), r, tuple(float(v) for v in rng.integers(90, 200, 3)), -1, cv2.LINE_AA)
    cv2.circle(img, (cx, round(top + h * 0.72)), r, tuv, -1, cv2.LINE_AA)
    cv2.circle(img, (cx, round(top + h * 0.72)), max(1, r // 2), (230, 230, 230), -1, cv2.LINE_AA)


def _finish(rng: np.random.Generator, img: np.ndarray, ink: np.ndarray, fg, screws: list[tuple[float, float]],
            screw_r: float, wear: bool = True) -> np.ndarray:
    """Ink with embossing, screws, dirt and glare; returns uint8 BGR.

    ``wear`` False: no faded ink and no shaded sheet (neither is drawn from ``rng``).
    """
    d = 1 if img.shape[0] < 120 or rng.random() < 0.5 else 2
    if rng.random() < 0.2:
        ink = cv2.dilate(ink, np.ones((2, 2), np.uint8))
    m = ink[..., None]
    fg = np.asarray(fg, np.float32)
    if wear and rng.random() < 0.12:  # an old, sun-faded plate: the ink moves towards the sheet
        fg = fg + rng.uniform(0.25, 0.55) * (img.mean((0, 1)) - fg)
    img = img * (1 - m) + fg * m
    if rng.random() < 0.75:  # raised characters: shadow one side, highlight the other
        strength = rng.uniform(0.2, 0.5)
        img *= 1 - strength * np.clip(_shift(ink, d, d) - ink, 0, 1)[..., None]
        img += strength * 90 * np.clip(_shift(ink, -d, -d) - ink, 0, 1)[..., None]
    for sx, sy in screws:
        col = tuple(float(v) for v in rng.integers(90, 210) * np.ones(3) + rng.integers(-15, 15, 3))
        cv2.circle(img, (round(sx), round(sy)), max(1, round(screw_r)), col, -1, cv2.LINE_AA)
        cv2.circle(img, (round(sx), round(sy)), max(1, round(screw_r * 0.4)), (60, 60, 60), -1, cv2.LINE_AA)
    H, W = img.shape[:2]
    if rng.random() < 0.45:  # dirt: smooth low-frequency blotches, brownish
        field = cv2.resize(rng.random((4, 8)).astype(np.float32), (W, H), interpolation=cv2.INTER_CUBIC)
        amount = np.clip(field - rng.uniform(0.4, 0.8), 0, 1)[..., None] * rng.uniform(0.4, 1.2)
        img = img * (1 - amount) + np.float32((50, 70, 85)) * amount
    if wear and rng.random() < 0.12:  # sheet in shade or lost its reflective coat: darker than the paint around it
        img *= rng.uniform(0.45, 0.8)
    if rng.random() < 0.25:  # reflective glare band
        ang, pos, width = rng.uniform(0, np.pi), rng.uniform(-0.3, 0.3), rng.uniform(0.1, 0.4)
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        t = ((xx / W - 0.5) * np.cos(ang) + (yy / H - 0.5) * np.sin(ang) - pos) / width
        img += rng.uniform(30, 110) * np.exp(-t * t)[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def _base(rng: np.random.Generator, H: int, W: int, colour) -> np.ndarray:
    """Plate sheet colour with a gentle gradient and grain."""
    img = np.empty((H, W, 3), np.float32)
    img[:] = np.asarray(colour, np.float32) + rng.uniform(-12, 4, 3)
    img *= np.linspace(1.0, rng.uniform(0.85, 1.05), H, dtype=np.float32)[:, None, None]
    grain = cv2.resize(rng.normal(0, rng.uniform(2, 7), (H // 4 + 1, W // 4 + 1)).astype(np.float32), (W, H))
    return img + grain[..., None]


def _render_eu(rng: np.random.Generator, text: str, fmt: str, country: str, two_rows: bool, W: int,
               wear: bool = True) -> np.ndarray:
    Wmm, Hmm = (rng.uniform(280, 340), rng.uniform(200, 210)) if two_rows else (520.0, rng.uniform(110, 116))
    ppm = W / Wmm
    H = round(Hmm * ppm)
    yellow = country == "GB" and rng.random() < 0.5
    img = _base(rng, H, W, (20, 200, 245) if yellow else (rng.integers(225, 252),) * 3)
    spec = fonts_for("uk" if country == "GB" else "eu")[int(rng.integers(0, len(fonts_for("uk" if country == "GB" else "eu"))))]
    if rng.random() < 0.1:
        gen = fonts_for("generic")
        spec = gen[int(rng.integers(0, len(gen)))]
    inset, band_w = rng.uniform(2, 5) * ppm, 0.0
    if rng.random() < BAND_PROB[country]:
        band_w = rng.uniform(38, 46) * ppm
        img[:, :round(band_w)] = np.float32(EU_BLUE) + rng.uniform(-20, 20, 3)
        cx, cy, r = band_w / 2, H * (0.3 if not two_rows else 0.25), band_w * 0.28
        for a in np.linspace(0, 2 * np.pi, 12, endpoint=False):
            cv2.circle(img, (round(cx + r * np.cos(a)), round(cy + r * np.sin(a))), max(1, round(ppm * 2.2)),
                       EU_YELLOW, -1, cv2.LINE_AA)
        code = BAND_CODES[country][int(rng.integers(0, len(BAND_CODES[country])))]
        mask = text_mask(fonts_for("generic")[0].path, code, min(band_w * 0.5 / max(1, len(code) * 0.6), H * 0.22))
        blend(img, mask, (245, 245, 245), round(cx - mask.shape[1] / 2), round(H * 0.58))
    ink = np.zeros((H, W), np.float32)
    if rng.random() < 0.85:  # thin black border
        border = rounded_rect((H, W), inset, inset, W - inset, H - inset, 5 * ppm)
        border -= rounded_rect((H, W), inset + 1.3 * ppm + 0.7, inset + 1.3 * ppm + 0.7,
                               W - inset - 1.3 * ppm - 0.7, H - inset - 1.3 * ppm - 0.7, 4 * ppm)
        ink = np.clip(border, 0, 1)
    rows = _rows(text, fmt, two_rows, spec)
    char_h = (rng.uniform(70, 79) if not two_rows else rng.uniform(66, 76)) * ppm
    stretch = rng.uniform(0.55, 0.68) / aspect(spec.path, "0")
    deco: list = []
    gap_y = (H - len(rows) * char_h) / (len(rows) + 1)
    for i, row in enumerate(rows):
        top = gap_y + i * (char_h + gap_y) + rng.uniform(-1, 1) * ppm
        _draw_row(ink, deco, row, spec, band_w + 7 * ppm, W - 8 * ppm, top, char_h, stretch, rng.uniform(0.08, 0.2))
    for kind, x, top, w, h in deco:
        (_crest(img, x, top, w, h) if kind == "crest" else _seals(img, rng, x, top, w, h))
    screws = [(W * 0.2, H * 0.5), (W * 0.8, H * 0.5)] if rng.random() < 0.25 and not two_rows else []
    out = _finish(rng, img, ink, (rng.integers(5, 40),) * 3, screws, 4 * ppm, wear)
    alpha = rounded_rect((H, W), 0, 0, W, H, rng.uniform(3, 10) * ppm)
    return np.dstack([out, (alpha * 255).astype(np.uint8)])


def _render_us(rng: np.random.Generator, text: str, W: int, wear: bool = True) -> np.ndarray:
    H = round(W / rng.uniform(1.9, 2.05))
    img = _base(rng, H, W, US_BASES[int(rng.integers(0, len(US_BASES)))])
    if rng.random() < 0.5:  # scenic graphic: a few soft colour shapes
        shapes = np.zeros((H // 4 + 1, W // 4 + 1), np.float32)
        for _ in range(int(rng.integers(1, 4))):
            sh, sw = shapes.shape
            c = (int(rng.integers(0, sw)), int(rng.integers(0, sh)))
            cv2.ellipse(shapes, c, (int(rng.uniform(0.1, 0.4) * sw), int(rng.uniform(0.1, 0.4) * sh)), 0, 0, 360, 1.0, -1)
        shapes = cv2.GaussianBlur(cv2.resize(shapes, (W, H)), (0, 0), 3) * rng.uniform(0.3, 0.7)
        blend(img, shapes, tuple(float(v) for v in rng.integers(60, 255, 3)))
    fg = US_INKS[int(rng.integers(0, len(US_INKS)))]
    spec = fonts_for("us")[int(rng.integers(0, len(fonts_for("us"))))]
    small = fonts_for("generic") + fonts_for("us")
    groups = split_groups(text, "us")
    sep = rng.choice(["none", "gap", "dash", "emblem"], p=[0.35, 0.3, 0.15, 0.2]) if len(groups) > 1 else "none"
    row: list = list(groups[0]) + ([] if sep == "none" else ["dash" if sep == "dash" else "gap"]) + list("".join(groups[1:]))
    char_h = rng.uniform(0.4, 0.5) * H
    top = rng.uniform(0.5, 0.58) * H - char_h / 2
    ink = np.zeros((H, W), np.float32)
    deco: list = []
    _draw_row(ink, deco, row, spec, 0.06 * W, 0.94 * W, top, char_h, rng.uniform(0.5, 0.62) / aspect(spec.path, "0"), rng.uniform(0.06, 0.16))
    if sep == "emblem":  # small state-shaped mark in the middle gap
        cols = np.flatnonzero(ink[round(top + char_h / 2)] > 0.5)
        gaps = np.diff(cols)
        if gaps.size:
            i = int(np.argmax(gaps))
            cx = (cols[i] + cols[i + 1]) // 2
            s = max(2, int(min(gaps[i] * 0.3, char_h * 0.3)))
            cv2.rectangle(img, (cx - s, round(top + char_h / 2) - s), (cx + s, round(top + char_h / 2) + s),
                          tuple(float(v) for v in rng.integers(30, 200, 3)), -1)
    state = US_STATES[int(rng.integers(0, len(US_STATES)))]
    m = text_mask(small[int(rng.integers(0, len(small)))].path, state, rng.uniform(0.09, 0.15) * H)
    m = m if m.shape[1] < 0.8 * W else cv2.resize(m, (int(0.8 * W), m.shape[0]))
    blend(img, m, fg if rng.random() < 0.5 else US_INKS[int(rng.integers(0, 6))], (W - m.shape[1]) // 2, round(0.03 * H))
    m = text_mask(small[int(rng.integers(0, len(small)))].path, US_SLOGANS[int(rng.integers(0, len(US_SLOGANS)))], rng.uniform(0.06, 0.09) * H)
    m = m if m.shape[1] < 0.8 * W else cv2.resize(m, (int(0.8 * W), m.shape[0]))
    blend(img, m, fg, (W - m.shape[1]) // 2, round(0.8 * H))
    for x in ([0.04, 0.8] if rng.random() < 0.5 else [0.8]) if rng.random() < 0.55 else []:  # registration stickers
        sw, sh = round(0.14 * W), round(0.17 * H)
        cv2.rectangle(img, (round(x * W), round(0.05 * H)), (round(x * W) + sw, round(0.05 * H) + sh),
                      tuple(float(v) for v in rng.integers(0, 256, 3)), -1)
    if rng.random() < 0.5:
        inset = 0.015 * W
        ring = rounded_rect((H, W), inset, inset, W - inset, H - inset, 0.04 * W)
        ring -= rounded_rect((H, W), inset + 0.008 * W + 0.7, inset + 0.008 * W + 0.7,
                             W - inset - 0.008 * W - 0.7, H - inset - 0.008 * W - 0.7, 0.035 * W)
        ink = np.maximum(ink, np.clip(ring, 0, 1))
    bolts = [(0.15 * W, 0.1 * H), (0.85 * W, 0.1 * H)] + ([(0.15 * W, 0.9 * H), (0.85 * W, 0.9 * H)] if rng.random() < 0.4 else [])
    out = _finish(rng, img, ink, fg, bolts if rng.random() < 0.7 else [], 0.013 * W, wear)
    if rng.random() < 0.35:  # licence plate frame: dark rim with the dealer's name at the bottom
        frame_col = (rng.integers(10, 60),) * 3 if rng.random() < 0.7 else (rng.integers(150, 220),) * 3
        rim = 1 - rounded_rect((H, W), 0.03 * W, rng.uniform(0.04, 0.1) * H, 0.97 * W, rng.uniform(0.8, 0.88) * H, 0.03 * W)
        f = out.astype(np.float32)
        blend(f, rim, tuple(float(v) for v in frame_col))
        m = text_mask(small[int(rng.integers(0, len(small)))].path, DEALERS[int(rng.integers(0, len(DEALERS)))], 0.07 * H)
        blend(f, m, (235, 235, 235) if frame_col[0] < 100 else (20, 20, 20), (W - m.shape[1]) // 2, round(0.88 * H))
        out = f.astype(np.uint8)
    alpha = rounded_rect((H, W), 0, 0, W, H, rng.uniform(0.01, 0.04) * W)
    return np.dstack([out, (alpha * 255).astype(np.uint8)])


def render_plate(rng: np.random.Generator, text: str, format_name: str, two_rows: bool | None = None,
                 width_px: int = 320, wear: bool = True) -> tuple[np.ndarray, int]:
    """Render a plate as BGRA uint8 (alpha = plate outline); returns ``(image, rows)``. US plates are one row.

    ``wear`` False leaves out faded ink and shaded sheets, for test clips that need plates in good repair.
    """
    country = FORMATS_BY_NAME[format_name].country
    if country == "US":
        return _render_us(rng, text, width_px, wear), 1
    if two_rows is None:
        two_rows = bool(rng.random() < 0.1)
    return _render_eu(rng, text, format_name, country, two_rows, width_px, wear), 2 if two_rows else 1
