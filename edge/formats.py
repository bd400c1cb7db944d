"""Plate formats as data: country files, the format rules built from them, and format-aware decoding.

What is true of a country's plates lives in one YAML file per country
(``countries/XX.yaml``, ``XX`` its ISO 3166-1 alpha-2 code): each format's
character classes per position, its groups and display separators, one or
two rows, sizes, colours, typeface, band and the marks that are not text,
and each format's share of the training draw. This module owns that schema.
The synthesizer and renderer read the whole file; the reader's metadata
carries the format part (``FormatSet.to_meta``), so a model set brings the
formats it was trained with and the edge hard-codes no country.

Pattern syntax of a group: a sequence of tokens, each a class letter or a
bracketed set (``[IZ]``), optionally repeated (``D{3}``, ``L{1,3}``);
alternatives are separated by ``|``. Built-in classes: ``L`` (A-Z), ``D``
(0-9), ``N`` (1-9), ``X`` (A-Z or 0-9). A country file may define its own
classes (one upper-case letter each), e.g. the letters a series leaves out.

Decoding (:meth:`FormatSet.decode`) takes the reader's per-column
probabilities. The greedy read is the unconstrained text. The decoder fits
the known formats to it, character by character from the same columns, and
to every reading one edit away from it: one character's column taken as
blank (a band's code, a stamp or a screw read as a character) or one blank
stretch's surest column taken as a character (a narrow I the greedy read
missed). The fit that costs least, counting the edit, replaces the raw read
when it costs at most ``max_cost`` nats of log-probability. Otherwise the
raw read stays, so a vanity plate or an unknown format is never forced into
a format. A read's confidence is defined once, by :func:`read_confidence`;
an edit that takes a column as blank counts that choice's probability in it.

A format prior (:class:`FormatPrior`) says how often each format occurs
where the camera is. The shipped reader has none: every format it knows
weighs the same. ``trainer finetune`` learns one from the user's labelled
plates (:meth:`FormatSet.learn_prior`) and stores it in the reader's
metadata. Decoding then adds to each fit the log of how much rarer its format
is than the most common one, so a Greek plate with its first letter lost is
read as a Greek plate rather than as a German one that fits the rest, and a
format the camera never saw no longer bends a read into its shape. It is
learnt by country first: the countries whose plates the camera sees share
it, and each shares its part among its formats, so the camera's own
country keeps the formats its labels happen to lack, and a narrower foreign
format that also takes most of one of them does not take its place. The prior
also says how long each format's plates are: a format that allows 2 to 7
characters but whose plates at this camera all have 7 gives a read that lost
two of them no credit.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Container
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge.plates import ALPHABET, MAX_CHARS
from edge.yamlsafe import YamlError, load_yaml

BUILTIN_CLASSES = {"L": "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "D": "0123456789", "N": "123456789",
                   "X": "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"}
#: The folder of the country files that ship with the project (the trainer's default).
COUNTRIES_DIR = Path(__file__).resolve().parents[1] / "countries"
#: A format fit replaces the raw read when it costs at most this many nats (a factor of about 7.4): enough for a
#: look-alike the reader half saw (I for 1 at 0.6 against 0.3 costs 0.7), not enough to overrule a sure read.
DEFAULT_MAX_COST = 2.0
#: A format's lengths that hold fewer of the plates a prior was learnt from than this (in plates) give no fit under
#: it: a format of 2 to 7 characters whose plates here are all 7 long gives a read that lost two of them no credit.
MIN_LENGTH_PLATES = 0.5
#: What the country file's draw shares weigh, in plates, against a camera's labelled plates when a prior shares a
#: country's plates among its formats (``FormatSet.learn_prior``): a format the labels lack keeps a share.
COUNTRY_PRIOR_PLATES = 4.0
#: Probability floor of one column: int8 softmax outputs step by 1/256 and can be exactly 0.
PROB_FLOOR = 1.0 / 512
#: Expansions of one format into fixed-length position sequences, at most (a guard against runaway patterns).
MAX_EXPANSIONS = 4096

_TOKEN = re.compile(r"(\[[A-Z0-9]+\]|[A-Z])(?:\{(\d+)(?:,(\d+))?\})?")
_COLOUR = r"^#[0-9A-Fa-f]{6}$"
Colour = Annotated[str, Field(pattern=_COLOUR)]
GapMark = Literal["gap", "none", "dash", "dot", "stamp", "crest", "seals", "emblem", "sticker", "flag"]
#: A per-gap value: a display separator or a gap mark.
_Gap = TypeVar("_Gap", bound=str)


class FormatError(ValueError):
    """A country file or a model's format metadata is invalid; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- country files -----------------------------------------------------------------------------------------------

class Band(_Strict):
    """A strip on the plate that is not part of the text (EU band with country code, Mercosur top band)."""

    kind: Literal["eu", "mercosur", "side"] = Field(description="eu: blue left strip with stars and code; "
                                                    "mercosur: blue top strip with caption and flag; "
                                                    "side: plain coloured left strip with code")
    codes: list[str] = Field(default_factory=list, description="distinguishing codes printed in the band")
    caption: str = Field("", description="text printed in a mercosur band (e.g. BRASIL)")
    colour: Colour = "#003399"
    share: float = Field(1.0, ge=0, le=1, description="share of plates that carry the band")


class Caption(_Strict):
    """Small text on the plate that is not part of the registration: state names, slogans, dealer names."""

    texts: list[str] = Field(min_length=1)
    position: Literal["top", "bottom"] = "top"
    share: float = Field(1.0, ge=0, le=1)


class Colours(_Strict):
    """One colour scheme of a plate: sheet and characters, with its share of the draws."""

    background: Colour
    ink: Colour
    share: float = Field(1.0, ge=0)


class GlyphForms(_Strict):
    """Shares of a country's plates whose face draws a character in a form that fonts rarely have."""

    serif_i: float = Field(0.0, ge=0, le=1, description="I with bars at top and bottom, so that it differs from 1")
    upright_w: float = Field(0.0, ge=0, le=1,
                             description="W with upright outer stems and its middle apex at full height")


class Style(_Strict):
    """How a plate looks: size, colours, typeface, band and the marks that are not text."""

    size_mm: tuple[float, float] = Field((520.0, 110.0), description="width, height of a one-row plate")
    two_row_size_mm: tuple[float, float] = Field((340.0, 200.0), description="width, height of a two-row plate")
    colours: list[Colours] = Field(default_factory=lambda: [Colours(background="#F4F4F4", ink="#141414")],
                                   min_length=1, description="colour schemes, one drawn per plate by share")
    typeface: str = Field("eu", description="font style of fonts/fonts.yaml: eu, din, uk, us, generic, ...")
    char_height: float = Field(0.7, gt=0.2, lt=0.95, description="cap height over plate height (one row)")
    band: Band | None = None
    captions: list[Caption] = Field(default_factory=list)
    marks: list[Literal["screws", "stickers", "frame", "emblem", "flag"]] = Field(default_factory=list)
    border: float = Field(0.8, ge=0, le=1, description="share of plates with a printed border line")
    glyphs: GlyphForms = Field(default_factory=GlyphForms, description="character forms of the plate face")
    fixed_pitch: float = Field(0.2, ge=0, le=1, description="share of plates whose face gives every character "
                               "the same cell, so a narrow I or 1 stands alone in a wide one")


class Group(_Strict):
    """One display group of a format, with an optional list to draw its text from."""

    pattern: str
    pick: str | None = Field(None, description="name of a list in the country's `lists` to draw the text from")
    pick_share: float = Field(1.0, ge=0, le=1, description="share of draws taken from `pick`")


class FormatSpec(_Strict):
    """One plate format of a country."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="unique across countries, e.g. br_mercosur")
    note: str = ""
    groups: list[str | Group] = Field(min_length=1)
    separators: str | list[str] = Field(" ", description="display text between groups (one, or one per gap)")
    gaps: GapMark | list[GapMark] = Field("gap", description="what is drawn between groups (one, or one per gap)")
    share: float = Field(1.0, ge=0, description="share of the country's draws")
    vehicle: Literal["car", "motorcycle", "other"] = "car"
    decode: bool = Field(True, description="false: drawn in training (vanity, special series) but never used to "
                         "fix or label a read")
    two_row_share: float = Field(0.0, ge=0, le=1, description="share drawn as a two-row plate (1: always)")
    two_row_split: int = Field(1, ge=1, description="groups on the top row of a two-row plate")
    style: dict[str, Any] = Field(default_factory=dict, description="style keys that differ from the country's")

    @property
    def patterns(self) -> list[str]:
        return [g if isinstance(g, str) else g.pattern for g in self.groups]

    def part(self, lists: dict[str, list[str] | dict[str, str]] | None = None,
             classes: dict[str, str] | None = None) -> dict[str, Any]:
        """What the edge needs of this format (an entry of ``Country.format_part``).

        With the country's ``lists`` (and ``classes``), a group every plate draws from a list (``pick_share`` 1)
        is written as that list's words, so decoding and the format prior take no other text there: a Croatian
        ZG 8481-K is no Slovak district plate, since ZG is no Slovak district."""
        groups = self.patterns
        if lists is not None:
            groups = [pick_pattern(g, lists[g.pick], classes or {})
                      if isinstance(g, Group) and g.pick is not None and g.pick_share >= 1 else p
                      for g, p in zip(self.groups, groups, strict=True)]
        return {"name": self.name, "groups": groups, "separators": self.per_gap(self.separators, "separators"),
                "share": self.share, "vehicle": self.vehicle}

    def rule(self, code: str, classes: dict[str, str]) -> PlateFormat:
        """The compiled format of country ``code`` (without a draw share: for drawing and rendering)."""
        return PlateFormat.from_part(code, classes, self.part(), 0.0)

    def per_gap(self, value: _Gap | list[_Gap], what: str) -> list[_Gap]:
        n = len(self.groups) - 1
        if isinstance(value, str):
            return [value] * n
        if len(value) != n:
            raise ValueError(f"{what}: {len(value)} given for {n} gaps between {len(self.groups)} groups")
        return list(value)

    @model_validator(mode="after")
    def _gaps_fit(self) -> FormatSpec:
        self.per_gap(self.separators, "separators")
        self.per_gap(self.gaps, "gaps")
        if self.two_row_share > 0 and self.two_row_split >= len(self.groups):
            raise ValueError(f"two_row_split {self.two_row_split} leaves no group for the bottom row")
        return self


class Country(_Strict):
    """One country file."""

    code: str = Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")
    name: str
    weight: float = Field(ge=0, description="share of the training draw, relative to the other countries")
    classes: dict[str, str] = Field(default_factory=dict, description="class letter -> allowed characters")
    lists: dict[str, list[str] | dict[str, str]] = Field(
        default_factory=dict, description="named vocabularies (text, or text -> how the plate spells it)")
    style: Style = Field(default_factory=Style)
    formats: list[FormatSpec] = Field(min_length=1)

    @field_validator("classes")
    @classmethod
    def _classes_ok(cls, v: dict[str, str]) -> dict[str, str]:
        for name, chars in v.items():
            if not re.fullmatch(r"[A-Z]", name) or name in BUILTIN_CLASSES:
                raise ValueError(f"class name {name!r} must be one upper-case letter other than "
                                 f"{', '.join(BUILTIN_CLASSES)}")
            bad = sorted(set(chars) - set(ALPHABET))
            if bad or not chars:
                raise ValueError(f"class {name}: characters must be A-Z or 0-9 (found {bad or 'none'})")
        return v

    @model_validator(mode="after")
    def _formats_ok(self) -> Country:
        names = [f.name for f in self.formats]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"format names repeat: {dup}")
        for i, f in enumerate(self.formats):
            for j, g in enumerate(f.groups):
                try:
                    expand_group(g if isinstance(g, str) else g.pattern, self.classes)
                except ValueError as exc:
                    raise ValueError(f"formats[{i}] ({f.name}).groups[{j}]: {exc}") from None
                if isinstance(g, Group) and g.pick is not None:
                    if g.pick not in self.lists:
                        raise ValueError(f"formats[{i}] ({f.name}).groups[{j}]: pick {g.pick!r} is not in lists")
                    try:
                        pick_pattern(g, self.lists[g.pick], self.classes)
                    except ValueError as exc:
                        raise ValueError(f"formats[{i}] ({f.name}).groups[{j}]: {exc}") from None
            try:
                self.style_of(f)
            except ValidationError as exc:
                raise ValueError(f"formats[{i}] ({f.name}).style: {_pydantic_message(exc)}") from None
        return self

    def style_of(self, fmt: FormatSpec) -> Style:
        """The country's style with the format's own keys on top."""
        if not fmt.style:
            return self.style
        return Style.model_validate(self.style.model_dump() | fmt.style)

    def format_part(self) -> dict[str, Any]:
        """What the edge needs of this country (carried in the reader's metadata)."""
        return {"code": self.code, "name": self.name, "weight": self.weight, "classes": dict(self.classes),
                "formats": [f.part(self.lists, self.classes) for f in self.formats if f.decode]}


class FormatPrior(_Strict):
    """How often each format occurs among one camera's plates, learnt from labelled plates (in the reader's metadata).

    ``shares`` sums with ``none`` to 1. A format it does not name (a country
    file added after it was learnt) costs nothing in decoding.
    """

    plates: int = Field(ge=1, description="labelled plates it was learnt from")
    shares: dict[str, float] = Field(description="format name -> share of the plates")
    none: float = Field(ge=0, le=1, description="share of the plates that fit no format")
    source: str = Field("", description="where the plates came from")
    lengths: dict[str, dict[int, float]] = Field(
        default_factory=dict, description="format name -> the share of its plates at each length (characters); "
        "a format named here gives no fit at a length its plates here never have (``MIN_LENGTH_PLATES``)")

    @field_validator("shares")
    @classmethod
    def _shares_ok(cls, v: dict[str, float]) -> dict[str, float]:
        bad = sorted(k for k, x in v.items() if not 0 <= x <= 1)
        if bad:
            raise ValueError(f"shares must lie in [0, 1] (not so for {bad[:5]})")
        if not any(x > 0 for x in v.values()):
            raise ValueError("shares must give some format a share above 0")
        return v

    @field_validator("lengths")
    @classmethod
    def _lengths_ok(cls, v: dict[str, dict[int, float]]) -> dict[str, dict[int, float]]:
        bad = sorted(k for k, by in v.items() if any(not 0 <= x <= 1 or not 1 <= n <= MAX_CHARS for n, x in by.items()))
        if bad:
            raise ValueError(f"lengths must be 1..{MAX_CHARS} with shares in [0, 1] (not so for {bad[:5]})")
        return v

    def has_length(self, name: str, length: int) -> bool:
        """Whether format ``name``'s plates here have ``length`` characters (``MIN_LENGTH_PLATES`` of them at
        least); True where the prior gives the format no lengths."""
        by = self.lengths.get(name)
        return by is None or self.shares.get(name, 0.0) * by.get(length, 0.0) * self.plates >= MIN_LENGTH_PLATES

    def largest(self, n: int) -> list[tuple[str, float]]:
        """The ``n`` formats with the largest shares, largest first, as (name, share)."""
        return sorted(self.shares.items(), key=lambda kv: -kv[1])[:n]


def _pydantic_message(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"])
        parts.append(f"{loc}: {e['msg']}" if loc else e["msg"])
    return "; ".join(parts)


def load_country_file(path: Path) -> Country:
    """Read and validate one country file; errors name the file and the key."""
    try:
        raw = load_yaml(path)
    except YamlError as exc:
        raise FormatError(f"cannot read the country file: {exc}") from None
    if not isinstance(raw, dict):
        raise FormatError(f"{path}: a country file is a mapping (code, name, weight, style, formats)")
    try:
        country = Country.model_validate(raw)
    except ValidationError as exc:
        raise FormatError(f"{path}: {_pydantic_message(exc)}") from None
    if path.stem.upper() != country.code:
        raise FormatError(f"{path}: code: {country.code} does not match the file name (expected {path.stem.upper()})")
    return country


def load_countries(*folders: Path | str | None) -> list[Country]:
    """Every ``*.yaml`` country file of the folders, in code order; a later folder's file replaces an earlier one's
    of the same code. ``None`` entries are skipped; a folder that does not exist is an error naming it."""
    found: dict[str, Country] = {}
    for folder in folders:
        if folder is None:
            continue
        d = Path(folder)
        if not d.is_dir():
            raise FormatError(f"{d}: country folder not found")
        for path in sorted(d.glob("*.yaml")):
            c = load_country_file(path)
            found[c.code] = c
    if not found:
        raise FormatError(f"no country files (*.yaml) in {', '.join(str(f) for f in folders if f is not None)}")
    countries = [found[k] for k in sorted(found)]
    names = [f.name for c in countries for f in c.formats]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise FormatError(f"format names repeat across country files: {dup}")
    return countries


# --- patterns ----------------------------------------------------------------------------------------------------

def expand_group(pattern: str, classes: dict[str, str]) -> list[tuple[str, ...]]:
    """Every fixed-length expansion of a group pattern: a list of per-position allowed-character strings."""
    out: list[tuple[str, ...]] = []
    for alt in pattern.split("|"):
        alt = alt.strip()
        if not alt:
            raise ValueError(f"pattern {pattern!r} has an empty alternative")
        pos, parts = 0, []
        for m in _TOKEN.finditer(alt):
            if m.start() != pos:
                raise ValueError(f"pattern {pattern!r}: cannot read {alt[pos:m.start()]!r}")
            pos = m.end()
            tok, lo, hi = m.group(1), m.group(2), m.group(3)
            if tok.startswith("["):
                chars = tok[1:-1]
            elif tok in classes:
                chars = classes[tok]
            elif tok in BUILTIN_CLASSES:
                chars = BUILTIN_CLASSES[tok]
            else:
                raise ValueError(f"pattern {pattern!r}: class {tok!r} is not defined (built in: "
                                 f"{', '.join(BUILTIN_CLASSES)}; others under `classes`)")
            lo_i = int(lo) if lo else 1
            hi_i = int(hi) if hi else lo_i
            if hi_i < lo_i or hi_i > MAX_CHARS:
                raise ValueError(f"pattern {pattern!r}: repeat {{{lo},{hi}}} out of range")
            parts.append([(chars,) * k for k in range(lo_i, hi_i + 1)])
        if pos != len(alt):
            raise ValueError(f"pattern {pattern!r}: cannot read {alt[pos:]!r}")
        for combo in itertools.product(*parts):
            out.append(tuple(itertools.chain.from_iterable(combo)))
    return out


def pick_pattern(group: Group, words: list[str] | dict[str, str], classes: dict[str, str]) -> str:
    """A group pattern that allows the words of its ``pick`` list only (each that fits the group's pattern), one
    alternative a word: ``[Z][G]|[S][T]|...``."""
    allowed = re.compile("^" + _group_regex(group.pattern, classes) + "$")
    fit = sorted({str(w) for w in words if allowed.match(str(w))})
    if not fit:
        raise ValueError(f"pick {group.pick!r}: no word of the list fits the pattern {group.pattern!r}")
    return "|".join("".join(f"[{c}]" for c in w) for w in fit)


def pick_words(pattern: str) -> list[str] | None:
    """The words of a group written by :func:`pick_pattern`, or None when the group is a pattern of classes."""
    alternatives = pattern.split("|")
    if not all(re.fullmatch(r"(\[[A-Z0-9]\])+", a) for a in alternatives):
        return None
    return [a.replace("[", "").replace("]", "") for a in alternatives]


def _group_regex(pattern: str, classes: dict[str, str]) -> str:
    alts = []
    for alt in pattern.split("|"):
        body = ""
        for m in _TOKEN.finditer(alt.strip()):
            tok, lo, hi = m.group(1), m.group(2), m.group(3)
            chars = tok[1:-1] if tok.startswith("[") else classes.get(tok, BUILTIN_CLASSES.get(tok, ""))
            rep = "" if not lo else (f"{{{lo}}}" if not hi else f"{{{lo},{hi}}}")
            body += f"[{re.escape(chars)}]{rep}"
        alts.append(body)
    return "(?:" + "|".join(alts) + ")"


# --- compiled rules ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PlateFormat:
    """One compiled format: its country, groups, display and every fixed-length expansion."""

    name: str
    country: str
    groups: tuple[str, ...]
    separators: tuple[str, ...]
    classes: tuple[tuple[str, str], ...]
    #: The format's share of the training draw (its country's weight times its share among the country's formats).
    draw_share: float

    @cached_property
    def regex(self) -> re.Pattern[str]:
        cls = dict(self.classes)
        return re.compile("^" + "".join(f"({_group_regex(g, cls)})" for g in self.groups) + "$")

    @cached_property
    def expansions(self) -> list[tuple[str, ...]]:
        """Per-position allowed characters of every text length the format allows (at most MAX_CHARS)."""
        cls = dict(self.classes)
        seqs: list[tuple[str, ...]] = [()]
        for g in self.groups:
            opts = expand_group(g, cls)
            seqs = [s + o for s in seqs for o in opts if len(s) + len(o) <= MAX_CHARS]
            if len(seqs) > MAX_EXPANSIONS:
                raise FormatError(f"format {self.name}: more than {MAX_EXPANSIONS} expansions")
        return sorted(set(s for s in seqs if s))

    @classmethod
    def from_part(cls, code: str, classes: dict[str, str], part: dict[str, Any], draw_share: float) -> PlateFormat:
        """A format from its metadata form (``FormatSpec.part``) and its country's code and classes."""
        return cls(part["name"], code, tuple(part["groups"]), tuple(part["separators"]), tuple(sorted(classes.items())),
                   draw_share)

    def split(self, text: str) -> list[str] | None:
        """The text's groups, or None when it does not fit."""
        m = self.regex.match(text)
        return list(m.groups()) if m else None

    def fits_near(self, text: str, lengths: Container[int] | None = None) -> bool:
        """Whether ``text`` fits, or would with one character changed, left out or added (a misread or a plate
        cut at a frame's edge); with ``lengths``, only as a text of one of those lengths."""
        def fits(t: str) -> bool:
            return (lengths is None or len(t) in lengths) and self.regex.match(t) is not None

        if fits(text):
            return True
        for i in range(len(text) + 1):
            head, tail = text[:i], text[i:]
            variants = [head + c + tail for c in ALPHABET]  # one added
            if tail:
                variants.append(head + tail[1:])  # one left out
                variants += [head + c + tail[1:] for c in ALPHABET]  # one changed
            if any(fits(v) for v in variants):
                return True
        return False

    def display(self, text: str) -> str | None:
        """The display form (groups joined by their separators), or None when the text does not fit."""
        groups = self.split(text)
        if groups is None:
            return None
        out = groups[0]
        for sep, g in zip(self.separators, groups[1:], strict=False):
            out += sep + g
        return out


@dataclass(frozen=True)
class PlateText:
    """A decoded plate text: the text, the format and country it fits (or None), and its characters' probabilities."""

    text: str
    format: str | None
    country: str | None
    char_probs: tuple[float, ...]
    display: str
    #: Nats of log-probability the format fit cost against the unconstrained read, with its format's prior cost
    #: (0: the read fit as it was, in the most common format).
    cost: float = 0.0
    #: Probabilities of the decoder's edits to the greedy read (for a column taken as blank, that of the blank).
    edit_probs: tuple[float, ...] = ()

    @property
    def confidence(self) -> float:
        return read_confidence(self.char_probs + self.edit_probs)


def read_confidence(char_probs: tuple[float, ...] | list[float]) -> float:
    """The one confidence of a read: the geometric mean of its characters' probabilities (0 for no characters).

    The mean, so one doubtful character among sure ones lowers a read without
    erasing it; geometric, so a character the reader barely saw costs more
    than an arithmetic mean would let it. Ranking, the candidate choice, the
    tracker's votes and the event use this number.
    """
    if not char_probs:
        return 0.0
    return float(math.exp(sum(math.log(max(p, PROB_FLOOR)) for p in char_probs) / len(char_probs)))


class FormatSet:
    """The formats a model set reads, compiled for matching and format-aware decoding."""

    def __init__(self, countries: list[dict[str, Any]], source: str = "", prior: FormatPrior | None = None) -> None:
        """``countries``: the format parts of country files (``Country.format_part``), as the metadata holds them;
        ``prior``: how often each format occurs where the camera is (None: all alike)."""
        self.countries = countries
        self.source = source
        self.prior = prior
        formats: list[PlateFormat] = []
        total_weight = sum(float(c.get("weight", 1.0)) for c in countries) or 1.0
        try:
            for c in countries:
                fshare = sum(float(f.get("share", 1.0)) for f in c["formats"]) or 1.0
                for f in c["formats"]:
                    draw = float(c.get("weight", 1.0)) / total_weight * float(f.get("share", 1.0)) / fshare
                    fmt = PlateFormat.from_part(c["code"], dict(c.get("classes", {})), f, draw)
                    fmt.expansions  # noqa: B018 - compile now, so a bad pattern fails at load
                    formats.append(fmt)
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"{source or 'formats'}: invalid format data: {exc!r}") from None
        # Most likely first: ties in decoding and matching go to the format the training draw favoured.
        self.formats: tuple[PlateFormat, ...] = tuple(sorted(formats, key=lambda f: -f.draw_share))
        self.by_name = {f.name: f for f in self.formats}
        self.penalty = self._penalties(prior)
        # Stable: formats the prior does not tell apart keep the order of the training draw.
        self._ranked = sorted(self.formats, key=lambda f: self.penalty.get(f.name, 0.0))
        self._tables: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, list[PlateFormat]]] = {}

    def _penalties(self, prior: FormatPrior | None) -> dict[str, float]:
        """Nats each format's fit costs under ``prior``: the log of how much rarer it is than the most common one."""
        if prior is None:
            return {}
        unknown = sorted((set(prior.shares) | set(prior.lengths)) - set(self.by_name))
        if unknown:
            raise FormatError(f"{self.source or 'formats'}: formats.prior names formats the formats do not list: "
                              f"{unknown[:5]}")
        top = max(prior.shares.values())
        return {name: (math.log(top / share) if share > 0 else math.inf) for name, share in prior.shares.items()}

    def cost(self, name: str, length: int) -> float:
        """Nats a fit to format ``name`` at ``length`` characters costs under the prior: its format's penalty at a
        length its plates here have (``FormatPrior.has_length``), infinite (no fit) at one they never have; 0 for
        a format the prior does not name, and for every format under no prior."""
        prior = self.prior
        if prior is None or name not in prior.shares:
            return 0.0
        if not prior.has_length(name, length):
            return math.inf
        return self.penalty[name]

    @classmethod
    def from_countries(cls, countries: list[Country], source: str = "") -> FormatSet:
        return cls([c.format_part() for c in countries], source)

    @classmethod
    def load(cls, *folders: Path | str | None) -> FormatSet:
        """Formats of the country files in ``folders`` (see :func:`load_countries`)."""
        return cls.from_countries(load_countries(*folders), ", ".join(str(f) for f in folders if f))

    def merged(self, other: FormatSet) -> FormatSet:
        """This set with ``other``'s countries added (a country in both: ``other``'s file wins). This set's prior
        stays, less the formats the merge drops; the added formats cost nothing in decoding."""
        codes = {c["code"] for c in other.countries}
        countries = [c for c in self.countries if c["code"] not in codes] + other.countries
        prior = self.prior
        if prior is not None:
            kept = {f["name"] for c in countries for f in c["formats"]}
            shares = {k: v for k, v in prior.shares.items() if k in kept}
            lengths = {k: v for k, v in prior.lengths.items() if k in kept}
            prior = prior.model_copy(update={"shares": shares, "lengths": lengths}) if any(shares.values()) else None
        return FormatSet(countries, f"{self.source} + {other.source}", prior)

    def with_prior(self, prior: FormatPrior | None) -> FormatSet:
        """The same formats under another prior."""
        return FormatSet(self.countries, self.source, prior)

    def to_meta(self) -> dict[str, Any]:
        """The metadata form, with the sha256 of its canonical JSON (the formats; the prior is beside them)."""
        body = json.dumps(self.countries, sort_keys=True, separators=(",", ":"))
        out: dict[str, Any] = {"sha256": hashlib.sha256(body.encode()).hexdigest(), "countries": self.countries}
        if self.prior is not None:
            out["prior"] = self.prior.model_dump(mode="json")
        return out

    @classmethod
    def from_meta(cls, meta: dict[str, Any], source: str = "") -> FormatSet:
        countries = meta.get("countries")
        if not isinstance(countries, list):
            raise FormatError(f"{source}: formats.countries must be a list")
        body = json.dumps(countries, sort_keys=True, separators=(",", ":"))
        if meta.get("sha256") and hashlib.sha256(body.encode()).hexdigest() != meta["sha256"]:
            raise FormatError(f"{source}: formats.sha256 does not match the formats it lists")
        prior = None
        if meta.get("prior") is not None:
            try:
                prior = FormatPrior.model_validate(meta["prior"])
            except ValidationError as exc:
                raise FormatError(f"{source}: formats.prior: {_pydantic_message(exc)}") from None
        return cls(countries, source, prior)

    def learn_prior(self, texts: list[str], source: str = "", pseudo_count: float = 1.0,
                    country_plates: float = COUNTRY_PRIOR_PLATES, iterations: int = 500) -> FormatPrior:
        """How often each format occurs among labelled plate ``texts``, and at which lengths: a mixture of
        countries and of unformatted text (a vanity plate), each country a mixture of its formats, each format
        drawing its texts uniformly; fitted by expectation-maximisation.

        Texts often fit several formats (ZG1746AC fits the Croatian format and
        several broader ones). Since a format spreads its probability over every
        text it allows, a narrow format that fits a text explains it better than
        a broad one. Countries compete for the camera's plates first: a text the
        formats of two countries both take goes mostly to the country that
        accounts for the camera's other plates, so a US camera's ABC1234 plates
        stay American rather than go to a narrower Malaysian format that takes
        most of them too (and then leaves the rest, ABC0123, no fit at all).
        Within a country, each format starts from its share of the country
        file's draw, worth ``country_plates`` plates, and moves to what the
        texts show: a format of the camera's country that the labels happen to
        lack keeps a share in proportion to what the file expects. A format's
        lengths are those of the texts it accounts for. ``pseudo_count`` plates
        are spread evenly over every country and unformatted text (and a
        format's over its lengths), so no share is 0.
        """
        clean = [t for t in ("".join(ch for ch in str(x).upper() if ch.isalnum()) for x in texts) if t]
        if not clean:
            raise ValueError("no plate texts to learn a format prior from")
        fmts = self.formats
        codes = sorted({f.country for f in fmts})
        country = np.array([codes.index(f.country) for f in fmts], np.int64)
        n_c, n_f = len(codes), len(fmts)
        draw = np.array([f.draw_share for f in fmts], np.float64)
        by_country = np.bincount(country, weights=draw, minlength=n_c)
        # A format's share of its country's draw (alike within a country whose file gives them all 0).
        formats_of = np.bincount(country, minlength=n_c).astype(np.float64)
        within = np.where(by_country[country] > 0, draw / np.maximum(by_country[country], 1e-300),
                          1 / formats_of[country])
        # log P(text | component): a format draws each text it allows alike; unformatted text draws its length
        # evenly from 1..MAX_CHARS and then each character from the alphabet.
        log_volume = np.array([math.log(sum(math.prod(len(a) for a in seq) for seq in f.expansions)) for f in fmts])
        fits = np.array([[f.regex.match(t) is not None for f in fmts] for t in clean], bool).reshape(len(clean), n_f)
        loglik = np.concatenate([np.where(fits, -log_volume[None], -np.inf),
                                 np.array([[-len(t) * math.log(len(ALPHABET)) - math.log(MAX_CHARS)]
                                           for t in clean])], axis=1)
        share_c = np.full(n_c + 1, 1.0 / (n_c + 1))  # the countries', then unformatted text's
        share_f = within.copy()  # each format's within its country
        resp = np.zeros((len(clean), n_f + 1))
        with np.errstate(divide="ignore"):
            for _ in range(iterations):
                mix = np.log(np.concatenate([share_c[country] * share_f, share_c[-1:]]))
                joint = loglik + mix[None]
                resp = np.exp(joint - joint.max(axis=1, keepdims=True))
                resp /= resp.sum(axis=1, keepdims=True)
                per_format = resp.sum(axis=0)
                per_country = np.append(np.bincount(country, weights=per_format[:-1], minlength=n_c), per_format[-1])
                new_c = (per_country + pseudo_count / (n_c + 1)) / (len(clean) + pseudo_count)
                new_f = (per_format[:-1] + country_plates * within) / (per_country[country] + country_plates)
                moved = max(np.abs(new_c - share_c).max(), np.abs(new_f - share_f).max())
                share_c, share_f = new_c, new_f
                if moved < 1e-9:
                    break
        share = share_c[country] * share_f
        # Each format's plates by length: the texts it accounts for, with a pseudo-plate spread over its lengths.
        by_length = np.stack([np.bincount([len(t) for t in clean], weights=resp[:, i], minlength=MAX_CHARS + 1)
                              for i in range(n_f)])  # (formats, length): plates accounted for
        lengths: dict[str, dict[int, float]] = {}
        for i, f in enumerate(fmts):
            allowed = sorted({len(seq) for seq in f.expansions})
            count = {n: pseudo_count / (n_f + 1) / len(allowed) + by_length[i, n] for n in allowed}
            total = sum(count.values())
            lengths[f.name] = {n: float(f"{c / total:.6g}") for n, c in count.items()}
        return FormatPrior(plates=len(clean), source=source, none=float(share_c[-1]), lengths=lengths,
                           shares={f.name: float(f"{v:.6g}") for f, v in zip(fmts, share, strict=True)})

    @property
    def country_codes(self) -> list[str]:
        return [c["code"] for c in self.countries]

    def match(self, text: str) -> PlateFormat | None:
        """The most likely format the bare text fits exactly (the cheapest under the prior at its length), or None."""
        fits = [f for f in self._ranked if f.regex.match(text)]
        return min(fits, key=lambda f: self.cost(f.name, len(text)), default=None)

    def display(self, text: str, format_name: str | None) -> str:
        """Display form with the format's separators, else the bare text."""
        fmt = self.by_name.get(format_name or "")
        return (fmt.display(text) if fmt else None) or text

    def _length_table(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[PlateFormat]]:
        """Every expansion of length n as indices into a table of distinct allowed-character sets.

        Returns (sets, n) int indices, the (distinct sets, alphabet) bool table, each sequence's prior cost and
        its format, most likely first. Few distinct sets exist (digits, letters, letters without I/O/Q...), so a
        fit scores each set once per position and then only adds up indices. Under a prior, a sequence two
        formats share belongs to the one that costs less.
        """
        if n not in self._tables:
            allowed_sets: dict[str, int] = {}
            rows, owners, seen = [], [], set()
            for fmt in sorted(self.formats, key=lambda f: self.cost(f.name, n)):
                for seq in fmt.expansions:
                    if len(seq) == n and seq not in seen:
                        seen.add(seq)
                        rows.append([allowed_sets.setdefault(a, len(allowed_sets)) for a in seq])
                        owners.append(fmt)
            table = np.array([[c in a for c in ALPHABET] for a in allowed_sets], bool).reshape(-1, len(ALPHABET))
            cost = np.array([self.cost(f.name, n) for f in owners], np.float64)
            self._tables[n] = (np.array(rows, np.int32).reshape(len(rows), n), table, cost, owners)
        return self._tables[n]

    def _fit(self, lp_chars: np.ndarray, cols: list[int], per_set: dict[int, np.ndarray]
             ) -> tuple[float, PlateFormat, np.ndarray] | None:
        """Most probable fit of the characters at columns ``cols`` of (columns, alphabet) log-probabilities to a
        format, less its prior cost: (log-probability, format, characters), or None when no format has that length.
        ``per_set`` caches, per length, each allowed set's best log-probability at every column: the readings of
        one crop share their columns, so each set is scored once per column, not once per reading."""
        n = len(cols)
        seqs, table, cost, owners = self._length_table(n)
        if not owners:
            return None
        if n not in per_set:
            per_set[n] = np.where(table[:, None, :], lp_chars[None], -np.inf).max(axis=2)  # (sets, columns)
        fit = per_set[n][seqs, cols].sum(axis=1) - cost
        s = int(np.argmax(fit))  # ties go to the first: the format the training draw favoured
        if not math.isfinite(fit[s]):
            return None
        chars = np.where(table[seqs[s]], lp_chars[cols], -np.inf).argmax(axis=1)
        return float(fit[s]), owners[s], chars

    def decode(self, columns: np.ndarray, classes: str, blank: str, max_cost: float = DEFAULT_MAX_COST) -> PlateText:
        """Format-aware decoding of (timesteps, classes) reader probabilities (see the module doc)."""
        raw_text, peaks = greedy_peaks(columns, classes, blank)
        if not raw_text:
            return PlateText("", None, None, (), "")
        lp = np.log(np.maximum(columns, PROB_FLOOR))
        lp_chars = lp[:, _alphabet_order(classes)]  # (timesteps, alphabet)
        lp_blank = lp[:, classes.index(blank)]
        best_char = lp_chars.max(axis=1)
        best: tuple[float, PlateText] | None = None
        per_set: dict[int, np.ndarray] = {}
        readings = [(cols, edit_cost, edit_probs) for cols, edit_cost, edit_probs
                    in _readings(peaks, best_char, lp_blank) if edit_cost <= max_cost]
        # Only the columns some reading takes as a character are scored: a dozen of the reader's 96.
        used = sorted({t for cols, _, _ in readings for t in cols})
        at = {t: i for i, t in enumerate(used)}
        lp_used = lp_chars[used]
        for cols, edit_cost, edit_probs in readings:
            fitted = self._fit(lp_used, [at[t] for t in cols], per_set)
            if fitted is None:
                continue
            fit, fmt, chars = fitted
            cost = edit_cost + float(best_char[cols].sum() - fit)
            if cost <= max_cost and (best is None or cost < best[0]):
                text = "".join(ALPHABET[i] for i in chars)
                logp = lp_chars[cols]
                probs = tuple(float(np.exp(logp[k, i])) for k, i in enumerate(chars))
                best = (cost, PlateText(text, fmt.name, fmt.country, probs, fmt.display(text) or text,
                                        max(0.0, cost), edit_probs))
        if best is not None:
            return best[1]
        probs = tuple(float(np.exp(v)) for v in best_char[peaks])
        return PlateText(raw_text, None, None, probs, raw_text)


def _readings(peaks: list[int], best_char: np.ndarray, lp_blank: np.ndarray
              ) -> list[tuple[list[int], float, tuple[float, ...]]]:
    """The columns to read as characters: the greedy read's peaks, and every reading one edit away from it.

    An edit takes a character's peak column as blank (a mark, a band's code or
    a screw read as a character) or takes the surest column of a blank stretch
    as a character (a narrow character the greedy read missed). Each reading
    comes with what its edit costs in nats and, for a column taken as blank,
    the probability of that choice (it counts in the read's confidence).
    """
    out: list[tuple[list[int], float, tuple[float, ...]]] = [(peaks, 0.0, ())]
    for i, t in enumerate(peaks):
        out.append((peaks[:i] + peaks[i + 1:], float(best_char[t] - lp_blank[t]), (float(np.exp(lp_blank[t])),)))
    if len(peaks) >= MAX_CHARS:
        return out
    bounds = [-1, *peaks, len(best_char)]
    for g in range(len(peaks) + 1):
        stretch = [t for t in range(bounds[g] + 1, bounds[g + 1]) if best_char[t] < lp_blank[t]]
        if stretch:
            t = max(stretch, key=lambda k: best_char[k])
            out.append(([*peaks[:g], t, *peaks[g:]], float(lp_blank[t] - best_char[t]), ()))
    return out


@lru_cache(maxsize=8)
def _alphabet_order(classes: str) -> np.ndarray:
    """Indices of the reader's classes in ALPHABET order (computed once per class string, not per read)."""
    return np.array([classes.index(c) for c in ALPHABET])


def greedy_peaks(columns: np.ndarray, classes: str, blank: str) -> tuple[str, list[int]]:
    """Greedy CTC read of (timesteps, classes) probabilities: the text and the column of each character's peak.

    The best class per column; runs of one class merge and blanks drop out.
    """
    if columns.ndim != 2 or columns.shape[1] != len(classes):
        raise ValueError(f"reader output shape {columns.shape} does not fit {len(classes)} classes")
    blank_k = classes.index(blank)
    best = columns.argmax(axis=1)
    peaks: list[int] = []
    prev = blank_k
    for t, k in enumerate(best):
        if k != blank_k:
            if k != prev:
                peaks.append(t)
            elif columns[t, k] > columns[peaks[-1], k]:
                peaks[-1] = t
        prev = k
    return "".join(classes[best[t]] for t in peaks), peaks
