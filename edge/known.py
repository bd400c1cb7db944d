"""Known plates: which listed vehicle a voted plate text is, by an edit distance that knows look-alikes.

The one place that matches texts against the known-plate lists
(``known_plates`` in the configuration: plates written there and the YAML or
CSV files it names). The daemon looks up each event's voted text here; the
event then carries ``known`` and goes to its group's topic, and the relay
(``edge.relay``) decides on the same lookup.

**Distance.** A weighted edit distance (Levenshtein) between the read and a
known plate, both upper case with separators dropped (``ab-12 cde`` is
``AB12CDE``): inserting or deleting a character costs 1, replacing it costs
1, and replacing it by its look-alike costs 0.5 (``LOOKALIKE_COST``). The
look-alikes (``LOOKALIKES``) are the pairs a plate reader confuses:
any two of O 0 D Q, then I 1, I T, B 8, S 5, Z 2, G 6. So ``AB12CD0`` is 0.5
from ``AB12CDO``, ``8B12CD0`` is 1.0 from ``BB12CDO`` (two look-alikes), and
``AB12CDE`` is 1.0 from ``AB12CDF`` and from ``AB12CD`` (one ordinary edit).
All distances are multiples of 0.5, exact in floating point.

**Matching** a text at a time (the event's last frame):

1. only the entries valid then count: ``valid_from`` <= time, before the end
   of ``valid_until`` (a date: that whole day), and within one of its weekly
   ``windows`` when it has any (local time);
2. a candidate is an entry at most its group's ``max_distance`` from the text
   (``known_plates.groups.<group>.max_distance``, else
   ``known_plates.max_distance``);
3. the nearest candidate matches, unless another known plate (valid then,
   with another text, name or group, whatever its own group's distance) is
   less than ``ambiguity_margin`` farther from the text: then the read is
   ambiguous, nothing matches, and the event's lookup is logged with the
   plates it could be. Two entries at equal distance are therefore always
   ambiguous, and with the default margin of 1 a plate matches only when
   every other known plate is at least one ordinary edit farther.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from edge.config import KnownPlateConfig, KnownPlatesConfig
from edge.plates import normalize
from edge.yamlsafe import YamlError, load_yaml, read_text

if TYPE_CHECKING:
    from edge.tracker import Event

log = logging.getLogger(__name__)

#: Look-alike groups: replacing a character by another of its group costs ``LOOKALIKE_COST``. Pairs, not
#: classes, where a class would join characters that do not look alike (1 and T).
LOOKALIKES: tuple[str, ...] = ("O0", "OD", "OQ", "0D", "0Q", "DQ", "I1", "IT", "B8", "S5", "Z2", "G6")
LOOKALIKE_COST = 0.5
#: Cost of inserting, deleting or replacing a character otherwise.
EDIT_COST = 1.0
_CHEAPEST = min(LOOKALIKE_COST, EDIT_COST)
_SUBSTITUTION = {(pair[i], pair[1 - i]): LOOKALIKE_COST for pair in LOOKALIKES for i in (0, 1)}
#: Weekly window: ``[days] HH:MM-HH:MM``; days as ``mon``, ``mon-fri``, ``sat,sun`` (every day when left out).
_WINDOW = re.compile(r"^\s*(?:(?P<days>[a-z][a-z,\s-]*?)\s+)?(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*$",
                     re.IGNORECASE)
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: Columns of a CSV plate file (a header row names them; ``plate`` and ``group`` are required).
CSV_COLUMNS = ("plate", "name", "group", "valid_from", "valid_until", "windows")


class KnownPlatesError(ValueError):
    """A known-plate list cannot be used; the message names the file and the line or entry."""


def distance(a: str, b: str, limit: float = math.inf) -> float:
    """Weighted edit distance of two normalized texts (see the module doc); ``math.inf`` when above ``limit``."""
    if a == b:
        return 0.0
    if abs(len(a) - len(b)) * EDIT_COST > limit:
        return math.inf
    prev = [j * EDIT_COST for j in range(len(b) + 1)]
    for i, ca in enumerate(a, 1):
        cur = [i * EDIT_COST]
        for j, cb in enumerate(b, 1):
            swap = 0.0 if ca == cb else _SUBSTITUTION.get((ca, cb), EDIT_COST)
            cur.append(min(prev[j] + EDIT_COST, cur[j - 1] + EDIT_COST, prev[j - 1] + swap))
        if min(cur) > limit:  # every path through this row already costs more
            return math.inf
        prev = cur
    return prev[-1] if prev[-1] <= limit else math.inf


@dataclass(frozen=True)
class Window:
    """A weekly time window in local time; an end at or before the start runs past midnight."""

    days: frozenset[int]  # 0 = Monday
    start: int  # minutes after midnight
    end: int

    def contains(self, when: dt.datetime) -> bool:
        minute = when.hour * 60 + when.minute
        day = when.weekday()
        if self.start < self.end:
            return day in self.days and self.start <= minute < self.end
        return (day in self.days and minute >= self.start) or ((day - 1) % 7 in self.days and minute < self.end)


def _minutes(window: str, text: str, what: str, allow_24: bool) -> int:
    hours, minutes = (int(x) for x in text.split(":"))
    if minutes > 59 or hours > 24 or (hours == 24 and (minutes or not allow_24)):
        raise ValueError(f"{window!r} has {what} time {text}, which does not exist")
    return hours * 60 + minutes


def parse_window(text: str) -> Window:
    """A weekly window such as ``mon-fri 07:00-18:00``, ``sat,sun 09:00-12:30``, ``22:00-06:00`` (every day,
    overnight) or ``mon-sun 00:00-24:00``; ValueError says what is wrong (without ': ', so that a configuration
    error keeps naming the key)."""
    m = _WINDOW.match(text)
    if m is None:
        raise ValueError(f"{text!r} is no weekly window; write '[days] HH:MM-HH:MM', e.g. 'mon-fri 07:00-18:00'")
    days: set[int] = set()
    for part in (m["days"] or "mon-sun").lower().replace(" ", "").split(","):
        first, _, last = part.partition("-")
        if first not in _DAYS or (last and last not in _DAYS):
            raise ValueError(f"{text!r} names days other than mon, tue, wed, thu, fri, sat, sun or ranges of them "
                             "such as mon-fri")
        a, b = _DAYS.index(first), _DAYS.index(last or first)
        days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(b + 1)])
    start = _minutes(text, m["start"], "a start", allow_24=False)
    end = _minutes(text, m["end"], "an end", allow_24=True)
    if start == end:
        raise ValueError(f"{text!r} is empty (it starts and ends at the same time)")
    return Window(frozenset(days), start, end)


def _bound(value: dt.datetime | dt.date | None, end: bool, tz: dt.tzinfo | None) -> float:
    """A validity bound as a timestamp: a date is the start of that day, or of the next when it ends validity;
    a time without a zone is local (``tz``, else the system's)."""
    if value is None:
        return math.inf if end else -math.inf
    if not isinstance(value, dt.datetime):
        value = dt.datetime.combine(value + dt.timedelta(days=1) if end else value, dt.time())
    if value.tzinfo is None and tz is not None:
        value = value.replace(tzinfo=tz)
    return value.timestamp()


@dataclass(frozen=True)
class KnownPlate:
    """One entry of a known-plate list."""

    plate: str  # normalized: A-Z and 0-9
    name: str
    group: str
    valid_from: float = -math.inf  # timestamps
    valid_until: float = math.inf
    windows: tuple[Window, ...] = ()
    #: Where it was written: ``configuration`` or ``FILE:LINE`` / ``FILE [N]``.
    source: str = "configuration"

    @classmethod
    def from_config(cls, entry: KnownPlateConfig, source: str, tz: dt.tzinfo | None = None) -> KnownPlate:
        return cls(normalize(entry.plate), entry.name or entry.plate, entry.group,
                   _bound(entry.valid_from, False, tz), _bound(entry.valid_until, True, tz),
                   tuple(parse_window(w) for w in entry.windows), source)

    @property
    def key(self) -> tuple[str, str, str]:
        """Entries with the same key are one vehicle (listed twice, e.g. with two validity windows)."""
        return self.plate, self.name, self.group

    def valid_at(self, ts: float, tz: dt.tzinfo | None = None) -> bool:
        if not self.valid_from <= ts < self.valid_until:
            return False
        if not self.windows:
            return True
        local = dt.datetime.fromtimestamp(ts, tz)
        return any(w.contains(local) for w in self.windows)


@dataclass(frozen=True)
class Match:
    """A known plate at a distance from a read."""

    plate: KnownPlate
    distance: float

    def as_json(self) -> dict:
        """The event's ``known`` field."""
        return {"name": self.plate.name, "group": self.plate.group, "plate": self.plate.plate,
                "distance": self.distance}

    def __str__(self) -> str:
        return f"{self.plate.plate} ({self.plate.name}, {self.plate.group}) at {self.distance:g}"


@dataclass(frozen=True)
class Lookup:
    """What a text is: ``match`` when it matches a known plate; ``rivals`` (the nearest candidate first) when it
    was ambiguous between them; neither when it is unknown."""

    text: str
    match: Match | None = None
    rivals: tuple[Match, ...] = ()

    @property
    def ambiguous(self) -> bool:
        return bool(self.rivals)

    @property
    def outcome(self) -> str:
        """``known``, ``ambiguous`` or ``unknown``."""
        return "known" if self.match else "ambiguous" if self.rivals else "unknown"


class KnownPlates:
    """The known-plate lists in force: ``lookup`` matches a text (see the module doc)."""

    def __init__(self, plates: Iterable[KnownPlate] = (), *, max_distance: float = 1.0,
                 ambiguity_margin: float = 1.0, group_distance: Mapping[str, float] | None = None,
                 groups: Iterable[str] = (), tz: dt.tzinfo | None = None) -> None:
        """``group_distance``: a group's own max_distance; ``groups``: groups declared even without plates;
        ``tz``: the zone of local times (validity without a zone, weekly windows), default the system's."""
        self.plates = tuple(plates)
        self.max_distance = max_distance
        self.margin = ambiguity_margin
        self.group_distance = dict(group_distance or {})
        self.tz = tz
        #: Every configured group, sorted: those declared in ``known_plates.groups`` and those plates name.
        self.groups: tuple[str, ...] = tuple(sorted({*groups, *self.group_distance, *(p.group for p in self.plates)}))
        # No candidate is farther than the largest group distance, and no rival farther than that plus the margin.
        self._limit = max([max_distance, *self.group_distance.values()]) + ambiguity_margin
        self._counts = [Counter(p.plate) for p in self.plates]

    @classmethod
    def from_config(cls, cfg: KnownPlatesConfig, tz: dt.tzinfo | None = None) -> KnownPlates:
        """The lists of a ``known_plates`` section: its plates, then each file's; KnownPlatesError names the
        file and the line or entry of a problem."""
        plates = [KnownPlate.from_config(e, "configuration", tz) for e in cfg.plates]
        for path in cfg.files:
            plates += [KnownPlate.from_config(e, where, tz) for where, e in read_plate_file(path)]
        distances = {g: s.max_distance for g, s in cfg.groups.items() if s.max_distance is not None}
        known = cls(plates, max_distance=cfg.max_distance, ambiguity_margin=cfg.ambiguity_margin,
                    group_distance=distances, groups=cfg.groups, tz=tz)
        known._warn_duplicates()
        return known

    def __len__(self) -> int:
        return len(self.plates)

    def distance_of(self, group: str) -> float:
        """The largest distance at which a plate of ``group`` matches."""
        return self.group_distance.get(group, self.max_distance)

    def lookup(self, text: str, at: float) -> Lookup:
        """Match a voted text at time ``at`` (seconds since the epoch)."""
        text = normalize(text)
        counts = Counter(text)
        near = []
        for plate, plate_counts in zip(self.plates, self._counts, strict=True):
            # Every edit changes at most one character of the longer text, and costs at least the cheapest edit:
            # a bound that spares most plates the full distance (a list of thousands stays fast).
            common = sum(min(n, plate_counts[c]) for c, n in counts.items())
            if (max(len(text), len(plate.plate)) - common) * _CHEAPEST > self._limit or not plate.valid_at(at, self.tz):
                continue
            if (d := distance(text, plate.plate, self._limit)) <= self._limit:
                near.append(Match(plate, d))
        candidates = [m for m in near if m.distance <= self.distance_of(m.plate.group)]
        if not candidates:
            return Lookup(text)
        best = min(candidates, key=lambda m: m.distance)
        rivals = {m.plate.key: m for m in near
                  if m.plate.key != best.plate.key and m.distance < best.distance + self.margin}
        if rivals:
            return Lookup(text, rivals=(best, *sorted(rivals.values(), key=lambda m: m.distance)))
        return Lookup(text, best)

    def lookup_event(self, ev: Event) -> Lookup:
        """Look up an event's voted text at its last frame; a ``new`` event that matches or is ambiguous is
        logged."""
        found = self.lookup(ev.text, ev.last_seen)
        if found.match is not None and ev.type == "new":
            log.info("event new %s id=%s: known plate %s", ev.text, ev.event_id, found.match)
        elif found.ambiguous and ev.type == "new":
            log.warning("event new %s id=%s: ambiguous between known plates %s: no known plate matched", ev.text,
                        ev.event_id, ", ".join(map(str, found.rivals)))
        return found

    def _warn_duplicates(self) -> None:
        seen: dict[str, KnownPlate] = {}
        for p in self.plates:
            first = seen.setdefault(p.plate, p)
            if first.key != p.key:
                log.warning("known plate %s is listed as %s (%s, %s) and as %s (%s, %s): where both are valid, "
                            "its reads are ambiguous and match neither", p.plate, first.name, first.group,
                            first.source, p.name, p.group, p.source)


def group_names(cfg: KnownPlatesConfig) -> tuple[str, ...]:
    """The configured groups, sorted (declared in ``known_plates.groups`` or named by a plate, in the
    configuration or its files): each has the topic ``Topics.known(group)``. KnownPlatesError when a file
    cannot be read."""
    return KnownPlates.from_config(cfg).groups


def reload(current: KnownPlates, cfg: KnownPlatesConfig) -> KnownPlates:
    """The lists read again (on SIGHUP); when one cannot be read, the error is logged and ``current`` stays."""
    try:
        fresh = KnownPlates.from_config(cfg, current.tz)
    except KnownPlatesError as exc:
        log.error("known plates not reloaded, the %d loaded before stay in use: %s", len(current), exc)
        return current
    log.info("known plates reloaded: %d plates (%d before) in groups %s", len(fresh), len(current),
             ", ".join(fresh.groups) or "(none)")
    return fresh


def _problems(err: ValidationError) -> str:
    """``key: problem (got VALUE)`` for each error of one entry."""
    out = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        got = "" if e["type"] in ("missing", "value_error") else f" (got {e.get('input')!r})"
        out.append(f"{'.'.join(str(p) for p in e['loc']) or 'entry'}: {msg}{got}")
    return "; ".join(out)


def _entry(raw: Any, where: str, path: Path) -> KnownPlateConfig:
    try:
        return KnownPlateConfig.model_validate(raw)
    except ValidationError as exc:
        raise KnownPlatesError(f"{path}: {where}: {_problems(exc)}") from None


def read_plate_file(path: Path) -> list[tuple[str, KnownPlateConfig]]:
    """The entries of a ``.yaml``/``.yml`` or ``.csv`` plate file, each with where it was written
    (``FILE:LINE`` or ``FILE [N]``); KnownPlatesError names the file and the line or entry of a problem.

    YAML: a list of entries (``plate``, ``group``, ``name``, ``valid_from``, ``valid_until``, ``windows``), or a
    mapping whose one key ``plates`` holds that list. CSV: a header row naming the columns (``CSV_COLUMNS``; only
    ``plate`` and ``group`` required), then one plate per row; ``windows`` separated by ``;``; empty lines and
    lines starting with ``#`` are skipped.
    """
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return _read_yaml(path)
    if suffix == ".csv":
        return _read_csv(path)
    raise KnownPlatesError(f"{path}: a plate file is .yaml, .yml or .csv")


def _read_yaml(path: Path) -> list[tuple[str, KnownPlateConfig]]:
    try:
        data = load_yaml(path)
    except YamlError as exc:
        raise KnownPlatesError(str(exc)) from None
    key = ""
    if isinstance(data, dict) and set(data) == {"plates"}:
        data, key = data["plates"], "plates"
    if data is None:
        return []
    if not isinstance(data, list):
        raise KnownPlatesError(f"{path}: a plate file holds a list of plates (or 'plates:' with that list)")
    return [(f"{path} {key}[{i}]", _entry(raw, f"{key}[{i}]{_plate_of(raw)}", path)) for i, raw in enumerate(data)]


def _plate_of(raw: Any) -> str:
    """`` (plate X)`` for an error about an entry, to find it in a long list."""
    return f" (plate {raw['plate']})" if isinstance(raw, dict) and isinstance(raw.get("plate"), str) else ""


def _read_csv(path: Path) -> list[tuple[str, KnownPlateConfig]]:
    try:
        text = read_text(path)
    except YamlError as exc:
        raise KnownPlatesError(str(exc)) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    out = []
    try:
        for row in reader:
            cells = [c.strip() for c in row]
            if not any(cells) or cells[0].startswith("#"):
                continue
            if header is None:
                header = [c.lower() for c in cells]
                unknown = [c for c in header if c not in CSV_COLUMNS]
                if unknown or "plate" not in header or len(set(header)) < len(header):
                    raise KnownPlatesError(f"{path}: line {reader.line_num}: the header row names the columns, "
                                           f"plate and group required, each once, of {', '.join(CSV_COLUMNS)}"
                                           + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
                continue
            if len(cells) > len(header):
                raise KnownPlatesError(f"{path}: line {reader.line_num}: {len(cells)} cells, the header names "
                                       f"{len(header)} columns")
            raw: dict[str, Any] = {k: v for k, v in zip(header, cells, strict=False) if v}
            if "windows" in raw:
                raw["windows"] = [w.strip() for w in raw["windows"].split(";") if w.strip()]
            where = f"line {reader.line_num}"
            out.append((f"{path}:{reader.line_num}", _entry(raw, f"{where}{_plate_of(raw)}", path)))
    except csv.Error as exc:
        raise KnownPlatesError(f"{path}: line {reader.line_num}: not valid CSV: {exc}") from None
    return out
