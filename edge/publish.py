"""MQTT side of the daemon: events from the spool to the broker, status, stats, discovery.

Delivery is at-least-once and in order. Events are already in the spool when
they get here; ``pump`` hands spooled messages to paho (QoS 1) oldest first,
at most ``max_inflight`` unacknowledged at a time, and a message leaves the
spool only in ``on_publish`` (the broker's PUBACK for its mid). paho keeps
unacknowledged messages across a reconnect and sends them again itself;
newer messages wait until those are acknowledged, so the order holds across
outages. After a restart the whole spool is sent again, oldest first.
Consumers de-duplicate by the event ``id``.
"""
from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from typing import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import MqttConfig
from edge.spool import Spool

log = logging.getLogger(__name__)

STATUS_ONLINE, STATUS_OFFLINE = "online", "offline"


class Publisher:
    """Owns the paho client; thread-safe ``pump`` / ``publish_stats`` / ``stop``."""

    def __init__(self, cfg: MqttConfig, spool: Spool, version: str = "") -> None:
        self.cfg = cfg
        self.spool = spool
        self.version = version
        self.prefix = cfg.prefix
        self.status_topic = f"{self.prefix}/status"
        self.connected = threading.Event()
        self.published = 0  # messages acknowledged by the broker
        self.connects = 0
        self._lock = threading.Lock()
        self._inflight: dict[int, int] = {}  # mid -> spool row id
        self._early: dict[int, float] = {}  # acks that arrived before publish() returned, or not ours
        self._cursor = 0  # highest spool id handed to paho
        self._blocked = False  # messages carried over a reconnect must be acked before newer ones go
        self._stopping = False
        self.client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-anpr-{self.cfg.device_id}")
        c.will_set(self.status_topic, STATUS_OFFLINE, qos=1, retain=True)
        if self.cfg.username is not None:
            pw = self.cfg.password.get_secret_value() if self.cfg.password else None
            c.username_pw_set(self.cfg.username, pw)
        if self.cfg.tls is not None:
            t = self.cfg.tls
            c.tls_set(ca_certs=str(t.ca_certs) if t.ca_certs else None,
                      certfile=str(t.certfile) if t.certfile else None,
                      keyfile=str(t.keyfile) if t.keyfile else None, cert_reqs=ssl.CERT_REQUIRED)
            c.tls_insecure_set(t.insecure)
        c.reconnect_delay_set(max(1, round(self.cfg.reconnect_min_s)), max(1, round(self.cfg.reconnect_max_s)))
        # Room for our window plus status and discovery, so that paho never queues events itself.
        c.max_inflight_messages_set(self.cfg.max_inflight + 10)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        return c

    def start(self) -> None:
        """Connect in the background; paho reconnects by itself with back-off."""
        log.info("MQTT broker %s:%d, topics %s/#", self.cfg.host, self.cfg.port, self.prefix)
        self.client.connect_async(self.cfg.host, self.cfg.port, self.cfg.keepalive_s)
        self.client.loop_start()

    # paho callbacks (its network thread)
    def _on_connect(self, client: mqtt.Client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            log.error("MQTT broker %s:%d refused the connection: %s", self.cfg.host, self.cfg.port, reason)
            return
        self.connects += 1
        with self._lock:
            self._blocked = bool(self._inflight)
        log.info("MQTT connected to %s:%d (%d events spooled, %d awaiting ack)", self.cfg.host, self.cfg.port,
                 len(self.spool), len(self._inflight))
        client.publish(self.status_topic, STATUS_ONLINE, qos=1, retain=True)
        if self.cfg.discovery.enabled:
            self._publish_discovery(client)
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata, flags, reason, properties) -> None:
        if self.connected.is_set() and not self._stopping:
            log.warning("MQTT disconnected (%s); %d events spooled, reconnecting", reason, len(self.spool))
        self.connected.clear()

    def _on_publish(self, client: mqtt.Client, userdata, mid: int, reason, properties) -> None:
        with self._lock:
            row = self._inflight.pop(mid, None)
            if row is None:
                self._early[mid] = time.monotonic()
                return
            if not self._inflight:
                self._blocked = False
        self.spool.delete(row)
        self.published += 1

    def pump(self) -> int:
        """Hand spooled messages to paho, oldest first, within the in-flight window; return how many."""
        if not self.connected.is_set():
            return 0
        with self._lock:
            if self._blocked:
                return 0
            room = self.cfg.max_inflight - len(self._inflight)
            cursor = self._cursor
        if room <= 0:
            return 0
        sent = 0
        for msg in self.spool.after(cursor, room):
            info = self.client.publish(msg.topic, msg.payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
                log.warning("MQTT publish of spool id %d failed (%s); retrying later", msg.id,
                            mqtt.error_string(info.rc))
                break
            # paho keeps a message that found no connection and sends it after the reconnect.
            with self._lock:
                self._cursor = msg.id
                if self._early.pop(info.mid, None) is not None:
                    acked = True
                else:
                    self._inflight[info.mid] = msg.id
                    acked = False
            if acked:
                self.spool.delete(msg.id)
                self.published += 1
            sent += 1
        self._forget_stale_acks()
        return sent

    def _forget_stale_acks(self) -> None:
        # Acks of status/discovery messages land in _early too; they are never claimed.
        horizon = time.monotonic() - 60
        with self._lock:
            for mid in [m for m, t in self._early.items() if t < horizon]:
                del self._early[mid]

    @property
    def awaiting_ack(self) -> int:
        return len(self._inflight)

    def publish_stats(self, stats: dict) -> None:
        """Stats are a snapshot, not an event: QoS 0, never spooled."""
        if self.connected.is_set():
            self.client.publish(f"{self.prefix}/stats", json.dumps(stats), qos=0)

    def _publish_discovery(self, client: mqtt.Client) -> None:
        dev = self.cfg.device_id
        device = {"identifiers": [f"edge_anpr_{dev}"], "name": f"ANPR {dev}", "manufacturer": "edge-anpr",
                  "model": "edge ANPR camera", "sw_version": self.version}
        common = {"availability_topic": self.status_topic, "payload_available": STATUS_ONLINE,
                  "payload_not_available": STATUS_OFFLINE, "device": device}
        sensors = {
            "last_plate": {"name": "Last plate", "state_topic": f"{self.prefix}/plates",
                           "value_template": "{{ value_json.text }}",
                           "json_attributes_topic": f"{self.prefix}/plates", "icon": "mdi:car"},
            "fps": {"name": "Inference FPS", "state_topic": f"{self.prefix}/stats",
                    "value_template": "{{ value_json.fps }}", "unit_of_measurement": "fps",
                    "entity_category": "diagnostic", "state_class": "measurement"},
        }
        for key, body in sensors.items():
            topic = f"{self.cfg.discovery.prefix}/sensor/edge_anpr_{dev}/{key}/config"
            payload = common | body | {"unique_id": f"edge_anpr_{dev}_{key}"}
            client.publish(topic, json.dumps(payload), qos=1, retain=True)

    def drain(self, timeout_s: float, wait: Callable[[float], object]) -> bool:
        """Keep pumping until the spool is empty or ``timeout_s`` passes; True when empty."""
        deadline = time.monotonic() + timeout_s
        while len(self.spool) and time.monotonic() < deadline:
            self.pump()
            wait(0.05)
        return not len(self.spool)

    def stop(self) -> None:
        """Publish ``offline`` (retained) when connected, then disconnect."""
        self._stopping = True
        if self.connected.is_set():
            info = self.client.publish(self.status_topic, STATUS_OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=3)
            except RuntimeError:
                pass  # the connection went away meanwhile: the broker sends the will instead
        self.client.disconnect()
        self.client.loop_stop()
