"""Random plate texts per format, drawn from the same table the edge validates against."""
from __future__ import annotations

import numpy as np

from edge.plates import FORMATS_BY_NAME

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
DIGITS = "0123456789"
GREEK = "ABEHIKMNOPTXYZ"
# Most US states leave I, O and Q out of their serials, because they read as 1 and 0
# (the openalpr-us labels: no O, one Q, eight I in 1,431 characters). A rare I or Q stays
# so the reader still knows them; O never appears, and a plate's round glyph is a 0.
US_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"
US_RARE = "IQ"
# Croatian serial letters: the Latin letters of the Croatian alphabet without diacritics,
# less O (seed480's Croatian suffixes hold no O, Q, W or Y in about 400 letters).
HR_LETTERS = "ABCDEFGHIJKLMNPRSTUVZ"
UK_RANDOM = "ABCDEFGHJKLMNOPRSTUVWXY"  # no I, Q (and no Z in practice)
UK_AREA = "ABCDEFGHKLMNOPRSVWY"  # first letter of the memory tag
UK_YEAR = "ABCDEFGHJKLMNPRSTVWXY"  # prefix/suffix age letters (no I, O, Q, U, Z)
# Croatian district codes; the value is how the plate spells it (diacritics), the key the text.
HR_CITIES = {
    "ZG": "ZG", "ST": "ST", "RI": "RI", "OS": "OS", "DU": "DU", "PU": "PU", "KA": "KA", "SB": "SB",
    "VZ": "VŽ", "ZD": "ZD", "BJ": "BJ", "KR": "KR", "KC": "KC", "SI": "ŠI", "VK": "VK", "CK": "ČK",
    "PZ": "PŽ", "DA": "DA", "GS": "GS", "NA": "NA", "NG": "NG", "OG": "OG", "VU": "VU", "ZU": "ZU",
    "SK": "SK", "GO": "GO", "IM": "IM", "KT": "KT", "MA": "MA", "PS": "PS", "VT": "VT", "DJ": "DJ",
}
DE_DISTRICTS = (
    "B M HH K F S D DO E HB KA MZ BN HD GE BO DU N A R W L H KI AC MS OS WI UL FR LU MA RO PA "
    "BAD HSK MTK RSK OAL LDK GAP REK SHA WAF NOH"
).split()
# Each format's share of the draws (US 25 %, HR 20 %, GR 15 %, UK 25 %, DE 15 %).
FORMAT_WEIGHTS = {
    "us": 25.0, "hr": 20.0, "gr": 15.0, "de": 15.0, "uk_current": 13.0, "uk_prefix": 3.0,
    "uk_suffix": 2.0, "uk_ni": 3.0, "uk_dateless": 2.0, "uk_dateless_rev": 2.0,
}
_NAMES = list(FORMAT_WEIGHTS)
_P = np.array([FORMAT_WEIGHTS[n] for n in _NAMES]) / sum(FORMAT_WEIGHTS.values())


def _pick(rng: np.random.Generator, chars: str, n: int) -> str:
    return "".join(chars[i] for i in rng.integers(0, len(chars), n))


def _number(rng: np.random.Generator, lo_len: int, hi_len: int) -> str:
    """A number without leading zero of lo_len..hi_len digits (short ones more likely)."""
    n = int(rng.integers(lo_len, hi_len + 1))
    return str(int(rng.integers(1, 10))) + _pick(rng, DIGITS, n - 1)


def _us_letter(rng: np.random.Generator) -> str:
    return _pick(rng, US_RARE if rng.random() < 0.02 else US_LETTERS, 1)


def _us(rng: np.random.Generator) -> str:
    pattern = str(rng.choice(["DLLLDDD", "LLLDDDD", "DDDLLL", "LLLDDD", "LLDDDDD", "DLLDDD",
                              "LLLDLL", "DDDDLL", "LLDDLLL", "DLDDD", "random"],
                             p=[.16, .16, .1, .12, .06, .06, .05, .05, .06, .04, .14]))
    if pattern == "random":  # vanity and special series: any mix
        pattern = "".join("L" if rng.random() < 0.5 else "D" for _ in range(int(rng.integers(5, 8))))
    return "".join(_us_letter(rng) if c == "L" else _pick(rng, DIGITS, 1) for c in pattern)


def _uk_ni(rng: np.random.Generator) -> str:
    kind = rng.integers(0, 3)
    head = (_pick(rng, LETTERS, 1) + _pick(rng, "IZ", 1)) if kind == 0 else (
        _pick(rng, LETTERS, 2) + _pick(rng, "IZ", 1)) if kind == 1 else _pick(rng, "IZ", 1) + _pick(rng, LETTERS, 1)
    return head + _number(rng, 1, 4)


def _de(rng: np.random.Generator) -> str:
    district = str(rng.choice(DE_DISTRICTS)) if rng.random() < 0.8 else _pick(rng, LETTERS, int(rng.integers(1, 4)))
    letters = _pick(rng, LETTERS, int(rng.integers(1, 3)))
    max_digits = min(4, 8 - len(district) - len(letters))
    return district + letters + _number(rng, 1, max_digits)


_GENERATORS = {
    "uk_current": lambda r: _pick(r, UK_AREA, 1) + _pick(r, UK_RANDOM, 1)
    + str(r.choice([f"{y:02d}" for y in list(range(2, 26)) + list(range(51, 75))])) + _pick(r, UK_RANDOM, 3),
    "uk_prefix": lambda r: _pick(r, UK_YEAR, 1) + _number(r, 1, 3) + _pick(r, UK_RANDOM, 3),
    "uk_suffix": lambda r: _pick(r, UK_RANDOM, 3) + _number(r, 1, 3) + _pick(r, UK_YEAR, 1),
    "uk_ni": _uk_ni,
    "uk_dateless": lambda r: _number(r, 1, 4) + _pick(r, UK_RANDOM, int(r.integers(1, 4))),
    "uk_dateless_rev": lambda r: _pick(r, UK_RANDOM, int(r.integers(1, 4))) + _number(r, 1, 4),
    "hr": lambda r: str(r.choice(list(HR_CITIES))) + _pick(r, DIGITS, int(r.integers(3, 5)))
    + _pick(r, HR_LETTERS, int(r.integers(1, 3))),
    "gr": lambda r: _pick(r, GREEK, 3) + _number(r, 4, 4),
    "de": _de,
    "us": _us,
}


def random_text(rng: np.random.Generator, format_name: str | None = None) -> tuple[str, str]:
    """Draw ``(text, format)``; the format is weighted by :data:`FORMAT_WEIGHTS` when not given."""
    if format_name is None:
        format_name = _NAMES[int(rng.choice(len(_NAMES), p=_P))]
    if format_name not in _GENERATORS:
        raise KeyError(f"unknown plate format {format_name!r}")
    regex = FORMATS_BY_NAME[format_name].regex
    for _ in range(20):  # the generators are built to match; retrying guards rare edge cases
        text = _GENERATORS[format_name](rng)
        if len(text) <= 10 and regex.match(text):
            return text, format_name
    raise RuntimeError(f"could not generate a {format_name} text")


def split_groups(text: str, format_name: str) -> list[str]:
    """The text's groups as its format displays them (``AB12 CDE`` -> ``[AB12, CDE]``)."""
    m = FORMATS_BY_NAME[format_name].regex.match(text)
    if not m:
        return [text]
    groups = [g for g in m.groups() if g]
    if format_name == "us" and len(text) >= 5:  # US plates usually show a gap, dash or emblem
        cut = 3 if len(text) in (6, 7) else len(text) // 2
        groups = [text[:cut], text[cut:]]
    return groups
