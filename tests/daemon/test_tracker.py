"""Tracker: association, per-character voting, new/end timing, parked cars, re-appearance."""
from __future__ import annotations

from edge.config import TrackingConfig
from edge.tracker import Observation, Tracker, iou, similarity

T0 = 1_700_000_000.0


def obs(text: str, x: float, conf: float = 0.9, y: float = 100.0) -> Observation:
    return Observation(text, conf, (x, y, x + 100, y + 25))


def tracker(**kw) -> Tracker:
    cfg = TrackingConfig(**({"confirm_frames": 2, "confirm_confidence": 0.5, "lost_after_s": 1.0} | kw))
    return Tracker(cfg, "cam")


def test_iou_and_similarity() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert abs(iou((0, 0, 10, 10), (5, 0, 15, 10)) - 1 / 3) < 1e-9
    assert similarity("AB12CDE", "AB12CDE") == 1.0
    assert abs(similarity("AB12CDE", "AB12CD") - 6 / 7) < 1e-9
    assert similarity("", "AB") == 0.0


def test_new_as_soon_as_confident_then_end_with_same_id() -> None:
    t = tracker()
    assert t.update([obs("AB12CDE", 10)], T0) == []  # one read is not enough
    events = t.update([obs("AB12CDE", 20)], T0 + 0.1)
    assert [(e.type, e.text) for e in events] == [("new", "AB12CDE")]
    new = events[0]
    assert new.frame_count == 2 and new.display == "AB12 CDE" and new.format == "uk_current"
    assert t.update([obs("AB12CDE", 30)], T0 + 0.2) == []  # no repeats while it stays
    assert t.update([], T0 + 0.9) == []
    end = t.update([], T0 + 1.3)
    assert [(e.type, e.event_id) for e in end] == [("end", new.event_id)]
    assert end[0].frame_count == 3 and end[0].last_seen == T0 + 0.2 and end[0].first_seen == T0
    assert t.tracks == []


def test_voting_per_character_outvotes_a_misread() -> None:
    t = tracker(confirm_frames=3, confirm_confidence=0.5)
    t.update([obs("AB12CDE", 10, 0.9)], T0)
    t.update([obs("A812CDE", 12, 0.6)], T0 + 0.1)  # B read as 8 once, less sure
    events = t.update([obs("AB12CDE", 14, 0.9)], T0 + 0.2)
    assert events == []  # only two reads agree so far
    events = t.update([obs("AB12CDE", 16, 0.9)], T0 + 0.3)
    assert [e.text for e in events] == ["AB12CDE"]
    # Mean agreeing confidence times their share of the weight: 0.9 * 2.7 / 3.3.
    assert abs(events[0].confidence - 0.9 * 2.7 / 3.3) < 1e-6


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
    assert set(j) == {"type", "id", "camera", "text", "display", "format", "confidence", "best_confidence",
                      "first_seen", "last_seen", "frame_count", "box"}
    assert j["first_seen"].endswith("Z") and j["camera"] == "cam" and len(j["box"]) == 4
    assert j["last_seen"] == "2023-11-14T22:13:20.250Z"
