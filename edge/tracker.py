"""Plate reads across frames -> vehicles -> ``new`` / ``end`` events.

Reads of one frame are associated with the active tracks by box overlap (IoU
with the track's last box) and text similarity; a read that fits no track
starts one. Each track votes its text per character position, weighted by
confidence (per-character confidences when the reader gives them, else the
read's confidence), among the reads of the most supported length.

A track sends ``new`` as soon as its voted text is confident, so that a gate
can open while the car waits: at least ``confirm_frames`` reads equal the
voted text and the voted confidence reaches ``confirm_confidence``. The voted
confidence is the mean confidence of the agreeing reads times their share of
all the track's read weight (disagreement lowers it). ``end``, with the same
event id, goes out when the track is not seen for ``lost_after_s`` or is
older than ``max_track_s`` (a parked car). A plate whose track ended less
than ``reappear_window_s`` ago is not a new event: its new track is silent
and extends the window (so a parked car does not repeat itself).

All times are frame timestamps (seconds since the epoch), not the wall clock,
so a clip replays identically however fast it is processed.
"""
from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

from edge.config import TrackingConfig
from edge.detect import box_iou
from edge.plates import display_text, match_format, similarity

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Observation:
    """One plate read in one frame, as the tracker needs it."""

    text: str
    confidence: float
    box: Box
    #: Per-character confidences of ``text``, when the reader provides them.
    char_confidences: tuple[float, ...] | None = None
    #: The frame it was read in (only referenced, for the optional crop).
    image: object | None = None


@dataclass(frozen=True)
class Event:
    """A ``new`` or ``end`` message about one vehicle."""

    type: str
    event_id: str
    camera: str
    text: str
    display: str
    format: str | None
    confidence: float
    first_seen: float
    last_seen: float
    frame_count: int
    box: Box
    best_confidence: float
    crop: bytes | None = None

    def as_json(self) -> dict:
        """The event's JSON fields (without the crop: the publisher decides how a crop travels)."""
        return {
            "type": self.type,
            "id": self.event_id,
            "camera": self.camera,
            "text": self.text,
            "display": self.display,
            "format": self.format,
            "confidence": round(self.confidence, 4),
            "best_confidence": round(self.best_confidence, 4),
            "first_seen": iso_utc(self.first_seen),
            "last_seen": iso_utc(self.last_seen),
            "frame_count": self.frame_count,
            "box": [round(v, 1) for v in self.box],
        }


def iso_utc(ts: float) -> str:
    """ISO 8601 UTC with milliseconds and a Z."""
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


iou = box_iou  # one definition, in edge.detect


@dataclass
class Track:
    """One vehicle's plate over time, with its per-position votes."""

    event_id: str
    first_seen: float
    last_seen: float
    box: Box
    frames: int = 0
    best: Observation | None = None
    crop: bytes | None = None
    confirmed: bool = False  # 'new' was sent
    silent: bool = False  # a re-appearance within the window: no events
    #: length -> per position -> character -> weight
    votes: dict[int, list[dict[str, float]]] = field(default_factory=dict)
    length_weight: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    #: exact text -> (reads, sum of confidences)
    texts: dict[str, tuple[int, float]] = field(default_factory=dict)

    def add(self, obs: Observation, ts: float) -> bool:
        """Add a read; return True when it became the track's best read."""
        n = len(obs.text)
        weights = obs.char_confidences or (obs.confidence,) * n
        positions = self.votes.setdefault(n, [defaultdict(float) for _ in range(n)])
        for pos, (ch, w) in enumerate(zip(obs.text, weights)):
            positions[pos][ch] += w
        self.length_weight[n] += obs.confidence
        count, total = self.texts.get(obs.text, (0, 0.0))
        self.texts[obs.text] = (count + 1, total + obs.confidence)
        self.frames += 1
        self.last_seen = ts
        self.box = obs.box
        if self.best is None or obs.confidence > self.best.confidence:
            self.best = obs
            return True
        return False

    def voted(self) -> tuple[str, float, int]:
        """(voted text, voted confidence, reads agreeing with it)."""
        if not self.votes:
            return "", 0.0, 0
        length = max(self.length_weight, key=lambda k: self.length_weight[k])
        text = "".join(max(pos, key=pos.__getitem__) for pos in self.votes[length])
        agree, conf_sum = self.texts.get(text, (0, 0.0))
        all_weight = sum(self.length_weight.values())
        conf = (conf_sum / agree) * (conf_sum / all_weight) if agree and all_weight > 0 else 0.0
        return text, conf, agree

    def describe(self) -> tuple[str | None, str]:
        """Plate format name and display form of the voted text."""
        text = self.voted()[0]
        fmt = match_format(text)
        name = fmt.name if fmt else None
        return name, display_text(text, name)


class Tracker:
    """Turns per-frame reads into vehicle events (see the module doc)."""

    def __init__(self, cfg: TrackingConfig, camera: str,
                 crop: Callable[[Observation], bytes | None] | None = None) -> None:
        self.cfg = cfg
        self.camera = camera
        self.crop = crop
        self.tracks: list[Track] = []
        #: plate text -> last time a track with it was seen (for reappear_window_s)
        self.recent: dict[str, float] = {}

    def update(self, observations: list[Observation], ts: float) -> list[Event]:
        """Feed one inferred frame's reads (best first); return the events it causes."""
        events = self._associate(observations, ts)
        return events + self.expire(ts)

    def _associate(self, observations: list[Observation], ts: float) -> list[Event]:
        pairs = []
        for oi, obs in enumerate(observations):
            for ti, track in enumerate(self.tracks):
                overlap = iou(obs.box, track.box)
                sim = similarity(obs.text, track.voted()[0])
                if overlap >= self.cfg.min_iou or sim >= self.cfg.min_text_similarity:
                    pairs.append((overlap + sim, oi, ti))
        used_obs: set[int] = set()
        used_tracks: set[int] = set()
        touched: list[Track] = []
        for _, oi, ti in sorted(pairs, reverse=True):  # greedy, best pair first, one-to-one
            if oi in used_obs or ti in used_tracks:
                continue
            used_obs.add(oi)
            used_tracks.add(ti)
            self._add(self.tracks[ti], observations[oi], ts)
            touched.append(self.tracks[ti])
        for oi, obs in enumerate(observations):
            if oi not in used_obs:
                track = Track(self._new_id(ts), ts, ts, obs.box)
                self._add(track, obs, ts)
                self.tracks.append(track)
                touched.append(track)
        return [e for t in touched if (e := self._maybe_confirm(t)) is not None]

    def _add(self, track: Track, obs: Observation, ts: float) -> None:
        if track.add(obs, ts) and self.crop is not None:
            track.crop = self.crop(obs)

    def _maybe_confirm(self, track: Track) -> Event | None:
        if track.confirmed or track.silent:
            return None
        text, conf, agree = track.voted()
        if agree < self.cfg.confirm_frames or conf < self.cfg.confirm_confidence:
            return None
        seen = self.recent.get(text)
        if seen is not None and track.first_seen - seen <= self.cfg.reappear_window_s:
            track.silent = True
            return None
        track.confirmed = True
        return self._event("new", track)

    def expire(self, ts: float) -> list[Event]:
        """End tracks that are lost or too old (parked) at time ``ts``."""
        ended = [t for t in self.tracks
                 if ts - t.last_seen > self.cfg.lost_after_s or ts - t.first_seen > self.cfg.max_track_s]
        return self._end(ended)

    def finish(self) -> list[Event]:
        """End every track (the source ended or the daemon stops)."""
        return self._end(list(self.tracks))

    def _end(self, tracks: list[Track]) -> list[Event]:
        events = []
        for track in tracks:
            self.tracks.remove(track)
            if track.confirmed or track.silent:
                text = track.voted()[0]
                self.recent[text] = max(self.recent.get(text, 0.0), track.last_seen)
            if track.confirmed:
                events.append(self._event("end", track))
        if tracks:
            horizon = max(t.last_seen for t in tracks) - self.cfg.reappear_window_s
            self.recent = {k: v for k, v in self.recent.items() if v >= horizon}
        return events

    def _event(self, kind: str, track: Track) -> Event:
        text, conf, _ = track.voted()
        fmt, display = track.describe()
        best = track.best
        return Event(kind, track.event_id, self.camera, text, display, fmt, conf, track.first_seen,
                     track.last_seen, track.frames, best.box if best else track.box,
                     best.confidence if best else 0.0, track.crop)

    def _new_id(self, ts: float) -> str:
        stamp = dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")[:-3]
        return f"{self.camera}-{stamp}Z-{uuid.uuid4().hex[:6]}"
