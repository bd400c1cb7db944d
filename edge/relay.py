"""The relay: a GPIO output pulsed when a known plate of chosen groups arrives (a gate), through gpiozero.

The daemon hands each event and its known-plate lookup (``edge.known``) to
:meth:`Relay.handle`, before the event is spooled. Only a ``new`` event is
decided on, never an ``end``, and it fails safe: the output pulses for
``relay.pulse_s`` only when all of these hold, in this order:

1. the voted text matches a known plate: within its group's own
   ``max_distance``, valid at the event's time, and not ambiguous with
   another known plate (else ``unknown`` or ``ambiguous``);
2. that plate's group is one of ``relay.groups`` (else ``group_not_chosen``;
   the configuration refuses a group named ``blocked`` there);
3. the event's voted confidence is at least ``relay.min_confidence`` (else
   ``low_confidence``).

A pulse that gpiozero fails to give is ``output_failed``, logged with its
traceback; nothing stops the daemon. Every decision, pulse or not, is logged
and returned as a :class:`Decision`, which the daemon spools to
``<prefix>/relay`` with its latency from the vehicle's first frame (the
event's ``first_seen``) to the pulse command.

gpiozero is imported only when the relay is enabled (``pip install
'edge-anpr[gpio]'``); its pin factory is gpiozero's choice, which
``GPIOZERO_PIN_FACTORY`` overrides (``mock``: no hardware).

:func:`measure_latency` measures first frame to pulse on this machine, for
the benchmark.
"""
from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from edge.config import RelayConfig, TrackingConfig
from edge.known import KnownPlate, KnownPlates, Lookup, Match
from edge.tracker import Event, Observation, Tracker, iso_utc

if TYPE_CHECKING:
    import numpy as np

    from edge.pipeline import PlateRead

log = logging.getLogger(__name__)

#: Why a decision was taken: the one that pulses, then those that do not.
PULSE = "known"
REASONS = (PULSE, "unknown", "ambiguous", "group_not_chosen", "low_confidence", "output_failed")


class RelayError(RuntimeError):
    """The relay cannot be driven (gpiozero missing, the pin unusable); the message names the key."""


class Output(Protocol):
    """What the relay drives: a GPIO output, or a stand-in."""

    def pulse(self, seconds: float) -> None:
        """Switch on for ``seconds`` without blocking."""

    def close(self) -> None:
        """Release the output."""


def _pin(spec: str) -> int | str:
    """gpiozero's pin: a bare number is a BCM GPIO number, anything else a name it knows (GPIO17, BOARD11)."""
    return int(spec) if spec.isdigit() else spec


class GpioOutput:
    """A gpiozero ``DigitalOutputDevice``, off until pulsed."""

    def __init__(self, pin: str, active_high: bool = True, pin_factory: Any = None) -> None:
        try:
            from gpiozero import DigitalOutputDevice
        except ImportError:
            raise RelayError("relay.enabled: gpiozero is not installed (pip install 'edge-anpr[gpio]')") from None
        try:
            self.device = DigitalOutputDevice(_pin(pin), active_high=active_high, initial_value=False,
                                              pin_factory=pin_factory)
        except Exception as exc:  # gpiozero's errors (bad pin name, pin in use, no pin factory) share no base
            raise RelayError(f"relay.pin: cannot drive pin {pin}: {type(exc).__name__}: {exc}") from None
        self.name = str(self.device.pin)

    def pulse(self, seconds: float) -> None:
        # gpiozero's background thread switches it off; a new pulse while one runs starts the time again.
        self.device.blink(on_time=seconds, off_time=0, n=1, background=True)

    def close(self) -> None:
        self.device.close()


class RecordingOutput:
    """An output that only records when it was pulsed (the benchmark; no GPIO)."""

    name = "recorder"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.pulses: list[tuple[float, float]] = []  # (time, seconds)

    def pulse(self, seconds: float) -> None:
        self.pulses.append((self.clock(), seconds))

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class Decision:
    """The relay's decision on one ``new`` event."""

    event_id: str
    camera: str
    text: str
    pulse: bool
    reason: str  # one of REASONS
    detail: str  # the reason in words, as logged
    known: Match | None
    #: The nearest known plates when the read was ambiguous.
    rivals: tuple[Match, ...]
    confidence: float
    pulse_s: float | None
    first_seen: float
    #: Wall-clock time of the pulse command (or of the decision, without a pulse).
    at: float

    @property
    def latency_ms(self) -> float:
        """From the vehicle's first frame to the pulse (or the decision)."""
        return (self.at - self.first_seen) * 1000

    def as_json(self) -> dict:
        """The message on ``<prefix>/relay``."""
        return {"event_id": self.event_id, "camera": self.camera, "text": self.text, "pulse": self.pulse,
                "reason": self.reason, "detail": self.detail, "known": self.known.as_json() if self.known else None,
                "ambiguous": [m.as_json() for m in self.rivals], "confidence": round(self.confidence, 4),
                "pulse_s": self.pulse_s, "first_seen": iso_utc(self.first_seen), "at": iso_utc(self.at),
                "latency_ms": round(self.latency_ms, 1)}

    def payload(self) -> bytes:
        return json.dumps(self.as_json()).encode()


class Relay:
    """Decides on ``new`` events and pulses the output (see the module doc)."""

    def __init__(self, cfg: RelayConfig, output: Output, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.output = output
        self.clock = clock
        self.groups = frozenset(g for g in cfg.groups if g.lower() != "blocked")  # the config refuses it too

    @classmethod
    def from_config(cls, cfg: RelayConfig, pin_factory: Any = None) -> Relay | None:
        """The relay of a ``relay`` section on its GPIO pin, or None when disabled; RelayError when the pin
        cannot be driven."""
        if not cfg.enabled:
            return None
        if cfg.pin is None:
            raise RelayError("relay.pin: required when the relay is enabled")
        output = GpioOutput(cfg.pin, cfg.active_high, pin_factory)
        log.info("relay on %s (active %s): %g s pulses for known plates of %s at confidence %.2f or more",
                 output.name, "high" if cfg.active_high else "low", cfg.pulse_s, ", ".join(cfg.groups),
                 cfg.min_confidence)
        return cls(cfg, output)

    @property
    def where(self) -> str:
        return str(getattr(self.output, "name", "the relay output"))

    def decide(self, ev: Event, found: Lookup) -> tuple[str, str]:
        """(reason, in words) for an event and its lookup; the reason is ``PULSE`` only when every rule holds."""
        match = found.match
        if match is None:
            if found.ambiguous:
                return "ambiguous", "ambiguous between known plates " + ", ".join(map(str, found.rivals))
            return "unknown", "no known plate matches"
        if match.plate.group not in self.groups:
            return "group_not_chosen", f"known plate {match}: group {match.plate.group} is not in relay.groups"
        if ev.confidence < self.cfg.min_confidence:
            return "low_confidence", (f"known plate {match}: confidence {ev.confidence:.2f} is below "
                                      f"relay.min_confidence {self.cfg.min_confidence:g}")
        return PULSE, f"known plate {match}"

    def handle(self, ev: Event, found: Lookup) -> Decision | None:
        """Decide on a ``new`` event, pulse when the rules say so, log; None for other events."""
        if ev.type != "new":
            return None
        reason, detail = self.decide(ev, found)
        pulse = reason == PULSE
        if pulse:
            try:
                self.output.pulse(self.cfg.pulse_s)
            except Exception:  # the gate stays shut, and the daemon goes on
                log.exception("relay: pulsing %s for %s id=%s failed", self.where, ev.text, ev.event_id)
                pulse, reason, detail = False, "output_failed", f"{detail}: the pulse failed"
        decision = Decision(ev.event_id, ev.camera, ev.text, pulse, reason, detail, found.match, found.rivals,
                            ev.confidence, self.cfg.pulse_s if pulse else None, ev.first_seen, self.clock())
        if pulse:
            log.info("relay: pulse %g s on %s for %s id=%s, %s, %.0f ms after its first frame", self.cfg.pulse_s,
                     self.where, ev.text, ev.event_id, detail, decision.latency_ms)
        else:
            log.info("relay: no pulse for %s id=%s (%s): %s", ev.text, ev.event_id, reason, detail)
        return decision

    def close(self) -> None:
        try:
            self.output.close()
        except Exception:  # stopping must go on
            log.exception("relay: closing %s failed", self.where)


def _ms(values: list[float]) -> dict:
    s = sorted(values)
    return {"median": round(statistics.median(s), 2), "p95": round(s[min(len(s) - 1, int(0.95 * len(s)))], 2)}


def measure_latency(read: Callable[[np.ndarray, int], Sequence[PlateRead]], frames: Sequence[np.ndarray], *,
                    runs: int = 5, fps: float | None = None, tracking: TrackingConfig | None = None) -> dict:
    """First frame to pulse on this machine: what the daemon does from a vehicle's first frame to the relay.

    Each run gives ``frames`` (one vehicle in view, e.g. one image repeated) to ``read`` (a
    ``edge.pipeline.Pipeline``: ``read(image, frame_number)``), then to a fresh tracker (``tracking``, default
    the daemon's defaults), the known-plate lookup and the relay, with a recording output instead of GPIO, each
    frame stamped with the wall clock when it is given (at most ``fps`` frames per second when set, as from a
    camera; else as fast as they are read), until the relay pulses. The plate of the first ``new`` event of an
    untimed first run is the known one (group ``residents``, distance 0; relay.min_confidence 0, so that only
    time is measured).

    Returns ``plate`` (None when no vehicle was confirmed: nothing else then), ``runs``, ``fps``,
    ``frames_to_pulse``, ``first_frame_to_pulse_ms`` and ``decision_ms`` (the lookup and the relay alone),
    each ``{median, p95}``.
    """
    tracking = tracking or TrackingConfig()

    def feed(known: KnownPlates, relay: Relay) -> tuple[Event | None, int, float]:
        tracker = Tracker(tracking, "bench")
        start = time.time()
        for i, image in enumerate(frames):
            if fps:
                time.sleep(max(0.0, start + i / fps - time.time()))
            ts = time.time()
            obs = [Observation(r.text, r.confidence, r.detection.box, r.char_confidences or None, format=r.format)
                   for r in read(image, i)]
            for ev in tracker.update(obs, ts):
                if ev.type == "new":
                    t = time.perf_counter()
                    relay.handle(ev, known.lookup_event(ev))
                    return ev, i + 1, (time.perf_counter() - t) * 1000
        return None, len(frames), 0.0

    config = RelayConfig(enabled=True, pin="bench", groups=["residents"], min_confidence=0.0)
    first, _, _ = feed(KnownPlates(), Relay(config, RecordingOutput()))
    if first is None:
        return {"plate": None, "runs": 0, "fps": fps}
    known = KnownPlates([KnownPlate(first.text, "bench", "residents")], max_distance=0)
    latency, decision, counts = [], [], []
    for _ in range(runs):
        output = RecordingOutput()
        ev, count, decision_ms = feed(known, Relay(config, output))
        if ev is None or not output.pulses:
            continue
        latency.append((output.pulses[0][0] - ev.first_seen) * 1000)
        decision.append(decision_ms)
        counts.append(count)
    if not latency:
        return {"plate": first.text, "runs": 0, "fps": fps}
    return {"plate": first.text, "runs": len(latency), "fps": fps, "frames_to_pulse": max(counts),
            "first_frame_to_pulse_ms": _ms(latency), "decision_ms": _ms(decision)}
