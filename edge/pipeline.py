"""Frame -> plate reads: detector, rectified crops, reader, format-aware decoding."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge.detect import Detection, PlateDetector, overlap
from edge.formats import DEFAULT_MAX_COST, FormatSet, PlateText
from edge.model import DEFAULT_MODELS, load_model_set
from edge.recognize import PlateReader

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


class Pipeline:
    """Detector and reader of one model set, applied to BGR frames."""

    def __init__(self, detector: PlateDetector, reader: PlateReader, max_plates: int = 8, refine: int = 4,
                 tiles: int = 2, tiles_per_frame: int = 0, max_runs: int = 0) -> None:
        self.detector = detector
        self.reader = reader
        self.max_plates = max_plates
        #: How many of the best detections get a zoomed second detector pass (one detector run each).
        self.refine = refine
        #: Columns of full-resolution tiles looked at besides the whole frame (0: the whole frame only).
        self.tiles = tiles
        #: Tiles looked at per frame, taking turns across frames (0: all of them on every frame). On video a
        #: plate stays in view for many frames, so every tile still sees it, at a fraction of the runs a frame.
        self.tiles_per_frame = tiles_per_frame
        #: Detector runs per frame at most (whole frame, tiles, zoomed looks; 0: no cap).
        self.max_runs = max_runs
        self._next_tile = 0

    @classmethod
    def from_dir(cls, models_dir: str | Path, num_threads: int = 2, accelerator: str = "cpu", refine: int = 4,
                 tiles: int = 2, tiles_per_frame: int = 0, max_runs: int = 0, extra_formats: FormatSet | None = None,
                 max_cost: float = DEFAULT_MAX_COST) -> Pipeline:
        """Load the detector and reader of a model set directory (see ``edge.model.load_model_set``);
        ``extra_formats`` adds country files to the formats the reader carries."""
        det, rd = load_model_set(models_dir, num_threads, accelerator)
        return cls(PlateDetector(det), PlateReader(rd, extra_formats, max_cost), refine=refine, tiles=tiles,
                   tiles_per_frame=tiles_per_frame, max_runs=max_runs)

    @classmethod
    def from_config(cls, detection: DetectionConfig, extra_formats: FormatSet | None = None) -> Pipeline:
        """The pipeline a configuration's ``detection`` section describes: what the daemon runs and ``health``
        checks, built in this one place so that the two cannot differ."""
        return cls.from_dir(detection.models or DEFAULT_MODELS, detection.threads, detection.accelerator,
                            refine=detection.refine, tiles=detection.tiles,
                            tiles_per_frame=detection.tiles_per_frame, max_runs=detection.max_detector_runs,
                            extra_formats=extra_formats)

    @property
    def formats(self) -> FormatSet:
        """The plate formats this pipeline decodes with (the reader's, plus any added country files)."""
        return self.reader.formats

    def read_detections(self, image: np.ndarray, detections: list[Detection]) -> list[PlateRead]:
        """Read the text of given detections; drop reads that cannot be plates; best first.

        A detection with several candidate boxes (see ``edge.detect``) is read
        in each; the read that fits a format and that the reader is surest of
        stands for the plate, with the tightest box of the candidates that read
        the same text.
        """
        reads = []
        for det in detections[: self.max_plates]:
            seen: list[tuple[PlateText, Detection]] = []
            for cand in det.candidates():
                read = self.reader.read_crop(self.reader.crop(image, cand.quad))
                if acceptable(read):
                    seen.append((read, cand))
            if not seen:
                continue
            read, _ = max(seen, key=lambda rc: _candidate_rank(rc[0]))
            # Every candidate that reads the same text holds the plate; the tightest of them is its box (a looser
            # one takes in the bumper or the plate frame around it).
            cand = min((c for r, c in seen if r.text == read.text), key=lambda c: _box_area(c.box))
            # The plate keeps its detection's score: the ranking across plates is the detector's, not the crop's.
            chosen = replace(cand, score=det.score, alternatives=())
            reads.append(PlateRead(read.text, read.display, read.format, read.country, read.confidence, chosen,
                                   tuple(round(p, 4) for p in read.char_probs)))
        reads.sort(key=_rank, reverse=True)
        return reads

    def restart_tiles(self) -> None:
        """Start the turn of tiles (``tiles_per_frame``) again at the first tile."""
        self._next_tile = 0

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Plates found in a BGR frame with this pipeline's tiles and refinement, best first."""
        turn = None
        if self.tiles >= 2 and self.tiles_per_frame > 0:
            turn = [self._next_tile + i for i in range(self.tiles_per_frame)]
            self._next_tile += self.tiles_per_frame
        return self.detector.detect(image, refine=self.refine, tiles=self.tiles, tile_indices=turn,
                                    max_runs=self.max_runs)

    def __call__(self, image: np.ndarray) -> list[PlateRead]:
        """All plates read in a BGR frame, best first."""
        return self.read_detections(image, self.detect(image))


def read_as_video(pipeline: Pipeline, image: np.ndarray, frames: int) -> tuple[list[PlateRead], int]:
    """The plates of a still image shown to ``pipeline`` as ``frames`` frames of a camera (0: one full turn of
    its tiles), the surest read of each plate across them kept, and the frames shown: what a pipeline that
    spreads its tiles over frames (``tiles_per_frame``) finds in a scene that stays in view that long."""
    pipeline.restart_tiles()  # as when a car enters the view: the turn of tiles starts anywhere, here at the first
    if frames <= 0:
        n_windows = len(pipeline.detector.tile_windows((image.shape[1], image.shape[0]), pipeline.tiles)) \
            if pipeline.tiles >= 2 else 1
        frames = max(1, -(-n_windows // max(1, pipeline.tiles_per_frame or n_windows)))
    kept: list[PlateRead] = []
    for _ in range(frames):
        for read in pipeline(image):
            same = next((i for i, k in enumerate(kept) if overlap(k.detection.box, read.detection.box) >= 0.3), None)
            if same is None:
                kept.append(read)
            elif _rank(read) > _rank(kept[same]):
                kept[same] = read
    return sorted(kept, key=_rank, reverse=True), frames
