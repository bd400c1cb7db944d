"""Detection-search settings: where the detector looks in a frame, and how many passes it may spend there.

This is the one owner of those settings and of their defaults. The daemon's
``detection`` section (``edge.config.DetectionConfig``) is these fields plus
the model and runtime keys; ``read``'s flags, ``health``, ``tools.bench`` and
``trainer evaluate`` all build a :class:`SearchSettings`, so every caller runs
the same search unless told otherwise. ``edge.pipeline.Pipeline.run`` carries
the search out.

The search, per frame:

1. the whole frame, letterboxed to the detector's input (one pass);
2. a zoomed look at each of the ``refine`` best small detections (one pass each),
   whose mask fits the plate instead of the bumper around it;
3. the reads of every box found so far; when one of them fits a plate format
   and is at least ``sure`` confident, the search stops here;
4. otherwise full-resolution tiles (``tiles`` columns, and the rows their aspect
   needs), for plates too small for the whole frame: on a still every tile, on
   video ``tiles_per_frame`` of them in turn (the frame's number picks which:
   a plate stays in view for many frames, so every tile still sees it), each
   followed by zoomed looks at the boxes it found that read as something; a
   sure read after a tile ends the search there as in step 3.

Zoomed looks go only to boxes that read as lettering, two characters or more
at the reader's least confidence (``edge.pipeline.lettered``): a box that cuts
through a plate reads a part of it, too short to stand for the plate, and the
zoomed look fits the box to the whole plate; what reads as nothing or one
character at one scale is mostly a grille or a lamp, not a plate.

On video a frame spends at most ``max_detector_runs`` passes (whole frame,
tiles, zoomed looks, in that order of priority). A still has no next frame:
it gets every tile it needs and no cap, and a plate whose read stays below
``sure`` is read again in its box shifted a little four ways, the text with
the most confidence over its crops standing (``Pipeline.read_detections``);
on video the tracker's vote over frames does that.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SearchSettings(BaseModel):
    """How the detector searches a frame (see the module's docstring); immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    refine: int = Field(4, ge=0, le=16, description="The best N small detections of a frame get a zoomed second "
                        "detector pass that fits their box to the plate (one detector run each; 0: off).")
    tiles: int = Field(2, ge=0, le=8, description="When the whole frame gives no sure read, look at it in this "
                       "many overlapping columns of full-resolution tiles (and the rows their aspect needs): finds "
                       "plates too small at whole-frame scale, at one detector run per tile (2: 4 tiles on a 16:9 "
                       "or 4:3 frame; 0: off).")
    tiles_per_frame: int = Field(1, ge=0, le=64, description="On video, look at only this many tiles per inferred "
                                 "frame, taking turns (0: every tile on every frame). A plate stays in view for many "
                                 "frames, so each tile still sees it. A still image gets every tile.")
    max_detector_runs: int = Field(3, ge=0, le=64, description="On video, detector runs per frame at most: whole "
                                   "frame, tiles, then zoomed looks until it is spent (0: no cap). Each run of the "
                                   "shipped detector is 0.16 GMAC. A still image has no cap.")
    sure: float = Field(0.98, ge=0, le=1.01, description="A read that fits a plate format with at least this "
                        "confidence ends the search of its frame: no tile, or no further tile, is looked at (1.01: "
                        "never stop early, always look at every tile).")

    @model_validator(mode="after")
    def _check(self) -> SearchSettings:
        # The cap stops zoomed looks only: the whole frame and the frame's tiles always run.
        if self.max_detector_runs and self.tiles >= 2 and not 0 < self.tiles_per_frame < self.max_detector_runs:
            raise ValueError(f"max_detector_runs: {self.max_detector_runs} runs a frame cannot hold the whole frame "
                             f"and {'every tile' if not self.tiles_per_frame else f'{self.tiles_per_frame} tiles'}; "
                             "set tiles_per_frame to 1 or more and below max_detector_runs (or tiles: 0)")
        return self

    def search_settings(self) -> SearchSettings:
        """These settings alone (a configuration section that extends them gives only its search fields)."""
        return SearchSettings(**{name: getattr(self, name) for name in SearchSettings.model_fields})


#: The search fields, for the callers that expose them (``read``'s flags, the bench's table).
SEARCH_FIELDS = tuple(SearchSettings.model_fields)
