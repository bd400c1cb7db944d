"""Random plate texts drawn from the country files, as the edge decodes them.

Every country file of the chosen folders (``use_countries``; default: the
project's ``countries/``) takes part in the draw: a country by its
``weight``, then one of its formats by ``share``. A group with a ``pick``
list draws its text from that list (``pick_share`` of the time); otherwise
one of the group's lengths is chosen and each position drawn from its
allowed characters.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from edge.formats import COUNTRIES_DIR, Country, FormatSet, FormatSpec, PlateFormat, Style, expand_group, load_countries
from edge.plates import MAX_CHARS

_folders: tuple[str, ...] = (str(COUNTRIES_DIR),)


def use_countries(*folders: Path | str) -> None:
    """Draw from the country files of ``folders`` (later folders replace earlier countries of the same code)."""
    global _folders
    _folders = tuple(str(f) for f in folders) or (str(COUNTRIES_DIR),)
    catalogue.cache_clear()


def countries_in_use() -> tuple[str, ...]:
    """The country folders the draw uses (worker processes are given them)."""
    return _folders


@dataclass(frozen=True)
class Entry:
    """One format of one country, compiled for drawing and rendering."""

    country: Country
    spec: FormatSpec
    rule: PlateFormat
    style: Style
    #: Per group: its expansions (allowed characters per position).
    expansions: tuple[tuple[tuple[str, ...], ...], ...]


class Catalogue:
    """Every format of the country files in use, with the draw's probabilities."""

    def __init__(self, countries: list[Country]) -> None:
        self.countries = {c.code: c for c in countries}
        self.entries: dict[str, Entry] = {}
        names, probs = [], []
        total = sum(c.weight for c in countries) or 1.0
        for c in countries:
            shares = sum(f.share for f in c.formats) or 1.0
            for f in c.formats:
                rule = f.rule(c.code, c.classes)
                exp = tuple(tuple(expand_group(p, c.classes)) for p in f.patterns)
                self.entries[f.name] = Entry(c, f, rule, c.style_of(f), exp)
                names.append(f.name)
                probs.append(c.weight / total * f.share / shares)
        self.names = names
        p = np.array(probs, np.float64)
        self.p = p / p.sum()
        #: The formats the edge decodes with (formats marked ``decode: false`` are drawn but never decoded).
        self.format_set = FormatSet.from_countries(countries, ", ".join(_folders))

    def entry(self, format_name: str) -> Entry:
        if format_name not in self.entries:
            raise KeyError(f"unknown plate format {format_name!r} (not in the country files of {', '.join(_folders)})")
        return self.entries[format_name]


@lru_cache(maxsize=1)
def catalogue() -> Catalogue:
    """The catalogue of the country folders in use (loaded once per process)."""
    return Catalogue(load_countries(*_folders))


def _draw_group(rng: np.random.Generator, entry: Entry, i: int) -> str:
    group = entry.spec.groups[i]
    if not isinstance(group, str) and group.pick is not None and rng.random() < group.pick_share:
        words = list(entry.country.lists[group.pick])
        return str(words[int(rng.integers(len(words)))])
    options = entry.expansions[i]
    # Lengths first, uniformly; then positions: a group of 1-4 digits is as often 1 digit long as 4.
    lengths = sorted({len(o) for o in options})
    n = lengths[int(rng.integers(len(lengths)))]
    same = [o for o in options if len(o) == n]
    seq = same[int(rng.integers(len(same)))]
    return "".join(chars[int(rng.integers(len(chars)))] for chars in seq)


def random_groups(rng: np.random.Generator, format_name: str) -> list[str]:
    """The groups of one random text of a format, as drawn."""
    entry = catalogue().entry(format_name)
    for _ in range(50):  # a list word that does not fit its group, or a text too long: draw again
        groups = [_draw_group(rng, entry, i) for i in range(len(entry.spec.groups))]
        text = "".join(groups)
        if len(text) <= MAX_CHARS and entry.rule.regex.match(text):
            return groups
    raise RuntimeError(f"could not draw a {format_name} text: check its groups and lists")


def random_text(rng: np.random.Generator, format_name: str | None = None) -> tuple[str, str]:
    """Draw ``(text, format)``; the format is drawn by country weight and format share when not given."""
    cat = catalogue()
    if format_name is None:
        format_name = cat.names[int(rng.choice(len(cat.names), p=cat.p))]
    return "".join(random_groups(rng, format_name)), format_name


def split_groups(text: str, format_name: str) -> list[str]:
    """The text's groups as its format displays them (``AB12 CDE`` -> ``[AB12, CDE]``)."""
    return catalogue().entry(format_name).rule.split(text) or [text]


def spelled(group: str, format_name: str, i: int) -> str:
    """How the plate spells group ``i`` (a list may give a spelling with diacritics, e.g. VZ -> VŽ)."""
    entry = catalogue().entry(format_name)
    g = entry.spec.groups[i]
    if not isinstance(g, str) and g.pick is not None:
        words = entry.country.lists[g.pick]
        if isinstance(words, dict):
            return words.get(group, group)
    return group


def row_texts(text: str, format_name: str) -> tuple[str, str]:
    """What the top and the bottom row of a two-row plate read (the reader's per-row labels)."""
    entry = catalogue().entry(format_name)
    groups = split_groups(text, format_name)
    cut = min(entry.spec.two_row_split, len(groups) - 1) if len(groups) > 1 else 1
    return "".join(groups[:cut]), "".join(groups[cut:])
