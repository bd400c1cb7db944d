"""Frame -> plate reads: detector, rectified crops, reader, format-aware decoding."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from edge.detect import Detection, PlateDetector, merge_tiles, overlap
from edge.formats import DEFAULT_MAX_COST, FormatSet, PlateText
from edge.model import DEFAULT_MODELS, load_model_set
from edge.plates import edits_within
from edge.recognize import PlateReader
from edge.search import SearchSettings

_T = TypeVar("_T")

if TYPE_CHECKING:  # the configuration's models are only read here; `read` need not load them
    from edge.config import DetectionConfig

#: Reads shorter than this are noise (a badge, a fragment), not plates...
MIN_TEXT_LEN = 3
#: ...except a two-character read that fits a plate format (UK cherished numbers such as "5 B") and that the
#: reader is this sure of. Such a read stands for its plate only when no candidate box read longer, and ranks
#: after every longer read of the frame, so that a badge never displaces a plate.
SHORT_TEXT_LEN = 2
SHORT_MIN_CONFIDENCE = 0.9
#: Any read stands for a plate only at this confidence or more: below it the reader gave, on average, less than
#: even odds to each of its characters (on both shared real sets, no top read that was right fell below 0.6).
MIN_CONFIDENCE = 0.5
#: A read that fits no known format (a vanity plate, an unknown country, or lettering that is no plate) is kept
#: only when the reader is at least this sure of it: a format fit is evidence of a plate, a free text is not.
FREE_MIN_CONFIDENCE = 0.6


@dataclass(frozen=True)
class PlateRead:
    """One plate read in one frame."""

    text: str
    display: str
    format: str | None
    country: str | None
    #: ``edge.formats.read_confidence`` of ``char_confidences``: the one confidence of a read.
    confidence: float
    detection: Detection
    #: Probability of each character of ``text`` at its column (for a format-decoded character, that of the fit).
    char_confidences: tuple[float, ...] = ()

    @property
    def score(self) -> float:
        """Ranking score: both the detector and the reader must be sure."""
        return self.confidence * self.detection.score

    def as_json(self) -> dict:
        x1, y1, x2, y2 = self.detection.box
        return {
            "text": self.text,
            "confidence": round(self.confidence, 4),
            "box": [round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1)],
            "display": self.display,
            "format": self.format,
            "country": self.country,
            "detector_score": round(self.detection.score, 4),
        }


#: A read that fits no known format weighs this much of one that fits, in ranking: a fit is evidence of a plate,
#: but a vanity plate or an unknown country is still a plate, and a short fit may be a fragment.
FREE_TEXT_WEIGHT = 0.8


def _evidence(read: PlateRead | PlateText) -> float:
    return 1.0 if read.format is not None else FREE_TEXT_WEIGHT


def _rank(read: PlateRead) -> tuple[bool, float]:
    """Plates best first: reads of plate length before short ones, then score, a format fit counting for more."""
    return len(read.text) >= MIN_TEXT_LEN, read.score * _evidence(read)


def _candidate_rank(read: PlateText) -> tuple[bool, float]:
    """Which candidate box of one plate stands for it: plate length, then confidence, a format fit counting more."""
    return len(read.text) >= MIN_TEXT_LEN, read.confidence * _evidence(read)


#: A candidate box that cuts through its plate reads part of it, often surely, and a short part fits some format
#: (``489T`` of ``489T051``; ``T4Y5`` of ``812T475``). Such a box lies within another candidate of the plate
#: (``FRAGMENT_WITHIN`` of its width, half its height), is at most ``FRAGMENT_MAX_WIDTH`` as wide, and reads at
#: least ``FRAGMENT_MIN_MISSING`` characters fewer, all but ``FRAGMENT_MAX_EDITS`` of them in the wider box's read,
#: which is at least as sure: it does not stand for the plate while that read is acceptable. A wider read that is
#: less sure is as likely a bumper's or a frame's edges read as characters around the plate; one character more
#: in a wider box is as often a frame's lettering or a screw read as a character (``8D79882L``), so it takes two.
FRAGMENT_WITHIN = 0.85
FRAGMENT_MAX_WIDTH = 0.8
FRAGMENT_MIN_MISSING = 2
FRAGMENT_MAX_EDITS = 1


def _is_part(read: PlateText, box: tuple[float, float, float, float], whole: PlateText,
             whole_box: tuple[float, float, float, float]) -> bool:
    """Whether ``read`` in ``box`` is a read of part of the plate ``whole`` reads in ``whole_box`` (see above)."""
    if len(whole.text) < len(read.text) + FRAGMENT_MIN_MISSING or whole.confidence < read.confidence:
        return False
    width, height = box[2] - box[0], box[3] - box[1]
    across = min(box[2], whole_box[2]) - max(box[0], whole_box[0])
    down = min(box[3], whole_box[3]) - max(box[1], whole_box[1])
    if width <= 0 or height <= 0 or across < FRAGMENT_WITHIN * width or down < 0.5 * height:
        return False
    return (width <= FRAGMENT_MAX_WIDTH * (whole_box[2] - whole_box[0])
            and edits_within(read.text, whole.text) <= FRAGMENT_MAX_EDITS)


#: A still's plate whose read is not ``sure`` is read again in its box shifted by these fractions of the box's width
#: and height (left, right, up, down; see ``Pipeline.read_detections``).
REREAD_SHIFTS = ((-0.03, 0.0), (0.03, 0.0), (0.0, -0.06), (0.0, 0.06))


def _shifted(quad: np.ndarray, dx: float, dy: float) -> np.ndarray:
    q = np.asarray(quad, np.float32)
    return q + np.float32(dx) * (q[1] - q[0]) + np.float32(dy) * (q[3] - q[0])


def _box_area(box: tuple[float, float, float, float]) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def acceptable(read: PlateText) -> bool:
    """Whether a read may stand for a plate at all (see MIN_TEXT_LEN, SHORT_*, MIN_CONFIDENCE, FREE_MIN_CONFIDENCE)."""
    n = len(read.text)
    if n < SHORT_TEXT_LEN or read.confidence < MIN_CONFIDENCE:
        return False
    if n == SHORT_TEXT_LEN:
        return read.format is not None and read.confidence >= SHORT_MIN_CONFIDENCE
    return read.format is not None or read.confidence >= FREE_MIN_CONFIDENCE


def lettered(read: PlateText) -> bool:
    """Whether a box's read is lettering that may be part of a plate (``SHORT_TEXT_LEN`` characters or more at
    ``MIN_CONFIDENCE``), so that a zoomed look at the box is worth its run: a box that cuts through a plate (at a
    tile's edge, a crest or a dash) reads a part of it, often too short to stand for the plate, and the zoomed look
    fits the box to the whole plate. A box that reads nothing or one character is mostly a grille or a lamp."""
    return len(read.text) >= SHORT_TEXT_LEN and read.confidence >= MIN_CONFIDENCE


@dataclass(frozen=True)
class SearchCounts:
    """What one frame's search spent."""

    detector_runs: int = 0
    reader_runs: int = 0
    #: Multiply-accumulates of those runs, from the models' metadata.
    macs: int = 0
    #: Whether the search stopped on a sure read before it had looked at every tile of the frame
    #: (``SearchSettings.sure``).
    stopped_early: bool = False
    #: Wall time of the detector passes alone, in milliseconds (the rest of a search is crops and reads).
    detector_ms: float = 0.0

    def as_json(self) -> dict:
        return {"detector_runs": self.detector_runs, "reader_runs": self.reader_runs, "macs": self.macs,
                "stopped_early": self.stopped_early}


@dataclass(frozen=True)
class FrameReads:
    """One frame's answer: its plates, best first, and what the search spent on them."""

    reads: list[PlateRead]
    counts: SearchCounts
    #: Every box the reader read during the search (quad TL, TR, BR, BL in frame pixels) with its read, in the
    #: order read, whether or not the read stands for a plate: where fine-tuning looks for a labelled plate that
    #: no chosen read matches (``trainer.finetune``).
    read_boxes: tuple[tuple[np.ndarray, PlateText], ...] = ()


def _key(quad: np.ndarray) -> bytes:
    """A box's identity within one frame's search: a box read or zoomed once is not read or zoomed again."""
    return np.asarray(quad, np.float32).tobytes()


class _Budget:
    """Detector runs of one frame: counted, timed, and capped on video (``SearchSettings.max_detector_runs``)."""

    def __init__(self, cap: int | None) -> None:
        self.cap = cap
        self.runs = 0
        self.seconds = 0.0

    def spend(self, look: Callable[[], _T]) -> _T:
        """One detector run: ``look()``, counted and timed."""
        t = time.perf_counter()
        try:
            return look()
        finally:
            self.runs += 1
            self.seconds += time.perf_counter() - t

    def left(self, reserve: int = 0) -> bool:
        return self.cap is None or self.runs + reserve < self.cap


class Pipeline:
    """Detector and reader of one model set, applied to BGR frames with one set of search settings.

    A call holds no state between frames: the same frame with the same frame
    number always gives the same answer. On video the caller numbers the
    frames (``run(image, frame=n)``), and the number picks the frame's tiles.
    """

    def __init__(self, detector: PlateDetector, reader: PlateReader, search: SearchSettings | None = None,
                 max_plates: int = 8) -> None:
        self.detector = detector
        self.reader = reader
        self.search = search or SearchSettings()
        self.max_plates = max_plates

    @classmethod
    def from_dir(cls, models_dir: str | Path, num_threads: int = 2, accelerator: str = "cpu",
                 search: SearchSettings | None = None, extra_formats: FormatSet | None = None,
                 max_cost: float = DEFAULT_MAX_COST) -> Pipeline:
        """Load the detector and reader of a model set directory (see ``edge.model.load_model_set``);
        ``extra_formats`` adds country files to the formats the reader carries."""
        models = load_model_set(models_dir, num_threads, accelerator)
        return cls(PlateDetector(models.detector, models.wide), PlateReader(models.reader, extra_formats, max_cost),
                   search)

    @classmethod
    def from_config(cls, detection: DetectionConfig, extra_formats: FormatSet | None = None) -> Pipeline:
        """The pipeline a configuration's ``detection`` section describes: what the daemon runs and ``health``
        checks, built in this one place so that the two cannot differ."""
        return cls.from_dir(detection.models or DEFAULT_MODELS, detection.threads, detection.accelerator,
                            search=detection.search_settings(), extra_formats=extra_formats)

    @property
    def formats(self) -> FormatSet:
        """The plate formats this pipeline decodes with (the reader's, plus any added country files)."""
        return self.reader.formats

    def _read(self, image: np.ndarray, quad: np.ndarray, memo: dict[bytes, PlateText]) -> PlateText:
        key = _key(quad)
        if key not in memo:
            memo[key] = self.reader.read_crop(self.reader.crop(image, quad))
        return memo[key]

    def read_detections(self, image: np.ndarray, detections: list[Detection],
                        memo: dict[bytes, PlateText] | None = None, reread: bool = False) -> list[PlateRead]:
        """Read the text of given detections; drop reads that cannot be plates; best first.

        A detection with several candidate boxes (see ``edge.detect``) is read
        in each; the read that fits a format and that the reader is surest of
        stands for the plate, with the tightest box of the candidates that read
        the same text, unless its box cut through the plate that a wider box
        reads whole (``_is_part``). ``memo`` keeps reads across calls on one
        frame, so a box is read once.

        ``reread`` (a still, which has no next frame to read the plate again):
        a plate whose best read is below ``sure`` is read again in its best box
        shifted by ``REREAD_SHIFTS``, and the text with the most confidence over
        all its crops stands. A read hangs on where the box's edges fall, one
        mask cell either way; on video the tracker votes over frames instead.
        """
        memo = {} if memo is None else memo
        reads = []
        for det in detections[: self.max_plates]:
            seen: list[tuple[PlateText, Detection]] = []
            for cand in det.candidates():
                read = self._read(image, cand.quad, memo)
                if acceptable(read):
                    seen.append((read, cand))
            # A box that cut through the plate does not stand for it while a box that holds it reads whole.
            seen = [(r, c) for r, c in seen if not any(_is_part(r, c.box, w, wc.box) for w, wc in seen)]
            if not seen:
                continue
            read, best = max(seen, key=lambda rc: _candidate_rank(rc[0]))
            if reread and read.confidence < self.search.sure:
                for dx, dy in REREAD_SHIFTS:
                    again = self._read(image, _shifted(best.quad, dx, dy), memo)
                    if acceptable(again):
                        seen.append((again, best))
                votes: dict[str, tuple[bool, float]] = {}
                for r, _ in seen:
                    long, weight = _candidate_rank(r)
                    votes[r.text] = (long, votes.get(r.text, (long, 0.0))[1] + weight)
                text = max(votes, key=lambda t: votes[t])
                read = max((r for r, _ in seen if r.text == text), key=_candidate_rank)
            # Every candidate that reads the same text holds the plate; the tightest of them is its box (a looser
            # one takes in the bumper or the plate frame around it).
            cand = min((c for r, c in seen if r.text == read.text), key=lambda c: _box_area(c.box))
            # The plate keeps its detection's score: the ranking across plates is the detector's, not the crop's.
            chosen = replace(cand, score=det.score, alternatives=())
            reads.append(PlateRead(read.text, read.display, read.format, read.country, read.confidence, chosen,
                                   tuple(round(p, 4) for p in read.char_probs)))
        reads.sort(key=_rank, reverse=True)
        return reads

    def _zoom(self, image: np.ndarray, dets: list[Detection], budget: _Budget, reserve: int,
              zoomed: set[bytes], memo: dict[bytes, PlateText] | None = None) -> list[Detection]:
        """The ``refine`` best of ``dets`` with each of their boxes not yet zoomed looked at again zoomed in
        (``PlateDetector.refine``), keeping ``reserve`` runs of the budget; every box stays a candidate.
        With ``memo``, only detections one of whose boxes already read as lettering (``lettered``) get one."""
        out = list(dets)
        for i, det in enumerate(dets[: self.search.refine]):
            if memo is not None and not any(
                    (read := memo.get(_key(c.quad))) is not None and lettered(read)
                    for c in det.candidates()):
                continue  # not read (past max_plates), or read as no lettering
            boxes: list[Detection] = []
            for cand in det.candidates():
                key = _key(cand.quad)
                if key in zoomed or not self.detector.zoom_helps(image, cand) or not budget.left(reserve):
                    boxes.append(cand)
                    continue
                zoomed.add(key)
                fine = budget.spend(partial(self.detector.refine, image, cand))
                zoomed.add(_key(fine.quad))
                boxes += [fine, cand]
            unique: list[Detection] = []
            for d in boxes:
                if all(not np.array_equal(d.quad, u.quad) for u in unique):
                    unique.append(d)
            out[i] = replace(unique[0], score=det.score, alternatives=tuple(unique[1:]))
        return out

    def _sure(self, reads: list[PlateRead]) -> bool:
        return any(r.format is not None and len(r.text) >= MIN_TEXT_LEN and r.confidence >= self.search.sure
                   for r in reads)

    def run(self, image: np.ndarray, frame: int | None = None) -> FrameReads:
        """The plates of a BGR frame, best first, and what finding them spent (``edge.search``).

        ``frame`` None: a still image, every tile it needs and no cap on
        detector runs. ``frame`` = n: frame n of a video, whose number picks
        its ``tiles_per_frame`` tiles in turn, within ``max_detector_runs``.
        """
        s = self.search
        video = frame is not None
        budget = _Budget(s.max_detector_runs or None if video else None)
        windows = self.detector.tile_windows((image.shape[1], image.shape[0]), s.tiles) if s.tiles >= 2 else []
        if frame is not None and s.tiles_per_frame and windows:
            first = frame * s.tiles_per_frame
            windows = [windows[i % len(windows)] for i in sorted({first + k for k in range(s.tiles_per_frame)})]
        memo: dict[bytes, PlateText] = {}
        zoomed: set[bytes] = set()
        dets = budget.spend(partial(self.detector.look, image))
        reads = self.read_detections(image, dets, memo)
        stopped = self._sure(reads)
        if not stopped:
            # Only boxes that read as something are worth a zoomed look: a whole frame that missed a small
            # plate would spend it on a grille or a sign.
            dets = self._zoom(image, dets, budget, len(windows), zoomed, memo)
            reads = self.read_detections(image, dets, memo)
            stopped = self._sure(reads)
        looked = 0
        for window in windows if not stopped else []:
            tiled = budget.spend(partial(self.detector.look, image, window))
            looked += 1
            if tiled:
                # As before the tiles, only boxes that read as something get a zoomed look: the rest of what a
                # tile finds (grilles, lamps) would spend a run each and read as nothing again.
                dets = merge_tiles(dets, tiled)
                self.read_detections(image, dets, memo)
                dets = self._zoom(image, dets, budget, 0, zoomed, memo)
                reads = self.read_detections(image, dets, memo)
                if self._sure(reads):  # as before the tiles: a sure read ends the search
                    break
        if not video:
            reads = self.read_detections(image, dets, memo, reread=True)
        # The whole frame went through the model that fits its aspect; every other look, through the main one.
        whole_macs = self.detector.model_for((image.shape[1], image.shape[0])).meta.macs
        macs = whole_macs + (budget.runs - 1) * self.detector.model.meta.macs + len(memo) * self.reader.model.meta.macs
        read_boxes = tuple((np.frombuffer(key, np.float32).reshape(4, 2).copy(), read) for key, read in memo.items())
        return FrameReads(reads, SearchCounts(budget.runs, len(memo), macs, looked < len(windows),
                                              round(budget.seconds * 1000, 3)), read_boxes)

    def __call__(self, image: np.ndarray, frame: int | None = None) -> list[PlateRead]:
        """All plates read in a BGR frame, best first (``run`` without its counts)."""
        return self.run(image, frame).reads


def read_as_video(pipeline: Pipeline, image: np.ndarray, frames: int) -> tuple[list[PlateRead], int, SearchCounts]:
    """The plates of a still image shown to ``pipeline`` as ``frames`` frames of a camera (0: one full turn of
    its tiles), the surest read of each plate across them kept, the frames shown, and what the search spent in
    all: what the daemon, which spreads its tiles over frames (``tiles_per_frame``), finds in a scene that stays
    in view that long."""
    s = pipeline.search
    if frames <= 0:
        n_windows = len(pipeline.detector.tile_windows((image.shape[1], image.shape[0]), s.tiles)) \
            if s.tiles >= 2 else 1
        frames = max(1, -(-n_windows // max(1, s.tiles_per_frame or n_windows)))
    kept: list[PlateRead] = []
    spent = SearchCounts()
    for n in range(frames):  # as when a car enters the view: the turn of tiles starts anywhere, here at the first
        result = pipeline.run(image, frame=n)
        c = result.counts
        spent = SearchCounts(spent.detector_runs + c.detector_runs, spent.reader_runs + c.reader_runs,
                             spent.macs + c.macs, spent.stopped_early or c.stopped_early,
                             spent.detector_ms + c.detector_ms)
        for read in result.reads:
            same = next((i for i, k in enumerate(kept) if overlap(k.detection.box, read.detection.box) >= 0.3), None)
            if same is None:
                kept.append(read)
            elif _rank(read) > _rank(kept[same]):
                kept[same] = read
    return sorted(kept, key=_rank, reverse=True), frames, spent
