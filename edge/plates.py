"""Plate alphabet, plate formats and the position-decided character fixes.

This module is the single source of truth for what a plate text may contain
and how it is displayed. The trainer generates texts from the same format
table (see ``trainer.synth.text``) and the edge validates reads against it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
BLANK = "_"
#: Classes of the reader: the alphabet then the CTC blank.
READER_CLASSES = ALPHABET + BLANK
#: Longest plate text the reader is trained for.
MAX_CHARS = 10

# Pairs that look alike on a plate. A fix only swaps within these pairs and
# only when the plate format fixes the class (letter/digit) of the position.
LETTER_FOR_DIGIT = {"0": "O", "1": "I", "8": "B", "5": "S", "2": "Z"}
DIGIT_FOR_LETTER = {"O": "0", "D": "0", "Q": "0", "I": "1", "B": "8", "S": "5", "Z": "2"}


@dataclass(frozen=True)
class PlateFormat:
    """A plate layout: a regex over the bare text and how to display it.

    ``groups`` are regex fragments; the display form joins the matched groups
    with ``separator``. Each fragment is built from ``L`` (letter) and ``D``
    (digit) classes so that position-decided fixes can be derived from it.
    """

    name: str
    country: str
    groups: tuple[str, ...]
    separator: str = " "

    @property
    def regex(self) -> re.Pattern[str]:
        body = "".join(f"({_expand(g)})" for g in self.groups)
        return re.compile(f"^{body}$")

    def display(self, text: str) -> str | None:
        """Return the display form (with group gaps) or None if no match."""
        m = self.regex.match(text)
        if not m:
            return None
        return self.separator.join(g for g in m.groups() if g)


def _expand(group: str) -> str:
    """Expand the compact class syntax: L=letter, D=digit, X=either; {a,b} counts.

    Greek plates use only letters shared with the Latin alphabet: ``G`` is that set.
    """
    return (
        group.replace("L", "[A-Z]")
        .replace("D", "[0-9]")
        .replace("X", "[A-Z0-9]")
        .replace("G", "[ABEHIKMNOPTXYZ]")
    )


#: Known formats, most specific first. The synthesizer draws from the same names.
FORMATS: tuple[PlateFormat, ...] = (
    PlateFormat("uk_current", "GB", ("LLDD", "LLL")),
    PlateFormat("uk_prefix", "GB", ("L", "D{1,3}", "LLL")),
    PlateFormat("uk_suffix", "GB", ("LLL", "D{1,3}", "L")),
    PlateFormat("uk_ni", "GB", ("L[IZ]|L{2}[IZ]|[IZ]L", "D{1,4}")),
    PlateFormat("hr", "HR", ("LL", "D{3,4}", "L{1,2}")),
    PlateFormat("gr", "GR", ("GGG", "DDDD"), separator="-"),
    PlateFormat("de", "DE", ("L{1,3}", "L{1,2}", "D{1,4}")),
    PlateFormat("uk_dateless", "GB", ("D{1,4}", "L{1,3}")),
    PlateFormat("uk_dateless_rev", "GB", ("L{1,3}", "D{1,4}")),
    PlateFormat("us", "US", ("X{4,8}",), separator=""),
)
FORMATS_BY_NAME = {f.name: f for f in FORMATS}


def normalize(text: str) -> str:
    """Upper-case and keep only A-Z and 0-9 (the contract's text form)."""
    return "".join(c for c in text.upper() if c in ALPHABET)


def match_format(text: str) -> PlateFormat | None:
    """Return the first (most specific) format that the bare text matches."""
    for fmt in FORMATS:
        if fmt.regex.match(text):
            return fmt
    return None


def _class_sequences(fmt: PlateFormat, n: int) -> list[list[str]]:
    """All letter/digit class sequences of length n that the format allows."""
    seqs: list[list[str]] = [[]]
    for group in fmt.groups:
        options = _group_options(group)
        seqs = [s + o for s in seqs for o in options if len(s) + len(o) <= n]
    return [s for s in seqs if len(s) == n]


def _group_options(group: str) -> list[list[str]]:
    """Expand a compact group (e.g. ``D{1,3}``, ``L[IZ]|LL[IZ]``) to class lists."""
    out: list[list[str]] = []
    for alt in group.split("|"):
        parts: list[list[list[str]]] = []
        for token, lo, hi in re.findall(r"(\[[A-Z]+\]|[LDXG])(?:\{(\d+)(?:,(\d+))?\})?", alt):
            kind = "L" if token.startswith("[") or token == "G" else token
            lo_i = int(lo) if lo else 1
            hi_i = int(hi) if hi else lo_i
            parts.append([[kind] * k for k in range(lo_i, hi_i + 1)])
        combos: list[list[str]] = [[]]
        for p in parts:
            combos = [c + o for c in combos for o in p]
        out.extend(combos)
    return out


def apply_format_rules(
    text: str, alternatives: list[dict[str, float]] | None = None, min_alt_prob: float = 0.02
) -> tuple[str, str | None]:
    """Fix look-alike characters where the plate format decides the position.

    A text that already matches a known country format is returned unchanged.
    Otherwise every way of fitting a country format after swapping look-alikes
    (O/0, I/1, B/8, S/5, Z/2, D/0) is collected; the fix is made only when all
    of them give the same text, so that a position is changed only where the
    format leaves no doubt. ``alternatives`` (per position, character ->
    probability from the reader) further limits swaps to characters the reader
    itself found plausible, so a confident read of a generic plate is kept.
    Returns ``(text, format name or None)``.
    """
    specific = [f for f in FORMATS if f.name != "us"]
    for fmt in specific:
        if fmt.regex.match(text):
            return text, fmt.name
    fixes: dict[str, str] = {}
    for fmt in specific:
        for classes in _class_sequences(fmt, len(text)):
            fixed = _swap_to_classes(text, classes, alternatives, min_alt_prob)
            if fixed is not None and fmt.regex.match(fixed):
                fixes.setdefault(fixed, fmt.name)
    if len(fixes) == 1:
        fixed, name = next(iter(fixes.items()))
        return fixed, name
    generic = FORMATS_BY_NAME["us"]
    return text, (generic.name if generic.regex.match(text) else None)


def _swap_to_classes(
    text: str, classes: list[str], alternatives: list[dict[str, float]] | None, min_alt_prob: float
) -> str | None:
    out = []
    for i, (c, kind) in enumerate(zip(text, classes)):
        if kind == "D" and not c.isdigit():
            c = DIGIT_FOR_LETTER.get(c, "")
        elif kind == "L" and not c.isalpha():
            c = LETTER_FOR_DIGIT.get(c, "")
        if not c:
            return None
        if c != text[i] and alternatives is not None and alternatives[i].get(c, 0.0) < min_alt_prob:
            return None
        out.append(c)
    return "".join(out)


def display_text(text: str, format_name: str | None) -> str:
    """Display form with the group gaps of its format, else the bare text."""
    if format_name and format_name in FORMATS_BY_NAME:
        shown = FORMATS_BY_NAME[format_name].display(text)
        if shown:
            return shown
    return text


def similarity(a: str, b: str) -> float:
    """1 - Levenshtein distance / longer length (1.0: equal, 0.0: nothing in common or one is empty)."""
    if not a or not b:
        return 0.0
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return 1.0 - prev[-1] / max(len(a), len(b))
