"""Plate rendering from the country files: layout, colours, typeface, band, marks, embossing and wear.

A plate is laid out in millimetres from its format's style (``edge.formats.Style``:
size, colour schemes, typeface, band, captions, marks) and drawn at
``width_px`` pixels wide as BGRA, alpha being the plate's rounded outline.
Nothing here knows a country: every difference between plates is in the data.
"""
from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import cv2
import numpy as np

from edge.formats import Band, Style

from .fonts import SERIF_I, UPRIGHT_W, FontSpec, aspect, fonts_for, glyph, paste_glyph, text_mask
from .text import catalogue, spelled, split_groups

EU_YELLOW = (0, 204, 255)
#: Names on licence-plate frames that dealers fit: text near the plate that is not the plate.
DEALERS = ("SUNTRUP", "AUTO MALL", "FORD", "TOYOTA CENTER", "HONDA CARS", "LOU FUSZ", "CARMAX", "AUTOHAUS",
           "CONCESIONARIA", "RENAULT", "PEUGEOT", "FIAT", "VW ZENTRUM")


def _shift(a: np.ndarray, dx: int, dy: int) -> np.ndarray:
    out = np.zeros_like(a)
    H, W = a.shape[:2]
    out[max(0, dy): H + min(0, dy), max(0, dx): W + min(0, dx)] = \
        a[max(0, -dy): H - max(0, dy), max(0, -dx): W - max(0, dx)]
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


def _draw_row(ink: np.ndarray, deco: list, tokens: list, spec: FontSpec, x0: float, x1: float,
              cap_top: float, char_h: float, stretch: float, spacing: float, fixed_pitch: bool = False) -> None:
    """Lay a token row out centred in [x0, x1], condensing it when too wide.

    ``fixed_pitch``: every character takes the cell of a 0, a narrower one centred in it (as on faces where
    an I stands alone in a wide cell).
    """
    unit = {"gap": 0.35, "none": 0.0, "dash": 0.28, "dot": 0.2, "stamp": 0.42, "crest": 0.5, "seals": 0.42,
            "emblem": 0.5, "sticker": 0.5, "flag": 0.45}
    cell = aspect(spec.path, "0") * char_h * stretch
    widths = [unit[t] * char_h if t in unit else cell if fixed_pitch else aspect(spec.path, t) * char_h * stretch
              for t in tokens]
    space = spacing * char_h
    total = sum(widths) + space * (len(tokens) - 1)
    k = min(1.0, (x1 - x0) / total)
    x = x0 + ((x1 - x0) - total * k) / 2
    for t, w in zip(tokens, widths, strict=True):
        w *= k
        if t in ("dash", "stamp"):
            inset = 0.1 if t == "dash" else 0.25
            cv2.rectangle(ink, (round(x + inset * w), round(cap_top + 0.44 * char_h)),
                          (round(x + (1 - inset) * w), round(cap_top + 0.56 * char_h)), 1.0, -1)
            if t == "stamp":
                deco.append((t, x, cap_top, w, char_h))
        elif t == "dot":
            cv2.circle(ink, (round(x + w / 2), round(cap_top + 0.5 * char_h)), max(1, round(0.07 * char_h)), 1.0, -1)
        elif t in ("crest", "seals", "emblem", "sticker", "flag"):
            deco.append((t, x, cap_top, w, char_h))
        elif t not in ("gap", "none"):
            gw = min(w, aspect(spec.path, t) * char_h * stretch * k) if fixed_pitch else w
            paste_glyph(ink, glyph(spec.path, t), x + (w - gw) / 2, cap_top, gw, char_h)
        x += w + (space * k if t != "none" else 0.0)


def _crest(img: np.ndarray, x: float, top: float, w: float, h: float) -> None:
    """Croatian shield: red/white checkerboard with a rounded bottom."""
    cw, ch = max(3, round(w * 0.85)), max(4, round(h * 0.62))
    board = (np.indices((5, 5)).sum(0) % 2).astype(np.float32)
    board = cv2.resize(board, (cw, ch), interpolation=cv2.INTER_NEAREST)[..., None]
    colour = board * np.array((40, 40, 210), np.float32) + (1 - board) * np.array((245, 245, 245), np.float32)
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
        img = img * (1 - amount) + np.array((50, 70, 85), np.float32) * amount
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


def _bgr(hex_colour: str) -> tuple[float, float, float]:
    v = int(hex_colour[1:], 16)
    return float(v & 255), float((v >> 8) & 255), float(v >> 16)


def _glyph_char(spec: FontSpec, ch: str) -> str:
    """A list spelling's diacritic where the font has it, else its base letter."""
    if ch.isascii() or ch in spec.diacritics:
        return ch
    return unicodedata.normalize("NFD", ch)[0]


def _mark(img: np.ndarray, rng: np.random.Generator, kind: str, x: float, top: float, w: float, h: float) -> None:
    """A mark drawn between groups: crest, seals, an emblem, a sticker or a small flag."""
    if kind == "crest":
        _crest(img, x, top, w, h)
    elif kind == "stamp":  # round official stamps pressed over the dash: often one above and one below it
        r = max(2, round(min(w * 0.48, h * rng.uniform(0.17, 0.24))))
        places = (0.25, 0.75) if rng.random() < 0.6 else ((0.25,) if rng.random() < 0.5 else (0.75,))
        for place in places:
            cy = round(top + h * place)
            shade = tuple(float(v) for v in rng.integers(50, 200) * np.ones(3) + rng.integers(-10, 10, 3))
            cv2.circle(img, (round(x + w / 2), cy), r, shade, -1, cv2.LINE_AA)
            cv2.circle(img, (round(x + w / 2), cy), max(1, r - 2), tuple(v * 0.7 for v in shade), 1, cv2.LINE_AA)
    elif kind == "seals":
        _seals(img, rng, x, top, w, h)
    else:
        bw, bh = max(2, round(w * 0.9)), max(2, round(h * (0.55 if kind == "flag" else 0.8)))
        x0, y0 = round(x + (w - bw) / 2), round(top + (h - bh) / 2)
        colours = rng.integers(30, 240, (3, 3))
        if kind == "flag":  # three stripes
            for i in range(3):
                cv2.rectangle(img, (x0, y0 + i * bh // 3), (x0 + bw, y0 + (i + 1) * bh // 3),
                              tuple(float(v) for v in colours[i]), -1)
        elif kind == "sticker":
            cv2.circle(img, (x0 + bw // 2, y0 + bh // 2), max(1, min(bw, bh) // 2), tuple(float(v) for v in colours[0]),
                       -1, cv2.LINE_AA)
        else:
            cv2.rectangle(img, (x0, y0), (x0 + bw, y0 + bh), tuple(float(v) for v in colours[0]), -1)


def _band(img: np.ndarray, rng: np.random.Generator, band: Band, ppm: float, two_rows: bool) -> tuple[float, float]:
    """Draw the band; return the room it takes (left width, top height) in pixels. Its code is never text."""
    H, W = img.shape[:2]
    colour = np.array(_bgr(band.colour), np.float32) + rng.uniform(-20, 20, 3)
    small = fonts_for("generic")[0].path
    if band.kind == "mercosur":
        bh = H * (0.22 if not two_rows else 0.17)
        img[: round(bh)] = colour
        if band.caption:
            m = text_mask(small, band.caption, bh * 0.5)
            m = m if m.shape[1] < 0.6 * W else cv2.resize(m, (int(0.6 * W), m.shape[0]))
            blend(img, m, (245, 245, 245), (W - m.shape[1]) // 2, round(bh * 0.1))
        fw, fh = round(bh * 1.0), round(bh * 0.65)  # the country's flag at the right, the bloc's logo at the left
        fx, fy = round(W - fw - bh * 0.4), round((bh - fh) / 2)
        cv2.rectangle(img, (fx, fy), (fx + fw, fy + fh), tuple(float(v) for v in rng.integers(0, 256, 3)), -1)
        cv2.circle(img, (round(bh * 0.8), round(bh / 2)), max(1, round(bh * 0.3)), (245, 245, 245), 1, cv2.LINE_AA)
        return 0.0, bh
    band_w = rng.uniform(38, 50) * ppm * (0.8 if two_rows else 1.0)
    img[:, : round(band_w)] = colour
    code = band.codes[int(rng.integers(len(band.codes)))] if band.codes else ""
    if band.kind == "eu":
        cx, cy, r = band_w / 2, H * (0.3 if not two_rows else 0.25), band_w * 0.28
        for a in np.linspace(0, 2 * np.pi, 12, endpoint=False):
            cv2.circle(img, (round(cx + r * np.cos(a)), round(cy + r * np.sin(a))), max(1, round(ppm * 2.2)),
                       EU_YELLOW, -1, cv2.LINE_AA)
    if code:
        # Codes range from small print to letters a third of the plate's height (older and national bands).
        mask = text_mask(small, code, min(band_w * rng.uniform(0.5, 0.8) / max(1, len(code) * 0.6),
                                          H * rng.uniform(0.2, 0.32)))
        y = round(H * 0.58) if band.kind == "eu" else round(H / 2 - mask.shape[0] / 2)
        blend(img, mask, (245, 245, 245), round(band_w / 2 - mask.shape[1] / 2), y)
    return band_w, 0.0


def _caption(img: np.ndarray, rng: np.random.Generator, texts: list[str], ink, y: float, cap_h: float) -> None:
    W = img.shape[1]
    fonts = fonts_for("generic") + fonts_for("us")
    m = text_mask(fonts[int(rng.integers(len(fonts)))].path, texts[int(rng.integers(len(texts)))], cap_h)
    m = m if m.shape[1] < 0.8 * W else cv2.resize(m, (int(0.8 * W), m.shape[0]))
    blend(img, m, ink, (W - m.shape[1]) // 2, round(y))


#: Gap marks that stand on their own: at a two-row plate's row split they end the top row (the Croatian
#: crest after the district code), where a gap or a dash is simply not drawn.
STANDALONE_MARKS = ("crest", "seals", "emblem", "sticker", "flag")


def _tokens(groups: list[str], gaps: Sequence[str], spec: FontSpec, format_name: str, first: int,
            last: bool = True, forms: dict[str, str] | None = None) -> list:
    """A row's tokens: the glyphs of its groups (as the plate spells them) with the marks between them.

    ``forms`` maps a character to the drawn form this plate's face gives it (see ``fonts.SERIF_I``).
    """
    out: list = []
    forms = forms or {}
    for k, g in enumerate(groups):
        if k:
            out.append(gaps[first + k - 1])
        out.extend(forms.get(c) or _glyph_char(spec, c) for c in spelled(g, format_name, first + k))
    split = first + len(groups) - 1
    if not last and split < len(gaps) and gaps[split] in STANDALONE_MARKS:
        out.append(gaps[split])
    return out


def render_plate(rng: np.random.Generator, text: str, format_name: str, two_rows: bool | None = None,
                 width_px: int = 320, wear: bool = True) -> tuple[np.ndarray, int]:
    """Render a plate as BGRA uint8 (alpha = plate outline); returns ``(image, rows)``.

    ``two_rows`` None draws it by the format's ``two_row_share``; a format that
    has only one kind of plate (share 0 or 1) keeps it whatever is asked.
    ``wear`` False leaves out faded ink and shaded sheets, for test clips that need plates in good repair.
    """
    entry = catalogue().entry(format_name)
    st: Style = entry.style
    fmt = entry.spec
    groups = split_groups(text, format_name)
    if fmt.two_row_share <= 0 or len(groups) < 2:
        two_rows = False
    elif fmt.two_row_share >= 1:
        two_rows = True
    elif two_rows is None:
        two_rows = bool(rng.random() < fmt.two_row_share)
    Wmm, Hmm = st.two_row_size_mm if two_rows else st.size_mm
    Hmm *= rng.uniform(0.97, 1.04)
    W = width_px
    ppm = W / Wmm
    H = max(8, round(Hmm * ppm))
    shares = np.array([c.share for c in st.colours], np.float64)
    scheme = st.colours[int(rng.choice(len(shares), p=shares / shares.sum()))]
    ink_colour = _bgr(scheme.ink)
    img = _base(rng, H, W, _bgr(scheme.background))
    faces = fonts_for(st.typeface)
    spec = faces[int(rng.integers(len(faces)))]
    if rng.random() < 0.1:  # a face the style does not name: readers must not lean on one typeface
        gen = fonts_for("generic")
        spec = gen[int(rng.integers(len(gen)))]
    if "emblem" in st.marks and rng.random() < 0.5:  # scenic or state graphic printed on the sheet
        shapes = np.zeros((H // 4 + 1, W // 4 + 1), np.float32)
        for _ in range(int(rng.integers(1, 4))):
            sh, sw = shapes.shape
            c = (int(rng.integers(0, sw)), int(rng.integers(0, sh)))
            axes = (int(rng.uniform(0.1, 0.4) * sw), int(rng.uniform(0.1, 0.4) * sh))
            cv2.ellipse(shapes, c, axes, 0, 0, 360, 1.0, -1)
        shapes = cv2.GaussianBlur(cv2.resize(shapes, (W, H)), (0, 0), 3) * rng.uniform(0.3, 0.6)
        blend(img, shapes, tuple(float(v) for v in rng.integers(60, 255, 3)))
    left, top_room = 0.0, 0.0
    if st.band is not None and rng.random() < st.band.share:
        left, top_room = _band(img, rng, st.band, ppm, two_rows)
    bottom_room = 0.0
    for cap in st.captions:
        if rng.random() >= cap.share:
            continue
        if cap.position == "top":
            h = rng.uniform(0.09, 0.14) * H
            _caption(img, rng, cap.texts, ink_colour, top_room + 0.03 * H, h)
            top_room += h * 1.5 + 0.03 * H
        else:
            h = rng.uniform(0.06, 0.09) * H
            _caption(img, rng, cap.texts, ink_colour, H - 0.04 * H - h * 1.3, h)
            bottom_room += h * 1.5 + 0.04 * H
    inset = rng.uniform(0.004, 0.01) * W
    ink = np.zeros((H, W), np.float32)
    if rng.random() < st.border:  # thin printed border line
        line = max(0.7, 0.0025 * W)
        border = rounded_rect((H, W), inset, inset, W - inset, H - inset, 0.01 * W)
        border -= rounded_rect((H, W), inset + line, inset + line, W - inset - line, H - inset - line, 0.008 * W)
        ink = np.clip(border, 0, 1)
    gaps = fmt.per_gap(fmt.gaps, "gaps")
    forms = {}
    if rng.random() < st.glyphs.serif_i:
        forms["I"] = SERIF_I
    if rng.random() < st.glyphs.upright_w:
        forms["W"] = UPRIGHT_W
    if two_rows:
        cut = min(fmt.two_row_split, len(groups) - 1)
        rows = [_tokens(groups[:cut], gaps, spec, format_name, 0, last=False, forms=forms),
                _tokens(groups[cut:], gaps, spec, format_name, cut, forms=forms)]
    else:
        rows = [_tokens(groups, gaps, spec, format_name, 0, forms=forms)]
    room = H - top_room - bottom_room
    if two_rows:
        char_h = min(room * 0.4, H * st.char_height * 0.55) * rng.uniform(0.92, 1.03)
    else:
        char_h = min(room * 0.82, H * st.char_height) * rng.uniform(0.92, 1.03)
    stretch = rng.uniform(0.55, 0.68) / aspect(spec.path, "0")
    fixed_pitch = bool(rng.random() < st.fixed_pitch)
    deco: list = []
    gap_y = (room - len(rows) * char_h) / (len(rows) + 1)
    for i, row in enumerate(rows):
        y = top_room + gap_y + i * (char_h + gap_y) + rng.uniform(-0.01, 0.01) * H
        _draw_row(ink, deco, row, spec, left + 0.015 * W, W - 0.02 * W, y, char_h, stretch, rng.uniform(0.08, 0.2),
                  fixed_pitch)
    for kind, x, y, w, h in deco:
        _mark(img, rng, kind, x, y, w, h)
    if "stickers" in st.marks and rng.random() < 0.5:  # registration / inspection stickers in a corner
        for x in ([0.04, 0.8] if rng.random() < 0.4 else [0.8]):
            sw, sh = round(0.14 * W), round(0.17 * H)
            cv2.rectangle(img, (round(x * W), round(0.05 * H)), (round(x * W) + sw, round(0.05 * H) + sh),
                          tuple(float(v) for v in rng.integers(0, 256, 3)), -1)
    screws: list[tuple[float, float]] = []
    if "screws" in st.marks and rng.random() < 0.6:
        screws = ([(0.15 * W, 0.1 * H), (0.85 * W, 0.1 * H)] if H / W > 0.35
                  else [(0.2 * W, 0.5 * H), (0.8 * W, 0.5 * H)])
    out = _finish(rng, img, ink, ink_colour, screws, 0.012 * W, wear)
    if "frame" in st.marks and rng.random() < 0.35:  # licence plate frame: dark rim with the dealer's name
        frame_col = (rng.integers(10, 60),) * 3 if rng.random() < 0.7 else (rng.integers(150, 220),) * 3
        rim = 1 - rounded_rect((H, W), 0.03 * W, rng.uniform(0.04, 0.1) * H, 0.97 * W, rng.uniform(0.8, 0.88) * H,
                               0.03 * W)
        f = out.astype(np.float32)
        blend(f, rim, tuple(float(v) for v in frame_col))
        m = text_mask(fonts_for("generic")[0].path, DEALERS[int(rng.integers(len(DEALERS)))], 0.07 * H)
        m = m if m.shape[1] < 0.9 * W else cv2.resize(m, (int(0.9 * W), m.shape[0]))
        blend(f, m, (235, 235, 235) if frame_col[0] < 100 else (20, 20, 20), (W - m.shape[1]) // 2, round(0.88 * H))
        out = f.astype(np.uint8)
    alpha = rounded_rect((H, W), 0, 0, W, H, rng.uniform(0.006, 0.03) * W)
    return np.dstack([out, (alpha * 255).astype(np.uint8)]), 2 if two_rows else 1


def plate_aspect(format_name: str, two_rows: bool = False) -> float:
    """Nominal width over height of a format's plate."""
    st = catalogue().entry(format_name).style
    w, h = st.two_row_size_mm if two_rows else st.size_mm
    return w / h


def plate_width_mm(format_name: str, two_rows: bool = False) -> float:
    """Nominal width of a format's plate in millimetres (cars are about 1,800 mm wide)."""
    st = catalogue().entry(format_name).style
    return (st.two_row_size_mm if two_rows else st.size_mm)[0]
