"""What the daemon says on MQTT: every topic name, the event messages with their crops, status and discovery.

The README's "MQTT topics" and "Events" sections document this module; a
consumer depends on every name and field here, so they only ever grow.

- :class:`Topics`: every topic, from ``mqtt.topic_prefix`` (default
  ``anpr/<device_id>``) and the Home Assistant discovery prefix;
- :func:`event_messages`: the messages of one tracker event, as they are
  spooled: the JSON event on ``<prefix>/plates``, with
  ``tracking.crop: topic`` the crop's JPEG bytes on ``<prefix>/crops/<id>``,
  and for a ``new`` event the event again on ``<prefix>/arrivals`` and, when
  its text matched a known plate (``known``), on ``<prefix>/known/<group>``;
- :func:`retained_messages`: what a ``new`` event replaces on the retained
  topics ``<prefix>/last_plate`` and ``<prefix>/last_crop`` (published
  directly, not spooled: only the latest counts);
- :func:`crop_encoder`: the crop policy (``tracking.crop``,
  ``crop_quality``) as the tracker's crop function;
- :func:`discovery_messages`: the retained Home Assistant discovery configs.

No Home Assistant trigger listens on a retained topic: a retained message
is delivered again on every resubscription (a reconnect, a Home Assistant
restart), and would fire again. Triggers and the event entity listen on
``arrivals``, ``known/<group>`` and ``plates``; the last-plate sensor and the crop image read
the retained topics, so they survive a restart.
"""
from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from edge.config import AppConfig, MqttConfig, TrackingConfig
from edge.known import Match
from edge.tracker import Event, Observation

STATUS_ONLINE, STATUS_OFFLINE = "online", "offline"

#: Margins around the plate box in a crop, as fractions of the box's width and height.
CROP_MARGIN_X, CROP_MARGIN_Y = 0.15, 0.3


@dataclass(frozen=True)
class Topics:
    """Every topic the daemon publishes on."""

    prefix: str
    device_id: str
    discovery_prefix: str = "homeassistant"

    @classmethod
    def from_config(cls, cfg: MqttConfig) -> Topics:
        """The topics of an ``mqtt`` configuration section."""
        return cls(cfg.prefix, cfg.device_id, cfg.discovery.prefix)

    @property
    def status(self) -> str:
        """``online`` / ``offline``, retained; ``offline`` is also the last will."""
        return f"{self.prefix}/status"

    @property
    def plates(self) -> str:
        """One JSON event per message."""
        return f"{self.prefix}/plates"

    @property
    def stats(self) -> str:
        """The periodic stats message (QoS 0, never spooled)."""
        return f"{self.prefix}/stats"

    def crop(self, event_id: str) -> str:
        """Raw JPEG of an event's crop (``tracking.crop: topic``)."""
        return f"{self.prefix}/crops/{event_id}"

    @property
    def arrivals(self) -> str:
        """Each ``new`` event again, without ``crop``; never retained: one message per arrival, for triggers."""
        return f"{self.prefix}/arrivals"

    @property
    def last_plate(self) -> str:
        """The latest ``new`` event, without ``crop``; retained."""
        return f"{self.prefix}/last_plate"

    @property
    def last_crop(self) -> str:
        """Raw JPEG of the latest ``new`` event's crop (``tracking.crop`` other than ``none``); retained."""
        return f"{self.prefix}/last_crop"

    def known(self, group: str) -> str:
        """Each ``new`` event of a known plate of ``group`` again, without ``crop`` (``edge.known``)."""
        return f"{self.prefix}/known/{group}"

    @property
    def relay(self) -> str:
        """The relay's decision on each ``new`` event, with its latency (``edge.relay``; only when enabled)."""
        return f"{self.prefix}/relay"

    @property
    def node_id(self) -> str:
        """This device's node id in Home Assistant discovery topics and unique ids."""
        return f"edge_anpr_{self.device_id}"

    def discovery(self, key: str, component: str = "sensor") -> str:
        """Home Assistant discovery config of ``key``, a ``component`` (sensor, binary_sensor, event, image,
        device_automation)."""
        return f"{self.discovery_prefix}/{component}/{self.node_id}/{key}/config"


def jpeg_crop(obs: Observation, quality: int) -> bytes | None:
    """JPEG of the plate box with a margin, from the frame it was read in; None without a frame."""
    image = obs.image
    if not isinstance(image, np.ndarray):
        return None
    x1, y1, x2, y2 = obs.box
    mx, my = (x2 - x1) * CROP_MARGIN_X, (y2 - y1) * CROP_MARGIN_Y
    h, w = image.shape[:2]
    xa, ya = max(0, int(x1 - mx)), max(0, int(y1 - my))
    xb, yb = min(w, int(x2 + mx) + 1), min(h, int(y2 + my) + 1)
    if xb <= xa or yb <= ya:
        return None
    ok, buf = cv2.imencode(".jpg", image[ya:yb, xa:xb], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return buf.tobytes() if ok else None


def crop_encoder(cfg: TrackingConfig) -> Callable[[Observation], bytes | None] | None:
    """The tracker's crop function for ``tracking.crop``, or None when events carry no crop."""
    if cfg.crop == "none":
        return None
    quality = cfg.crop_quality
    return lambda obs: jpeg_crop(obs, quality)


def _event_payload(ev: Event, crop: str, topics: Topics, known: Match | None = None) -> dict:
    """The JSON event as ``<prefix>/plates`` carries it, under the crop policy ``crop``; ``known`` only when its
    voted text matched a known plate."""
    payload = ev.as_json()
    if known is not None:
        payload["known"] = known.as_json()
    if ev.crop is not None and crop == "base64":
        payload["crop"] = base64.b64encode(ev.crop).decode("ascii")
    elif ev.crop is not None and crop == "topic":
        payload["crop_topic"] = topics.crop(ev.event_id)
    return payload


def _without_crop(payload: dict) -> bytes:
    # Home Assistant keeps a sensor's attributes in its recorder (16 KiB a state at most): no crop there.
    return json.dumps({k: v for k, v in payload.items() if k != "crop"}).encode()


def event_messages(ev: Event, crop: str, topics: Topics, known: Match | None = None) -> list[tuple[str, bytes]]:
    """(topic, payload) of the messages that carry ``ev``, in the order they are sent.

    ``crop`` is ``tracking.crop``: ``base64`` puts the JPEG in the event's
    ``crop`` field; ``topic`` names ``<prefix>/crops/<id>`` in ``crop_topic``
    and sends the bytes there right after the event. A ``new`` event is sent
    once more, without ``crop``, on ``<prefix>/arrivals`` and, when ``known``
    (the known plate its text matched), last on ``<prefix>/known/<group>``.
    """
    payload = _event_payload(ev, crop, topics, known)
    out = [(topics.plates, json.dumps(payload).encode())]
    if ev.crop is not None and crop == "topic":
        out.append((payload["crop_topic"], ev.crop))
    if ev.type == "new":
        out.append((topics.arrivals, _without_crop(payload)))
    if ev.type == "new" and known is not None:
        out.append((topics.known(known.plate.group), _without_crop(payload)))
    return out


def retained_messages(ev: Event, crop: str, topics: Topics, known: Match | None = None) -> list[tuple[str, bytes]]:
    """(topic, payload) of the retained messages a ``new`` event replaces: the event without ``crop`` on
    ``<prefix>/last_plate`` and, when it has a crop, its JPEG on ``<prefix>/last_crop``; none for ``end``."""
    if ev.type != "new":
        return []
    out = [(topics.last_plate, _without_crop(_event_payload(ev, crop, topics, known)))]
    if ev.crop is not None and crop != "none":
        out.append((topics.last_crop, ev.crop))
    return out


#: Entities fed by the stats message expire (unavailable in Home Assistant) after this many stats intervals
#: without one: a daemon that hangs shows, and one lost QoS 0 message does not.
STATS_EXPIRY_INTERVALS = 3
#: Home Assistant templates of the discovery configs (value_json: the message's JSON).
EVENT_TEMPLATE = ("{{ dict(value_json.items() | rejectattr('0', 'eq', 'crop'), event_type=value_json.type) "
                  "| to_json }}")
CAMERA_OK_TEMPLATE = "{{ 'ON' if value_json.fps_captured > 0 else 'OFF' }}"
#: Device trigger types: every arrival (subtype: the camera id), and arrivals of a known plate (subtype: its group).
TRIGGER_ARRIVED, TRIGGER_KNOWN = "vehicle_arrived", "known_vehicle_arrived"


def expire_after_s(stats_interval_s: float) -> int:
    """``expire_after`` of the entities fed by the stats message: STATS_EXPIRY_INTERVALS intervals, whole seconds."""
    return max(1, math.ceil(STATS_EXPIRY_INTERVALS * stats_interval_s))


def group_key(group: str) -> str:
    """A known-plate group as a discovery topic's object id (letters, digits, ``_`` and ``-``)."""
    return "known_" + re.sub(r"[^A-Za-z0-9_-]", "_", group)


def discovery_messages(topics: Topics, version: str, *, camera: str = "cam0", stats_interval_s: float = 30.0,
                       crop_image: bool = False, groups: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(topic, JSON payload) of the retained Home Assistant discovery configs of one device.

    Entities: the last plate (a sensor on the retained ``last_plate``), plate
    events (an event entity on ``plates``, types ``new`` and ``end``), with
    ``crop_image`` the last plate's crop (an image entity on the retained
    ``last_crop``), and diagnostics from the stats message, which expire after
    :func:`expire_after_s`: inference FPS, camera OK (frames captured since
    the last stats message), source errors and reconnects, dropped frames,
    spool depth. Device triggers: ``vehicle_arrived`` (subtype ``camera``) on
    every message of ``arrivals``, and ``known_vehicle_arrived`` per known-plate
    group of ``groups`` (subtype: the group) on every message of that group's
    ``known/<group>``. Entity names start with the camera id.
    """
    node = topics.node_id
    device = {"identifiers": [node], "name": f"ANPR {topics.device_id}", "manufacturer": "edge-anpr",
              "model": "edge ANPR camera", "sw_version": version}
    origin = {"name": "edge-anpr", "sw_version": version}
    common = {"availability_topic": topics.status, "payload_available": STATUS_ONLINE,
              "payload_not_available": STATUS_OFFLINE, "device": device, "origin": origin}
    stats = {"state_topic": topics.stats, "entity_category": "diagnostic",
             "expire_after": expire_after_s(stats_interval_s)}
    entities: list[tuple[str, str, dict]] = [
        ("sensor", "last_plate", {"name": f"{camera} last plate", "state_topic": topics.last_plate,
                                  "value_template": "{{ value_json.text }}",
                                  "json_attributes_topic": topics.last_plate, "icon": "mdi:car"}),
        ("event", "plate", {"name": f"{camera} plate event", "state_topic": topics.plates,
                            "event_types": ["new", "end"], "value_template": EVENT_TEMPLATE, "icon": "mdi:car"}),
        ("sensor", "fps", stats | {"name": f"{camera} inference FPS", "value_template": "{{ value_json.fps }}",
                                   "unit_of_measurement": "fps", "state_class": "measurement"}),
        ("binary_sensor", "camera_ok", stats | {"name": f"{camera} camera OK", "value_template": CAMERA_OK_TEMPLATE,
                                                "device_class": "connectivity"}),
        ("sensor", "source_errors", stats | {"name": f"{camera} source errors", "icon": "mdi:video-off",
                                             "value_template": "{{ value_json.source_errors }}",
                                             "state_class": "total_increasing"}),
        ("sensor", "source_reconnects", stats | {"name": f"{camera} source reconnects", "icon": "mdi:video-check",
                                                 "value_template": "{{ value_json.source_reconnects }}",
                                                 "state_class": "total_increasing"}),
        ("sensor", "frames_dropped", stats | {"name": f"{camera} dropped frames", "icon": "mdi:image-off",
                                              "value_template": "{{ value_json.frames_dropped }}",
                                              "state_class": "total_increasing"}),
        ("sensor", "spool_depth", stats | {"name": f"{camera} spool depth", "icon": "mdi:tray-full",
                                           "value_template": "{{ value_json.spool_depth }}",
                                           "state_class": "measurement"}),
    ]
    if crop_image:
        entities.append(("image", "last_crop", {"name": f"{camera} last plate crop", "image_topic": topics.last_crop,
                                                "content_type": "image/jpeg"}))
    out = [(topics.discovery(key, component), json.dumps(common | body | {"unique_id": f"{node}_{key}"}))
           for component, key, body in entities]
    trigger = {"automation_type": "trigger", "topic": topics.arrivals, "device": device, "origin": origin}
    out.append((topics.discovery(TRIGGER_ARRIVED, "device_automation"),
                json.dumps(trigger | {"type": TRIGGER_ARRIVED, "subtype": camera})))
    seen = set()
    for group in groups:
        key = group_key(group)
        if key in seen:  # two group names that differ only in characters a topic cannot hold
            continue
        seen.add(key)
        out.append((topics.discovery(key, "device_automation"),
                    json.dumps(trigger | {"topic": topics.known(group), "type": TRIGGER_KNOWN, "subtype": group})))
    return out


def daemon_discovery(cfg: AppConfig, version: str, groups: Iterable[str] = ()) -> list[tuple[str, str]]:
    """The discovery configs of a daemon that runs ``cfg``, with the known-plate ``groups``."""
    return discovery_messages(Topics.from_config(cfg.mqtt), version, camera=cfg.camera.id,
                              stats_interval_s=cfg.mqtt.stats_interval_s, crop_image=cfg.tracking.crop != "none",
                              groups=groups)
