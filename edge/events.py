"""What the daemon says on MQTT: every topic name, the event messages with their crops, status and discovery.

The README's "MQTT topics" and "Events" sections document this module; a
consumer depends on every name and field here, so they only ever grow.

- :class:`Topics`: every topic, from ``mqtt.topic_prefix`` (default
  ``anpr/<device_id>``) and the Home Assistant discovery prefix;
- :func:`event_messages`: the messages of one tracker event, as they are
  spooled: the JSON event on ``<prefix>/plates`` and, with
  ``tracking.crop: topic``, the crop's JPEG bytes on ``<prefix>/crops/<id>``;
- :func:`crop_encoder`: the crop policy (``tracking.crop``,
  ``crop_quality``) as the tracker's crop function;
- :func:`discovery_messages`: the retained Home Assistant discovery configs.
"""
from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from edge.config import MqttConfig, TrackingConfig
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

    def discovery(self, key: str) -> str:
        """Home Assistant discovery config of the sensor ``key``."""
        return f"{self.discovery_prefix}/sensor/edge_anpr_{self.device_id}/{key}/config"


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


def event_messages(ev: Event, crop: str, topics: Topics) -> list[tuple[str, bytes]]:
    """(topic, payload) of the messages that carry ``ev``, in the order they are sent.

    ``crop`` is ``tracking.crop``: ``base64`` puts the JPEG in the event's
    ``crop`` field; ``topic`` names ``<prefix>/crops/<id>`` in ``crop_topic``
    and sends the bytes there right after the event.
    """
    payload = ev.as_json()
    if ev.crop is not None and crop == "base64":
        payload["crop"] = base64.b64encode(ev.crop).decode("ascii")
    elif ev.crop is not None and crop == "topic":
        payload["crop_topic"] = topics.crop(ev.event_id)
    out = [(topics.plates, json.dumps(payload).encode())]
    if ev.crop is not None and crop == "topic":
        out.append((payload["crop_topic"], ev.crop))
    return out


def discovery_messages(topics: Topics, version: str) -> list[tuple[str, str]]:
    """(topic, JSON payload) of the retained Home Assistant discovery configs: last plate and inference FPS."""
    dev = topics.device_id
    device = {"identifiers": [f"edge_anpr_{dev}"], "name": f"ANPR {dev}", "manufacturer": "edge-anpr",
              "model": "edge ANPR camera", "sw_version": version}
    common = {"availability_topic": topics.status, "payload_available": STATUS_ONLINE,
              "payload_not_available": STATUS_OFFLINE, "device": device}
    sensors = {
        "last_plate": {"name": "Last plate", "state_topic": topics.plates, "value_template": "{{ value_json.text }}",
                       "json_attributes_topic": topics.plates, "icon": "mdi:car"},
        "fps": {"name": "Inference FPS", "state_topic": topics.stats, "value_template": "{{ value_json.fps }}",
                "unit_of_measurement": "fps", "entity_category": "diagnostic", "state_class": "measurement"},
    }
    return [(topics.discovery(key), json.dumps(common | body | {"unique_id": f"edge_anpr_{dev}_{key}"}))
            for key, body in sensors.items()]
