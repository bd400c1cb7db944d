"""Broker failures: every failed connection attempt is counted and logged with its reason (rate-limited), and
nothing that goes wrong after an acknowledgement can stop paho's network thread. Against a real mosquitto."""
from __future__ import annotations

import re
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from edge.config import MqttConfig
from edge.publish import Publisher
from edge.spool import Spool
from harness import (
    PREFIX,
    Broker,
    DaemonProc,
    Subscriber,
    base_config,
    deliver_to_a_new_broker,
    free_port,
    make_certificates,
    wait_for,
)


def mqtt_config(port: int, **kw: object) -> MqttConfig:
    return MqttConfig(host="127.0.0.1", port=port, device_id="pubtest", topic_prefix=PREFIX, reconnect_min_s=1,
                      reconnect_max_s=1, **kw)


def pump_until(publisher: Publisher, pred, timeout: float, what: str) -> None:
    """The daemon's main loop, reduced to the publisher: pump until ``pred`` holds."""
    def turn() -> bool:
        publisher.pump()
        return bool(pred())

    wait_for(turn, timeout, what)


@pytest.fixture
def publisher_on(tmp_path: Path):
    made: list[Publisher] = []

    def make(cfg: MqttConfig) -> Publisher:
        p = Publisher(cfg, Spool(tmp_path / f"spool{len(made)}.sqlite"), "test")
        made.append(p)
        p.start()
        return p

    yield make
    for p in made:
        p.stop()
        p.spool.close()


def test_a_failing_delete_after_an_ack_does_not_stop_delivery(broker: Broker, subscriber: Subscriber,
                                                             publisher_on, tmp_path: Path) -> None:
    p = publisher_on(mqtt_config(broker.port))
    wait_for(p.connected.is_set, 10, "the publisher to connect")
    p.spool.put(f"{PREFIX}/plates", b"first")
    other = sqlite3.connect(p.spool.path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another program holds the spool's write lock when the PUBACK comes
    try:
        pump_until(p, lambda: p.published == 1, 10, "the first PUBACK")
        pump_until(p, lambda: p.spool.failures.total >= 1, 10, "the delete to fail")
        assert len(p.spool) == 1  # acknowledged, not yet deleted: it stays counted
    finally:
        other.execute("ROLLBACK")
        other.close()
    p.spool.put(f"{PREFIX}/plates", b"second")
    pump_until(p, lambda: p.published == 2 and len(p.spool) == 0, 15, "the second PUBACK and both deletes")
    wait_for(lambda: len(subscriber.on("plates")) == 2, 5, "both messages at the subscriber")
    assert [m.payload for m in subscriber.on("plates")] == [b"first", b"second"]
    assert p.client._thread is not None and p.client._thread.is_alive()


class _BrokenOnce(dict):
    """The in-flight map, whose first ``pop`` of an event's mid (in ``on_publish``) raises: a bug in the
    acknowledgement path. Acks of the status and discovery messages are not in the map and pass."""

    broke = False

    def pop(self, mid: int, *default: object) -> object:
        if not self.broke and mid in self:
            self.broke = True
            raise RuntimeError("injected failure in on_publish")
        return super().pop(mid, *default)


def test_an_exception_in_a_callback_is_logged_not_raised_into_paho(broker: Broker, subscriber: Subscriber,
                                                                   publisher_on,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    p = publisher_on(mqtt_config(broker.port))
    wait_for(p.connected.is_set, 10, "the publisher to connect")
    broken = p._inflight = _BrokenOnce()
    p.spool.put(f"{PREFIX}/plates", b"first")
    pump_until(p, lambda: broken.broke, 10, "the failing acknowledgement")
    p.spool.put(f"{PREFIX}/plates", b"second")
    pump_until(p, lambda: p.published >= 1 and len(p.spool) == 1, 10, "the second message acknowledged")
    assert "MQTT: on_publish failed; the connection goes on" in caplog.text
    assert "injected failure in on_publish" in caplog.text  # with its traceback
    # The first one's acknowledgement was lost to the failure: it stays spooled, sent again after a restart.
    assert [m.payload for m in p.spool.after(0, 10)] == [b"first"]


@pytest.mark.skipif(not shutil.which("openssl"), reason="needs the openssl CLI to make test certificates")
@pytest.mark.parametrize("case", ["refused", "dns", "tls-untrusted", "plain-to-tls"])
def test_each_failed_attempt_is_counted_with_its_reason(case: str, tmp_path: Path, publisher_on,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    tls_broker = None
    if case == "refused":
        cfg, expect = mqtt_config(free_port()), "connection refused"
    elif case == "dns":
        cfg, expect = mqtt_config(1883).model_copy(update={"host": "no-such-host.invalid"}), "host name not resolved"
    else:
        certs = make_certificates(tmp_path / "certs")
        tls_broker = Broker(tmp_path / "broker", tls=certs).start()
        if case == "tls-untrusted":  # the broker's certificate is signed by a CA the client does not trust
            other = make_certificates(tmp_path / "other")
            cfg = mqtt_config(tls_broker.port, tls={"ca_certs": str(other["ca"])})
            expect = "TLS certificate rejected"
        else:
            cfg, expect = mqtt_config(tls_broker.port), "a TLS port spoken to without TLS?"
    try:
        p = publisher_on(cfg)
        wait_for(lambda: p.failures.total >= 2, 15, "two failed attempts")
        assert not p.connected.is_set() and expect in p.failures.last_reason
        lines = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(lines) == 1 and expect in lines[0]  # the same failure again is not logged again at once
    finally:
        if tls_broker is not None:
            tls_broker.stop()


def test_daemon_with_its_broker_port_closed_logs_why_then_delivers(clip: Path, truth: dict, tmp_path: Path) -> None:
    port = free_port()
    cfg = base_config(clip, port, tmp_path, mqtt={"drain_timeout_s": 60})
    started = time.monotonic()
    d = DaemonProc(cfg, tmp_path)  # nothing listens on the port
    d.wait_log(r"MQTT broker \S+ unreachable: connection refused", 30)
    d.wait_log(r"event end MXE7315", 60)  # the whole clip is spooled meanwhile
    time.sleep(max(0.0, 10 - (time.monotonic() - started)))  # about 10 s with the port closed
    assert d.proc.poll() is None, "the daemon must wait for the broker"
    sub = deliver_to_a_new_broker(d, port, tmp_path)
    log = d.log()
    failed = int(re.search(r"MQTT connected to \S+ after (\d+) failed attempts?", log).group(1))
    warned = re.findall(r"MQTT broker \S+ unreachable: (.*)", log)
    assert failed >= 3 and len(warned) == 1, log  # every attempt counted, the same reason logged once
    assert "connection refused (is the broker running" in warned[0] and "retrying every 1-1 s" in warned[0]
    stats = sub.stats()[-1]
    assert stats["broker_failures"] == failed and "connection refused" in stats["broker_last_error"]
    logged = [(t, i) for t, _, i in d.logged_events()]
    got = [(e["type"], e["id"]) for e in sub.events()]
    assert len(logged) == 6 and got == logged  # each spooled event delivered once, oldest first
