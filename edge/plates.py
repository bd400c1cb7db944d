"""The plate text alphabet and comparisons of plate texts.

What a plate text may contain, once for the reader, the trainer and the
tracker. Which texts a country issues, and how they look, is data: see
``edge.formats`` and the country files.
"""
from __future__ import annotations

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
BLANK = "_"
#: Classes of the reader: the alphabet then the CTC blank.
READER_CLASSES = ALPHABET + BLANK
#: Longest plate text the reader is trained for.
MAX_CHARS = 10


def normalize(text: str) -> str:
    """Upper-case and keep only A-Z and 0-9 (the contract's text form)."""
    return "".join(c for c in text.upper() if c in ALPHABET)


def _edits(a: str, b: str, within: bool) -> int:
    """Levenshtein distance from ``a`` to ``b``, or (``within``) to the closest run of ``b``'s characters."""
    prev = [0] * (len(b) + 1) if within else list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return min(prev) if within else prev[-1]


def similarity(a: str, b: str) -> float:
    """1 - Levenshtein distance / longer length (1.0: equal, 0.0: nothing in common or one is empty)."""
    if not a or not b:
        return 0.0
    return 1.0 - _edits(a, b, within=False) / max(len(a), len(b))


def edits_within(part: str, whole: str) -> int:
    """The fewest edits that turn ``part`` into a run of consecutive characters of ``whole`` (0: it is one)."""
    return _edits(part, whole, within=True)
