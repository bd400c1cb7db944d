"""Tracker: association, queue splits, per-character voting, new/end timing, parked cars, re-appearance."""
from __future__ import annotations

import math

import pytest

from edge.config import TrackingConfig
from edge.formats import FormatSet
from edge.tracker import Observation, Tracker, iou, similarity

T0 = 1_700_000_000.0
GB = FormatSet([{"code": "GB", "name": "United Kingdom", "weight": 1, "classes": {},
                 "formats": [{"name": "gb_current", "groups": ["LLDD", "LLL"], "separators": [" "], "share": 1,
                              "vehicle": "car"}]}])


def obs(text: str, x: float, conf: float = 0.9, y: float = 100.0) -> Observation:
    return Observation(text, conf, (x, y, x + 100, y + 25))


def tracker(formats: FormatSet | None = None, **kw) -> Tracker:
    cfg = TrackingConfig(**({"confirm_frames": 2, "confirm_confidence": 0.5, "lost_after_s": 1.0} | kw))
    return Tracker(cfg, "cam", formats=formats)


def feed(t: Tracker, texts: list[str], x: float = 10.0, conf: float = 0.9, start: float = 0.0,
         step: float = 0.1) -> list[tuple[str, str, str]]:
    """One read per frame at one spot; the (type, text, id) of every event."""
    out = []
    for i, text in enumerate(texts):
        out += [(e.type, e.text, e.event_id) for e in t.update([obs(text, x, conf)], T0 + start + i * step)]
    return out


def test_iou_and_similarity() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert abs(iou((0, 0, 10, 10), (5, 0, 15, 10)) - 1 / 3) < 1e-9
    assert similarity("AB12CDE", "AB12CDE") == 1.0
    assert abs(similarity("AB12CDE", "AB12CD") - 6 / 7) < 1e-9
    assert similarity("", "AB") == 0.0


def test_new_as_soon_as_confident_then_end_with_same_id() -> None:
    """Format and display now come from the model set's formats (GB's format is called gb_current)."""
    t = tracker(GB)
    assert t.update([obs("AB12CDE", 10)], T0) == []  # one read is not enough
    events = t.update([obs("AB12CDE", 20)], T0 + 0.1)
    assert [(e.type, e.text) for e in events] == [("new", "AB12CDE")]
    new = events[0]
    assert new.frame_count == 2 and new.display == "AB12 CDE" and new.format == "gb_current"
    assert new.country == "GB"
    assert t.update([obs("AB12CDE", 30)], T0 + 0.2) == []  # no repeats while it stays
    assert t.update([], T0 + 0.9) == []
    end = t.update([], T0 + 1.3)
    assert [(e.type, e.event_id) for e in end] == [("end", new.event_id)]
    assert end[0].frame_count == 3 and end[0].last_seen == T0 + 0.2 and end[0].first_seen == T0
    assert t.tracks == []


def test_voting_per_character_outvotes_a_misread_voted_confidence_per_position() -> None:
    """The voted confidence is now per position (module doc), no longer the exact-agreeing share."""
    t = tracker(confirm_frames=3, confirm_confidence=0.5)
    t.update([obs("AB12CDE", 10, 0.9)], T0)
    t.update([obs("A812CDE", 12, 0.6)], T0 + 0.1)  # B read as 8 once, less sure
    events = t.update([obs("AB12CDE", 14, 0.9)], T0 + 0.2)
    assert events == []  # only two reads agree so far
    events = t.update([obs("AB12CDE", 16, 0.9)], T0 + 0.3)
    assert [e.text for e in events] == ["AB12CDE"]
    # One length; six positions unanimous, one won 2.7 : 0.6; mean read confidence 3.3 / 4.
    expected = (2.7 / 3.3) ** (1 / 7) * 3.3 / 4
    assert abs(events[0].confidence - expected) < 1e-6


def test_one_read_voted_confidence_is_its_confidence_and_other_lengths_lower_it() -> None:
    t = tracker(confirm_frames=1)
    (new,) = t.update([obs("AB12CDE", 10, 0.8)], T0)
    assert abs(new.confidence - 0.8) < 1e-9
    t.update([obs("AB12CD", 10, 0.8)], T0 + 0.1)  # a character lost: the length share is 1/2
    assert abs(t.tracks[0].voted()[1] - 0.5 * 0.8) < 1e-9


def test_low_confidence_is_not_announced() -> None:
    t = tracker(confirm_confidence=0.8)
    for i in range(5):
        assert t.update([obs("AB12CDE", 10 + i, 0.5)], T0 + i * 0.1) == []
    assert t.update([], T0 + 5) == []  # never confirmed: no 'end' either


def test_association_by_text_when_boxes_do_not_overlap() -> None:
    t = tracker()
    t.update([obs("AB12CDE", 0)], T0)
    t.update([obs("AB12CDE", 400)], T0 + 0.1)  # jumped (low frame rate): same text, same track
    assert len(t.tracks) == 1 and t.tracks[0].frames == 2


def test_two_vehicles_two_events() -> None:
    t = tracker()
    t.update([obs("AB12CDE", 0), obs("XY34ZKP", 300)], T0)
    events = t.update([obs("XY34ZKP", 310), obs("AB12CDE", 10)], T0 + 0.1)
    assert sorted(e.text for e in events) == ["AB12CDE", "XY34ZKP"]
    assert len({e.event_id for e in events}) == 2


def test_parked_car_ends_and_is_not_repeated() -> None:
    t = tracker(max_track_s=5.0, reappear_window_s=30.0)
    types = []
    for i in range(120):  # 12 s parked in view at 10 fps
        types += [e.type for e in t.update([obs("AB12CDE", 10)], T0 + i * 0.1)]
    assert types == ["new", "end"]  # ended after max_track_s, then silent while it stays


def test_reappearance_within_window_is_not_new_but_later_is() -> None:
    t = tracker(reappear_window_s=10.0)
    seen = []
    for start in (0.0, 5.0, 30.0):  # passes at 0 s, again 5 s later, again 30 s later
        for i in range(3):
            seen += [(e.type, start) for e in t.update([obs("AB12CDE", 10 + i)], T0 + start + i * 0.1)]
        seen += [(e.type, start) for e in t.update([], T0 + start + 2)]
    assert seen == [("new", 0.0), ("end", 0.0), ("new", 30.0), ("end", 30.0)]


def test_finish_ends_every_confirmed_track() -> None:
    t = tracker()
    t.update([obs("AB12CDE", 0), obs("XY34ZKP", 300)], T0)
    t.update([obs("AB12CDE", 0), obs("XY34ZKP", 300)], T0 + 0.1)
    t.update([obs("QQ1", 600)], T0 + 0.2)  # never confirmed
    assert sorted((e.type, e.text) for e in t.finish()) == [("end", "AB12CDE"), ("end", "XY34ZKP")]
    assert t.tracks == []


def test_event_json_fields() -> None:
    t = tracker()
    t.update([obs("AB12CDE", 10)], T0)
    (new,) = t.update([obs("AB12CDE", 12)], T0 + 0.25)
    j = new.as_json()
    assert set(j) == {"type", "id", "camera", "text", "display", "format", "country", "confidence",
                      "best_confidence", "first_seen", "last_seen", "frame_count", "box"}
    assert j["format"] is None and j["country"] is None and j["display"] == "AB12CDE"  # no formats given
    assert j["first_seen"].endswith("Z") and j["camera"] == "cam" and len(j["box"]) == 4
    assert j["last_seen"] == "2023-11-14T22:13:20.250Z"


def test_event_json_format_and_country_from_the_format_set() -> None:
    t = tracker(GB)
    t.update([obs("AB12CDE", 10)], T0)
    (new,) = t.update([obs("AB12CDE", 12)], T0 + 0.1)
    j = new.as_json()
    assert (j["format"], j["country"], j["display"]) == ("gb_current", "GB", "AB12 CDE")
    t.update([obs("ZG4821KT", 300)], T0 + 0.2)
    (other,) = t.update([obs("ZG4821KT", 302)], T0 + 0.3)  # fits no format of the set
    assert (other.format, other.country, other.display) == (None, None, "ZG4821KT")
    assert list(j).index("country") == list(j).index("format") + 1


def test_queue_at_a_barrier_next_car_on_the_same_box_is_a_new_vehicle() -> None:
    """Car B stops where car A stood, with no gap: two vehicles, A's end no later than B's new."""
    t = Tracker(TrackingConfig(), "cam")  # the shipped defaults
    events = feed(t, ["AB12CDE"] * 10 + ["XY34ZKP"] * 10)
    events += [(e.type, e.text, e.event_id) for e in t.finish()]
    assert [(k, text) for k, text, _ in events] == [("new", "AB12CDE"), ("end", "AB12CDE"),
                                                     ("new", "XY34ZKP"), ("end", "XY34ZKP")]
    assert events[0][2] == events[1][2] != events[2][2] == events[3][2]


def test_queue_old_track_ends_at_once_in_the_frame_the_next_car_appears() -> None:
    t = Tracker(TrackingConfig(confirm_frames=1), "cam")
    feed(t, ["AB12CDE"] * 5)
    events = t.update([obs("XY34ZKP", 10)], T0 + 0.5)
    assert [(e.type, e.text) for e in events] == [("end", "AB12CDE"), ("new", "XY34ZKP")]
    assert [tr.voted()[0] for tr in t.tracks] == ["XY34ZKP"]


def test_queue_split_needs_a_confident_track_and_a_confident_read() -> None:
    t = Tracker(TrackingConfig(), "cam")
    feed(t, ["AB12CDE"], conf=0.9)  # one read: the track is not confident yet
    feed(t, ["XY34ZKP"], conf=0.9, start=0.1)
    assert len(t.tracks) == 1 and t.tracks[0].frames == 2


def test_a_single_low_confidence_misread_does_not_split_a_track() -> None:
    t = Tracker(TrackingConfig(), "cam")
    events = feed(t, ["AB12CDE"] * 5)
    events += [(e.type, e.text, e.event_id) for e in t.update([obs("XY34ZKP", 10, 0.5)], T0 + 0.5)]
    events += [(e.type, e.text, e.event_id) for e in t.update([obs("A812CDF", 10, 0.95)], T0 + 0.6)]  # similar
    events += feed(t, ["AB12CDE"] * 5, start=0.7)
    events += [(e.type, e.text, e.event_id) for e in t.finish()]
    assert [(k, text) for k, text, _ in events] == [("new", "AB12CDE"), ("end", "AB12CDE")]
    assert len({i for _, _, i in events}) == 1


def test_cars_side_by_side_one_unread_for_a_frame_is_not_ended() -> None:
    t = tracker()
    for i in range(3):
        t.update([obs("AB12CDE", 0), obs("XY34ZKP", 300)], T0 + i * 0.1)
    assert t.update([obs("XY34ZKP", 302)], T0 + 0.3) == []  # AB12CDE hidden for a frame
    assert sorted(tr.voted()[0] for tr in t.tracks) == ["AB12CDE", "XY34ZKP"]


EXACT = "NYL3614"
MIXED = ["NYL36I4", EXACT, "NYL3G14", EXACT, "NYL36I4", EXACT, "NYL3G14", EXACT, EXACT, EXACT]
SAME_POSITION = [EXACT, "NYL36I4"] * 4 + [EXACT, EXACT]


@pytest.mark.parametrize("texts", [MIXED, SAME_POSITION], ids=["mixed", "same-position"])
def test_reads_alternating_on_look_alikes_confirm_with_the_majority_text(texts: list[str]) -> None:
    """6 of 10 frames exact, 4 with one look-alike character: the per-position vote confirms."""
    t = Tracker(TrackingConfig(), "cam")  # confirm_confidence 0.6
    events = feed(t, texts)
    assert [(k, text) for k, text, _ in events] == [("new", EXACT)]
    text, conf, agree = t.tracks[0].voted()
    assert text == EXACT and agree == 6
    # The old rule (mean agreeing confidence x their share of the weight) gave 0.9 * 0.6 = 0.54: no event.
    assert conf >= 0.6 > 0.9 * 0.6
    if texts is SAME_POSITION:  # one position won 6 : 4, six unanimous
        assert math.isclose(conf, 0.9 * 0.6 ** (1 / 7))


def test_a_coin_toss_at_every_position_does_not_confirm() -> None:
    """Two different plates read alternately (a misassociation): the vote is not confident."""
    t = Tracker(TrackingConfig(split_confidence=1.0), "cam")  # keep them in one track
    assert feed(t, ["AB12CDE", "XY34ZKP"] * 5, conf=0.7) == []
