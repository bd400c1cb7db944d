"""Font table (fonts/fonts.yaml) and a cache of rendered glyph masks.

Glyphs are rendered once, large, with PIL and then only resized with OpenCV:
PIL text drawing per sample would cost more than the whole plate budget.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT_DIR = Path(__file__).resolve().parents[2] / "fonts"
FALLBACK_FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSansCondensed-Bold.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSansNarrow-Bold.ttf",
)
GLYPH_PX = 64  # cap height of the cached glyphs
ABOVE, BELOW = 0.4, 0.3  # room above the cap line (diacritics) and below the baseline (descenders)


@dataclass(frozen=True)
class FontSpec:
    path: str
    styles: tuple[str, ...]
    diacritics: str = ""


def _parse_yaml(text: str) -> list[dict]:
    try:
        import yaml

        return list(yaml.safe_load(text).get("fonts", []))
    except ImportError:  # PyYAML is optional: the file is simple enough to scan
        out: list[dict] = []
        for block in re.split(r"\n\s*- file:", "\n" + text)[1:]:
            entry = {"file": block.split("\n")[0].strip().strip('"')}
            styles = re.search(r"styles:\s*\[([^\]]*)\]", block)
            entry["styles"] = [s.strip() for s in styles.group(1).split(",")] if styles else ["generic"]
            dia = re.search(r'diacritics:\s*"([^"]*)"', block)
            entry["diacritics"] = dia.group(1) if dia else ""
            out.append(entry)
        return out


@lru_cache(maxsize=1)
def font_table() -> tuple[FontSpec, ...]:
    """All usable fonts; falls back to system fonts when fonts/fonts.yaml is missing."""
    specs: list[FontSpec] = []
    listing = FONT_DIR / "fonts.yaml"
    if listing.exists():
        for e in _parse_yaml(listing.read_text(encoding="utf-8")):
            path = FONT_DIR / str(e["file"])
            if path.exists():
                specs.append(FontSpec(str(path), tuple(e.get("styles") or ["generic"]), str(e.get("diacritics") or "")))
    if not specs:
        specs = [FontSpec(p, ("uk", "eu", "us", "generic")) for p in FALLBACK_FONTS if Path(p).exists()]
    if not specs:
        raise FileNotFoundError(f"no fonts in {FONT_DIR} and no system fallback")
    return tuple(specs)


def fonts_for(style: str) -> tuple[FontSpec, ...]:
    found = tuple(f for f in font_table() if style in f.styles)
    return found or font_table()


@lru_cache(maxsize=64)
def _font(path: str) -> ImageFont.FreeTypeFont:
    """The font at the size whose cap height is GLYPH_PX."""
    probe = ImageFont.truetype(path, 100)
    top, bottom = probe.getbbox("H", anchor="ls")[1::2]
    size = max(8, round(100 * GLYPH_PX / max(1, bottom - top)))
    return ImageFont.truetype(path, size)


#: Drawn forms of characters that plate faces have and fonts rarely do (a country file's ``style.glyphs``).
SERIF_I, UPRIGHT_W = "I/serif", "W/upright"


def _form(path: str, name: str) -> np.ndarray:
    """A drawn form built from the font's own strokes, so it keeps the face's weight."""
    top, base = round(ABOVE * GLYPH_PX), round((1 + ABOVE) * GLYPH_PX)
    if name == UPRIGHT_W:  # the face's M turned over: upright stems, the middle apex up at the cap line
        m = glyph(path, "M").copy()
        m[top:base] = m[top:base][::-1]
        return m
    stem = glyph(path, "I")
    thick = max(2, stem.shape[1])
    width = max(3 * thick, round(0.42 * GLYPH_PX))
    out = np.zeros((stem.shape[0], width), np.float32)
    x0 = (width - stem.shape[1]) // 2
    out[:, x0: x0 + stem.shape[1]] = stem
    bar = max(2, round(thick * 0.8))
    out[top: top + bar] = 1.0
    out[base - bar: base] = 1.0
    return out


@lru_cache(maxsize=8192)
def glyph(path: str, ch: str) -> np.ndarray:
    """Mask (float32 0..1) of one character: cap line at row ABOVE*G, baseline at (1+ABOVE)*G, ink-tight columns.

    ``ch`` may also name a drawn form (``SERIF_I``, ``UPRIGHT_W``).
    """
    if ch in (SERIF_I, UPRIGHT_W):
        return _form(path, ch)
    font = _font(path)
    h = round((1 + ABOVE + BELOW) * GLYPH_PX)
    if ch == " ":
        return np.zeros((h, GLYPH_PX // 3), np.float32)
    canvas = Image.new("L", (3 * GLYPH_PX, h))
    base = round((1 + ABOVE) * GLYPH_PX)
    ImageDraw.Draw(canvas).text((GLYPH_PX // 2, base), ch, font=font, fill=255, anchor="ls")
    arr = np.asarray(canvas, np.float32) / 255.0
    cols = np.flatnonzero(arr.max(axis=0) > 0.05)
    if cols.size == 0:
        return np.zeros((h, GLYPH_PX // 3), np.float32)
    return np.ascontiguousarray(arr[:, cols[0]: cols[-1] + 1])


def aspect(path: str, ch: str) -> float:
    """Ink width over cap height."""
    return glyph(path, ch).shape[1] / GLYPH_PX


def paste_glyph(canvas: np.ndarray, g: np.ndarray, x: float, cap_top: float, w: float, cap_h: float) -> None:
    """Max-blend glyph ``g`` resized to ink width ``w`` and cap height ``cap_h`` at (x, cap_top)."""
    gw, gh = max(1, round(w)), max(2, round(cap_h * (1 + ABOVE + BELOW)))
    small = cv2.resize(g, (gw, gh), interpolation=cv2.INTER_AREA if cap_h < GLYPH_PX else cv2.INTER_LINEAR)
    x0, y0 = round(x), round(cap_top - ABOVE * cap_h)
    H, W = canvas.shape[:2]
    xa, ya, xb, yb = max(0, x0), max(0, y0), min(W, x0 + gw), min(H, y0 + gh)
    if xa >= xb or ya >= yb:
        return
    region = canvas[ya:yb, xa:xb]
    np.maximum(region, small[ya - y0: yb - y0, xa - x0: xb - x0], out=region)


def text_mask(path: str, s: str, cap_h: float, spacing: float = 0.12, stretch: float = 1.0) -> np.ndarray:
    """Mask of a whole string (small captions, distractors); cap line at row ABOVE*cap_h."""
    widths = [aspect(path, c) * cap_h * stretch for c in s]
    gap = spacing * cap_h
    W = int(sum(widths) + gap * (len(s) + 1)) + 2
    H = max(2, round(cap_h * (1 + ABOVE + BELOW)))
    out = np.zeros((H, W), np.float32)
    x = gap
    for c, w in zip(s, widths, strict=True):
        paste_glyph(out, glyph(path, c), x, ABOVE * cap_h, w, cap_h)
        x += w + gap
    return out
