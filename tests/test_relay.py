"""The relay (edge.relay) on gpiozero's mock pin factory: who pulses the gate, who never does, and its latency."""
from __future__ import annotations

import json
import logging
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
from pydantic import ValidationError

from edge.config import KnownPlatesConfig, RelayConfig, TrackingConfig
from edge.known import KnownPlates
from edge.relay import Relay, RelayError, measure_latency
from edge.tracker import Event

MockFactory = pytest.importorskip("gpiozero.pins.mock").MockFactory

FIRST_SEEN = 1_750_000_000.0
PLATES = [{"plate": "AB12CDE", "name": "Alice", "group": "residents"},
          {"plate": "AB12CDF", "name": "Bob", "group": "residents"},
          {"plate": "KM77PQO", "name": "Carol", "group": "residents"},
          {"plate": "BAD666", "name": "Banned", "group": "blocked"},
          {"plate": "DEL123", "name": "Post van", "group": "deliveries"}]


def lists(**section: object) -> KnownPlates:
    return KnownPlates.from_config(KnownPlatesConfig.model_validate({"plates": PLATES, **section}))


def event(text: str, confidence: float = 0.95, kind: str = "new") -> Event:
    return Event(kind, f"gate-{text}", "gate", text, text, None, None, confidence, FIRST_SEEN, FIRST_SEEN + 0.3, 4,
                 (10, 10, 90, 30), confidence)


@pytest.fixture
def relay():
    """A relay on mock GPIO17 for residents, 50 ms pulses, its clock 250 ms after the first frame."""
    cfg = RelayConfig(enabled=True, pin="17", groups=["residents"], pulse_s=0.05,
                      min_confidence=0.8)
    r = Relay.from_config(cfg, pin_factory=MockFactory())
    r.clock = lambda: FIRST_SEEN + 0.25
    yield r
    r.close()


def switched_on(r: Relay) -> bool:
    """Whether the pin has been driven on since the relay took it (mock pins keep their history)."""
    device = r.output.device
    on = device.active_high
    return any(s.state == on for s in device.pin.states[1:])


def decide(r: Relay, known: KnownPlates, text: str, confidence: float = 0.95):
    ev = event(text, confidence)
    return r.handle(ev, known.lookup_event(ev))


def test_a_resident_pulses_for_pulse_s(relay: Relay) -> None:
    d = decide(relay, lists(), "AB12CDE")
    assert d.pulse and d.reason == "known" and d.known.plate.name == "Alice"
    assert relay.output.device.value == 1  # on now, off by itself after pulse_s
    deadline = time.monotonic() + 5
    while relay.output.device.value and time.monotonic() < deadline:
        time.sleep(0.01)
    assert relay.output.device.value == 0 and switched_on(relay)
    message = json.loads(d.payload())
    assert message["pulse"] is True and message["reason"] == "known" and message["pulse_s"] == 0.05
    assert message["known"] == {"name": "Alice", "group": "residents", "plate": "AB12CDE", "distance": 0.0}
    assert message["latency_ms"] == 250.0 and message["event_id"] == "gate-AB12CDE" and message["ambiguous"] == []
    assert message["first_seen"] == "2025-06-15T15:06:40.000Z" and message["at"] == "2025-06-15T15:06:40.250Z"


def test_an_active_low_relay_pulses_low() -> None:
    r = Relay.from_config(RelayConfig(enabled=True, pin="GPIO22", active_high=False, groups=["residents"],
                                      pulse_s=5), pin_factory=MockFactory())
    try:
        pin = r.output.device.pin
        assert pin.state is True  # off: high
        assert decide(r, lists(), "AB12CDE").pulse and pin.state is False
    finally:
        r.close()


def test_a_blocked_plate_never_pulses(relay: Relay) -> None:
    d = decide(relay, lists(), "BAD666", confidence=1.0)
    assert not d.pulse and d.reason == "group_not_chosen" and d.known.plate.group == "blocked"
    assert not switched_on(relay)
    with pytest.raises(ValidationError, match="a blocked group never pulses the relay"):
        RelayConfig(enabled=True, pin="17", groups=["residents", "blocked"])


def test_an_ambiguous_read_never_pulses(relay: Relay) -> None:
    d = decide(relay, lists(), "AB12CDX")  # 1.0 from Alice and from Bob, both residents
    assert not d.pulse and d.reason == "ambiguous" and d.known is None
    assert [m["name"] for m in json.loads(d.payload())["ambiguous"]] == ["Alice", "Bob"]
    assert not switched_on(relay)


def test_a_low_confidence_read_never_pulses(relay: Relay) -> None:
    d = decide(relay, lists(), "AB12CDE", confidence=0.79)
    assert not d.pulse and d.reason == "low_confidence" and "0.79 is below relay.min_confidence 0.8" in d.detail
    assert not switched_on(relay)
    assert decide(relay, lists(), "AB12CDE", confidence=0.8).pulse  # the bound itself is enough


def test_unknown_plates_and_groups_not_chosen_never_pulse(relay: Relay) -> None:
    assert decide(relay, lists(), "ZZ99ZZZ").reason == "unknown"
    assert decide(relay, lists(), "DEL123").reason == "group_not_chosen"
    assert not switched_on(relay)


def test_end_events_are_not_decided_on(relay: Relay) -> None:
    ev = event("AB12CDE", kind="end")
    assert relay.handle(ev, lists().lookup_event(ev)) is None and not switched_on(relay)


def test_the_group_distance_is_the_relay_distance(relay: Relay) -> None:
    """A gate's residents at distance 0: a look-alike read (0 for O) does not open; at 0.5 it does."""
    strict = lists(groups={"residents": {"max_distance": 0}})
    assert decide(relay, strict, "KM77PQ0").reason == "unknown" and not switched_on(relay)
    one_look_alike = lists(groups={"residents": {"max_distance": 0.5}})
    d = decide(relay, one_look_alike, "KM77PQ0")
    assert d.pulse and d.known.distance == 0.5


def test_a_failing_output_is_logged_and_keeps_the_gate_shut(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        name = "GPIO99"

        def pulse(self, seconds: float) -> None:
            raise OSError("the pin went away")

        def close(self) -> None:
            raise OSError("still gone")

    r = Relay(RelayConfig(enabled=True, pin="99", groups=["residents"]), Broken())
    with caplog.at_level(logging.INFO, "edge.relay"):
        d = decide(r, lists(), "AB12CDE")
        r.close()
    assert not d.pulse and d.reason == "output_failed"
    assert "relay: pulsing GPIO99 for AB12CDE id=gate-AB12CDE failed" in caplog.text
    assert "the pin went away" in caplog.text and "closing GPIO99 failed" in caplog.text


def test_every_decision_is_logged(relay: Relay, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "edge.relay"):
        decide(relay, lists(), "AB12CDE")
        decide(relay, lists(), "BAD666")
    assert ("relay: pulse 0.05 s on GPIO17 for AB12CDE id=gate-AB12CDE, known plate AB12CDE (Alice, residents) "
            "at 0, 250 ms after its first frame") in caplog.text
    assert ("relay: no pulse for BAD666 id=gate-BAD666 (group_not_chosen): known plate BAD666 (Banned, blocked) "
            "at 0: group blocked is not in relay.groups") in caplog.text


def test_gpiozero_is_needed_only_when_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gpiozero", None)  # as if not installed
    assert Relay.from_config(RelayConfig()) is None
    with pytest.raises(RelayError, match=r"relay.enabled: gpiozero is not installed"):
        Relay.from_config(RelayConfig(enabled=True, pin="17", groups=["residents"]))


def test_an_unusable_pin_is_named() -> None:
    factory = MockFactory()
    with pytest.raises(RelayError, match=r"relay.pin: cannot drive pin GPIO99: PinInvalidPin"):
        Relay.from_config(RelayConfig(enabled=True, pin="GPIO99", groups=["residents"]), pin_factory=factory)


def _reader(text: str | None):
    def read(image: np.ndarray, frame: int) -> list:
        if text is None:
            return []
        return [SimpleNamespace(text=text, confidence=0.9, detection=SimpleNamespace(box=(10.0, 10.0, 90.0, 30.0)),
                                char_confidences=(0.9,) * len(text), format=None)]
    return read


def test_measure_latency_from_the_first_frame_to_the_pulse() -> None:
    frames = [np.zeros((8, 8, 3), np.uint8)] * 6
    out = measure_latency(_reader("AB12CDE"), frames, runs=3, tracking=TrackingConfig(confirm_frames=3))
    assert out["plate"] == "AB12CDE" and out["runs"] == 3 and out["frames_to_pulse"] == 3
    assert set(out["first_frame_to_pulse_ms"]) == {"median", "p95"} and out["first_frame_to_pulse_ms"]["p95"] >= 0
    assert set(out["decision_ms"]) == {"median", "p95"} and out["decision_ms"]["median"] >= 0
    assert measure_latency(_reader(None), frames, runs=3) == {"plate": None, "runs": 0, "fps": None}
