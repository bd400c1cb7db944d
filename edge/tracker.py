"""Plate reads across frames -> vehicles -> ``new`` / ``end`` events.

Reads of one frame are associated with the active tracks by box overlap (IoU
with the track's last box) or text similarity, best pair first, one to one;
a read that fits no track starts one. One exception makes a queue at a
barrier work, where the next car stops where the last one stood: a confident
read (``split_confidence``) whose text is far from a confident track's voted
text (similarity below ``split_similarity``) is another vehicle, whatever the
overlap. When such a read starts a track on nearly the same box as that
track and the track got no read in the frame, the track ends at once (its
car has left the spot), so its ``end`` does not trail the next car's ``new``.

A read's confidence is the one measure of :func:`edge.formats.read_confidence`
(the geometric mean of its character probabilities); the per-position vote
is weighted by per-character confidences when the reader gives them (else by
the read's confidence), and the length vote and the voted confidence use the
read's confidence.

Each track votes its length (confidence-weighted), then each character
position among the reads of that length. The voted confidence estimates how
likely the voted text is right, as the product of three factors:

* the voted length's share of all the track's read weight (reads of another
  length say the text is wrong);
* the geometric mean over positions of the winning character's share of the
  position's vote weight: the same mean as ``read_confidence`` takes over a
  read's characters, so a position contested by a look-alike (1/I, 6/G)
  lowers the vote without erasing it, while a position that is a coin toss
  costs more than one won by a clear margin;
* the mean confidence of the reads of the voted length (how sure the reader
  was of what it saw).

A single read's voted confidence is therefore its own confidence, and reads
that alternate on one look-alike (6 of 10 frames exact) still confirm, where
the share of exactly agreeing reads alone would not.

A track sends ``new`` as soon as its voted text is confident, so that a gate
can open while the car waits: at least ``confirm_frames`` reads equal the
voted text exactly and the voted confidence reaches ``confirm_confidence``.
``end``, with the same event id, goes out when the track is not seen for
``lost_after_s``, is older than ``max_track_s`` (a parked car), or is
replaced at its spot as above. A plate whose track ended less than
``reappear_window_s`` ago is not a new event: its new track is silent and
extends the window (so a parked car does not repeat itself).

The plate format and country of an event come from the model set's formats
(:class:`edge.formats.FormatSet`); without them an event has no format and
its display is the bare text.

All times are frame timestamps (seconds since the epoch), not the wall clock,
so a clip replays identically however fast it is processed.
"""
from __future__ import annotations

import datetime as dt
import math
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edge.config import TrackingConfig
from edge.detect import box_iou
from edge.plates import similarity

if TYPE_CHECKING:
    from edge.formats import FormatSet

Box = tuple[float, float, float, float]

#: IoU at which a new track's box counts as the same spot as an older track's last box. A car that takes
#: the last one's place at a barrier stops at about the same distance, so its plate box nearly coincides
#: (IoU well above this); plates of cars side by side do not overlap at all, and a car passing between
#: the camera and a waiting one is nearer, so its plate box differs in size and place.
SAME_SPOT_IOU = 0.5


@dataclass(frozen=True)
class Observation:
    """One plate read in one frame, as the tracker needs it."""

    text: str
    #: The read's confidence, :func:`edge.formats.read_confidence` of its character probabilities.
    confidence: float
    box: Box
    #: Per-character confidences of ``text``, when the reader provides them.
    char_confidences: tuple[float, ...] | None = None
    #: The frame it was read in (only referenced, for the optional crop).
    image: object | None = None
    #: The format the pipeline's decoding matched (informational: the tracker votes on the text).
    format: str | None = None


@dataclass(frozen=True)
class Event:
    """A ``new`` or ``end`` message about one vehicle."""

    type: str
    event_id: str
    camera: str
    text: str
    display: str
    format: str | None
    #: ISO 3166-1 alpha-2 code of the format's country, or None.
    country: str | None
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
            "country": self.country,
            "confidence": round(self.confidence, 4),
            "best_confidence": round(self.best_confidence, 4),
            "first_seen": iso_utc(self.first_seen),
            "last_seen": iso_utc(self.last_seen),
            "frame_count": self.frame_count,
            "box": [round(v, 1) for v in self.box],
        }


def iso_utc(ts: float) -> str:
    """ISO 8601 UTC with milliseconds and a Z."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
    #: length -> sum of the confidences of the reads of that length
    length_weight: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    #: length -> reads of that length
    length_reads: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    #: exact text -> (reads, sum of confidences)
    texts: dict[str, tuple[int, float]] = field(default_factory=dict)

    def add(self, obs: Observation, ts: float) -> bool:
        """Add a read; return True when it became the track's best read."""
        n = len(obs.text)
        weights = obs.char_confidences if obs.char_confidences and len(obs.char_confidences) == n \
            else (obs.confidence,) * n
        positions = self.votes.setdefault(n, [defaultdict(float) for _ in range(n)])
        for pos, (ch, w) in enumerate(zip(obs.text, weights, strict=True)):
            positions[pos][ch] += w
        self.length_weight[n] += obs.confidence
        self.length_reads[n] += 1
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
        """(voted text, voted confidence, reads equal to it); the confidence as in the module doc."""
        if not self.votes:
            return "", 0.0, 0
        length = max(self.length_weight, key=self.length_weight.__getitem__)
        positions = self.votes[length]
        text = "".join(max(pos, key=pos.__getitem__) for pos in positions)
        agree = self.texts.get(text, (0, 0.0))[0]
        all_weight = sum(self.length_weight.values())
        weight, reads = self.length_weight[length], self.length_reads[length]
        if all_weight <= 0 or weight <= 0 or not positions:
            return text, 0.0, agree
        log_share = 0.0
        for ch, pos in zip(text, positions, strict=True):
            total = sum(pos.values())
            if pos[ch] <= 0 or total <= 0:  # every read of the position had confidence 0
                return text, 0.0, agree
            log_share += math.log(pos[ch] / total)
        conf = (weight / all_weight) * math.exp(log_share / len(positions)) * (weight / reads)
        return text, min(1.0, conf), agree


class Tracker:
    """Turns per-frame reads into vehicle events (see the module doc)."""

    def __init__(self, cfg: TrackingConfig, camera: str,
                 crop: Callable[[Observation], bytes | None] | None = None, *,
                 formats: FormatSet | None = None) -> None:
        """``formats``: the model set's plate formats, for the events' format, country and display."""
        self.cfg = cfg
        self.camera = camera
        self.crop = crop
        self.formats = formats
        self.tracks: list[Track] = []
        #: plate text -> last time a track with it was seen (for reappear_window_s)
        self.recent: dict[str, float] = {}

    def update(self, observations: list[Observation], ts: float) -> list[Event]:
        """Feed one inferred frame's reads (best first); return the events it causes."""
        events = self._associate(observations, ts)
        return events + self.expire(ts)

    def describe(self, text: str) -> tuple[str | None, str | None, str]:
        """(format name, country code, display form) of a text: from the formats, else (None, None, text)."""
        if self.formats is None:
            return None, None, text
        fmt = self.formats.match(text)
        if fmt is None:
            return None, None, text
        return fmt.name, fmt.country, self.formats.display(text, fmt.name)

    def _confident(self, track: Track, voted: tuple[str, float, int]) -> bool:
        """Whether the track knows its plate: it sent 'new', or its vote meets the confirm rule."""
        _, conf, agree = voted
        return track.confirmed or (agree >= self.cfg.confirm_frames and conf >= self.cfg.confirm_confidence)

    def _other_vehicle(self, obs: Observation, track: Track, voted: tuple[str, float, int]) -> bool:
        """A confident read that confidently disagrees with a confident track is another vehicle's plate."""
        return (obs.confidence >= self.cfg.split_confidence and self._confident(track, voted)
                and similarity(obs.text, voted[0]) < self.cfg.split_similarity)

    def _associate(self, observations: list[Observation], ts: float) -> list[Event]:
        voted = [t.voted() for t in self.tracks]  # once per frame: the votes change only below
        pairs = []
        #: (read, track) pairs kept apart by the split rule whose boxes are the same spot
        same_spot: list[tuple[int, int]] = []
        for oi, obs in enumerate(observations):
            for ti, track in enumerate(self.tracks):
                overlap = iou(obs.box, track.box)
                if self._other_vehicle(obs, track, voted[ti]):
                    if overlap >= max(SAME_SPOT_IOU, self.cfg.min_iou):
                        same_spot.append((oi, ti))
                    continue
                sim = similarity(obs.text, voted[ti][0])
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
        # The old car left the spot the new plate now fills, so the old track ends now rather than after
        # lost_after_s (its 'end' before the new car's 'new'). Only when it got no read this frame: a car
        # still read elsewhere in the frame is still there. Should it still be there after all (hidden for a
        # frame), its next read starts a track that the reappear window keeps silent: no second 'new'.
        replaced = {ti: self.tracks[ti] for oi, ti in same_spot if oi not in used_obs and ti not in used_tracks}
        ended = self._end(list(replaced.values()))
        for oi, obs in enumerate(observations):
            if oi not in used_obs:
                track = Track(self._new_id(ts), ts, ts, obs.box)
                self._add(track, obs, ts)
                self.tracks.append(track)
                touched.append(track)
        return ended + [e for t in touched if (e := self._maybe_confirm(t)) is not None]

    def _add(self, track: Track, obs: Observation, ts: float) -> None:
        if track.add(obs, ts) and self.crop is not None:
            track.crop = self.crop(obs)

    def _maybe_confirm(self, track: Track) -> Event | None:
        if track.confirmed or track.silent:
            return None
        text, _, _ = voted = track.voted()
        if not self._confident(track, voted):
            return None
        seen = self.recent.get(text)
        if seen is not None and track.first_seen - seen <= self.cfg.reappear_window_s:
            track.silent = True
            return None
        track.confirmed = True
        return self._event("new", track, voted)

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

    def _event(self, kind: str, track: Track, voted: tuple[str, float, int] | None = None) -> Event:
        text, conf, _ = voted or track.voted()
        fmt, country, display = self.describe(text)
        best = track.best
        return Event(kind, track.event_id, self.camera, text, display, fmt, country, conf, track.first_seen,
                     track.last_seen, track.frames, best.box if best else track.box,
                     best.confidence if best else 0.0, track.crop)

    def _new_id(self, ts: float) -> str:
        stamp = dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y%m%dT%H%M%S%f")[:-3]
        return f"{self.camera}-{stamp}Z-{uuid.uuid4().hex[:6]}"
