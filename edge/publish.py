"""MQTT side of the daemon: events from the spool to the broker, status, stats, discovery.

Delivery is at-least-once and in order. Events are already in the spool when
they get here; ``pump`` hands spooled messages to paho (QoS 1) oldest first,
at most ``max_inflight`` unacknowledged at a time, and a message leaves the
spool only once the broker's PUBACK for its mid has arrived. paho keeps
unacknowledged messages across a reconnect and sends them again itself;
newer messages wait until those are acknowledged, so the order holds across
outages. After a restart the whole spool is sent again, oldest first.
Consumers de-duplicate by the event ``id``.

The retained last plate and crop (``publish_retained``) bypass the spool:
only the latest counts. The publisher keeps the latest of each topic and
sends it, with status and discovery, on every connect.

paho runs the callbacks here in its network thread. None of them touches
the spool (``on_publish`` only notes the acknowledged id; ``pump``, in the
main thread, deletes it), and each is guarded: an exception is logged and
never reaches paho, whose thread it would end, and with it every reconnect.

Each failed connection attempt (refused, host name unknown, TLS certificate
rejected, TLS spoken to a plain port or the reverse, credentials refused) is
counted (stats ``broker_failures``, ``broker_last_error``) and logged with
its reason: at once, then once a minute while the same failure goes on.

:func:`make_client` builds the paho client with the configured credentials
and TLS, for the daemon and for ``python -m edge health`` alike.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import MqttConfig
from edge.events import STATUS_OFFLINE, STATUS_ONLINE, Topics, discovery_messages
from edge.spool import Spool
from edge.stats import FAILURE_LOG_INTERVAL_S, Failures, attempts

log = logging.getLogger(__name__)

_F = TypeVar("_F", bound=Callable[..., Any])


class BrokerClient(mqtt.Client):
    """paho's client that also tells ``on_connect_error`` why a connection attempt failed.

    paho's network thread retries a failed attempt by itself and reports
    only that it failed (``on_connect_fail``, without the exception).
    """

    on_connect_error: Callable[[OSError], None] | None = None

    def reconnect(self) -> mqtt.MQTTErrorCode:
        try:
            return super().reconnect()
        except OSError as exc:  # refused, unreachable, name unknown, TLS handshake or certificate (SSLError)
            handler = self.on_connect_error
            if handler is not None:
                try:
                    handler(exc)
                except Exception:  # the handler's bug must not replace paho's own error handling
                    log.exception("MQTT: reporting a connection error failed")
            raise


def make_client(cfg: MqttConfig, client_id: str) -> BrokerClient:
    """A paho client (MQTT 3.1.1, callback API 2) with ``cfg``'s credentials and TLS; not connected."""
    client = BrokerClient(CallbackAPIVersion.VERSION2, client_id=client_id)
    if cfg.username is not None:
        client.username_pw_set(cfg.username, cfg.password.get_secret_value() if cfg.password else None)
    if cfg.tls is not None:
        t = cfg.tls
        client.tls_set(ca_certs=str(t.ca_certs) if t.ca_certs else None,
                       certfile=str(t.certfile) if t.certfile else None,
                       keyfile=str(t.keyfile) if t.keyfile else None, cert_reqs=ssl.CERT_REQUIRED)
        client.tls_insecure_set(t.insecure)
    return client


def describe_connect_error(exc: BaseException, tls: bool) -> str:
    """Why a connection attempt failed, in words, with a hint where the cause is a usual one."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate rejected: {exc.verify_message or exc} (mqtt.tls.ca_certs)"
    if isinstance(exc, socket.gaierror):
        return f"host name not resolved: {exc.strerror or exc} (mqtt.host)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the broker running, and on mqtt.port?)"
    if isinstance(exc, TimeoutError):
        return f"no answer: {exc} (firewall, or the wrong host?)"
    reason = str(exc) or type(exc).__name__
    if tls and (isinstance(exc, ConnectionResetError) or "WRONG_VERSION_NUMBER" in reason):
        return f"TLS handshake failed: {reason} (a plain MQTT port spoken to with TLS?)"
    return reason


def _guarded(method: _F) -> _F:
    """A paho callback that logs its exception instead of raising it into paho's network thread."""
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception:
            log.exception("MQTT: %s failed; the connection goes on", method.__name__.lstrip("_"))
    return wrapper  # type: ignore[return-value]


class Publisher:
    """Owns the paho client; thread-safe ``pump`` / ``publish_stats`` / ``stop``."""

    def __init__(self, cfg: MqttConfig, spool: Spool, version: str = "",
                 discovery: Sequence[tuple[str, str]] | None = None) -> None:
        self.cfg = cfg
        self.spool = spool
        self.version = version
        self.topics = Topics.from_config(cfg)
        # Home Assistant discovery configs (edge.events.discovery_messages), sent retained on every connect.
        self.discovery = list(discovery if discovery is not None else discovery_messages(self.topics, version))
        # Latest retained message per topic (last plate, last crop), sent again on every connect: a broker
        # restarted without persistence would otherwise have none until the next vehicle.
        self._retained: dict[str, bytes] = {}
        self._retained_lock = threading.Lock()
        self._retained_live = False  # on_connect sent what _retained holds: publish_retained sends at once
        self.connected = threading.Event()
        self.published = 0  # messages acknowledged by the broker
        self.connects = 0
        self.failures = Failures()  # failed connection attempts
        self._lock = threading.Lock()
        self._inflight: dict[int, int] = {}  # mid -> spool row id
        self._early: dict[int, float] = {}  # acks that arrived before publish() returned, or not ours
        self._acked: list[int] = []  # spool ids acknowledged, for the main thread to delete
        self._cursor = 0  # highest spool id handed to paho
        self._blocked = False  # messages carried over a reconnect must be acked before newer ones go
        self._answered = False  # this connection got a CONNACK (accepted or refused)
        self._stopping = False
        self.client = self._make_client()

    def _make_client(self) -> BrokerClient:
        c = make_client(self.cfg, f"edge-anpr-{self.cfg.device_id}")
        c.will_set(self.topics.status, STATUS_OFFLINE, qos=1, retain=True)
        c.reconnect_delay_set(max(1, round(self.cfg.reconnect_min_s)), max(1, round(self.cfg.reconnect_max_s)))
        # Room for our window plus status, discovery and the retained messages, so that paho never queues events
        # itself.
        c.max_inflight_messages_set(self.cfg.max_inflight + len(self.discovery) + 10)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_connect_error = self._on_connect_error
        return c

    @property
    def where(self) -> str:
        """The broker, as log lines name it."""
        return f"{self.cfg.host}:{self.cfg.port}{' (TLS)' if self.cfg.tls else ''}"

    def start(self) -> None:
        """Connect in the background; paho reconnects by itself with back-off."""
        log.info("MQTT broker %s, topics %s/#", self.where, self.topics.prefix)
        self.client.connect_async(self.cfg.host, self.cfg.port, self.cfg.keepalive_s)
        self.client.loop_start()

    # paho callbacks (its network thread)
    @_guarded
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._answered = True
        if reason.is_failure:
            user = f" (user {self.cfg.username})" if self.cfg.username else ""
            self._broker_failed(f"the broker refused the connection: {reason}{user}")
            return
        self.connects += 1
        failed = self.failures.recover()
        with self._lock:
            self._blocked = bool(self._inflight)
        log.info("MQTT connected to %s%s (%d events spooled, %d awaiting ack)", self.where,
                 f" after {attempts(failed)}" if failed else "", len(self.spool), len(self._inflight))
        client.publish(self.topics.status, STATUS_ONLINE, qos=1, retain=True)
        if self.cfg.discovery.enabled:
            for topic, payload in self.discovery:
                client.publish(topic, payload, qos=1, retain=True)
        with self._retained_lock:
            for topic, data in self._retained.items():
                client.publish(topic, data, qos=1, retain=True)
            self._retained_live = True
        self.connected.set()

    @_guarded
    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        answered, self._answered = self._answered, False
        if self.connected.is_set():
            if not self._stopping:
                log.warning("MQTT disconnected (%s); %d events spooled, reconnecting", reason, len(self.spool))
        elif not answered and not self._stopping:
            hint = "" if self.cfg.tls else " (a TLS port spoken to without TLS?)"
            self._broker_failed(f"the broker closed the connection before accepting it: {reason}{hint}")
        with self._retained_lock:
            self._retained_live = False
        self.connected.clear()

    @_guarded
    def _on_connect_error(self, exc: OSError) -> None:
        if not self._stopping:
            self._broker_failed(describe_connect_error(exc, self.cfg.tls is not None))

    @_guarded
    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._lock:
            row = self._inflight.pop(mid, None)
            if row is None:
                self._early[mid] = time.monotonic()
                return
            if not self._inflight:
                self._blocked = False
            self._acked.append(row)
            self.published += 1

    def _broker_failed(self, reason: str) -> None:
        if self.failures.fail(reason):
            log.warning("MQTT broker %s unreachable: %s; %d events spooled, retrying every %g-%g s (%s so far; "
                        "the same failure is logged again every %.0f s)", self.where, reason, len(self.spool),
                        max(1, round(self.cfg.reconnect_min_s)), max(1, round(self.cfg.reconnect_max_s)),
                        attempts(self.failures.streak), FAILURE_LOG_INTERVAL_S)

    # main thread
    def _settle(self) -> None:
        """Delete the acknowledged messages from the spool."""
        with self._lock:
            acked, self._acked = self._acked, []
        for row in acked:
            self.spool.delete(row)

    def pump(self) -> int:
        """Settle acks, let the spool retry what it holds, hand spooled messages to paho; return how many."""
        self._settle()
        self.spool.flush()
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
                    self.published += 1
                else:
                    self._inflight[info.mid] = msg.id
                    acked = False
            if acked:
                self.spool.delete(msg.id)
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
            self.client.publish(self.topics.stats, json.dumps(stats), qos=0)

    def publish_retained(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Replace the retained messages of these topics (``edge.events.retained_messages``): QoS 1, not spooled,
        since only the latest counts. Sent now when connected, and again on every connect. Thread-safe."""
        with self._retained_lock:
            for topic, data in messages:
                self._retained[topic] = data
                if self._retained_live:
                    self.client.publish(topic, data, qos=1, retain=True)

    def set_discovery(self, messages: Sequence[tuple[str, str]]) -> None:
        """Replace the discovery configs (the known-plate groups changed on a reload): the new ones are sent, and
        a config no longer among them is removed from Home Assistant (an empty retained message)."""
        gone = {topic for topic, _ in self.discovery} - {topic for topic, _ in messages}
        self.discovery = list(messages)
        if self.cfg.discovery.enabled and self.connected.is_set():
            for topic in sorted(gone):
                self.client.publish(topic, b"", qos=1, retain=True)
            for topic, payload in self.discovery:
                self.client.publish(topic, payload, qos=1, retain=True)

    def drain(self, timeout_s: float, wait: Callable[[float], object]) -> bool:
        """Keep pumping until the spool is empty or ``timeout_s`` passes; True when empty."""
        deadline = time.monotonic() + timeout_s
        while len(self.spool) and time.monotonic() < deadline:
            self.pump()
            wait(0.05)
        self._settle()
        return not len(self.spool)

    def stop(self) -> None:
        """Publish ``offline`` (retained) when connected, then disconnect."""
        self._stopping = True
        if self.connected.is_set():
            info = self.client.publish(self.topics.status, STATUS_OFFLINE, qos=1, retain=True)
            # RuntimeError: the connection went away meanwhile, and the broker sends the will instead.
            with contextlib.suppress(RuntimeError):
                info.wait_for_publish(timeout=3)
        self.client.disconnect()
        self.client.loop_stop()
        self._settle()
