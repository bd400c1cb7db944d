"""Emulated-device harness: a real mosquitto, the real daemon as a subprocess, a paho subscriber.

The fixtures are defined here and ``tests/conftest.py`` loads this module as
a plugin (``pytest_plugins``); there is no conftest.py here: the suite's
top-level tests import ``conftest`` by name.
The clip and its tiny trained models are made once per session by
``clipmodels.py`` in a subprocess, which ``tests/conftest.py`` starts at
collection so that its training overlaps the rest of the suite (the harness
tests run last); set ``EDGE_HARNESS_CACHE=DIR`` to keep them between sessions.
"""
from __future__ import annotations

import itertools
import json
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from edge.mosquitto import find_mosquitto, free_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PREFIX = "anpr/test"
_client_ids = itertools.count()
MOSQUITTO = find_mosquitto()


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``pred`` until truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Broker:
    """A mosquitto on a loopback port, from a temporary config; restartable on the same port."""

    def __init__(self, workdir: Path, persistence: bool = False, port: int | None = None,
                 users: dict[str, str] | None = None, tls: dict[str, Path] | None = None) -> None:
        if MOSQUITTO is None:
            pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
        self.port = port or free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        # Run as ourselves: started by root, mosquitto would switch to its own user, which cannot read
        # the pytest temp dir (password file, persistence).
        lines = [f"listener {self.port} 127.0.0.1", f"allow_anonymous {'false' if users else 'true'}",
                 f"user {pwd.getpwuid(os.geteuid()).pw_name}"]
        if users:  # mosquitto_passwd hashes the passwords into the file mosquitto reads
            pw_file = workdir / "passwd"
            pw_file.touch()
            for user, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pw_file), user, password], check=True)
            lines.append(f"password_file {pw_file}")
        if tls:  # keys 'ca', 'cert', 'key' (see make_certificates)
            lines += [f"cafile {tls['ca']}", f"certfile {tls['cert']}", f"keyfile {tls['key']}"]
        if persistence:  # keeps a persistent subscriber's session and queue across a restart
            lines += ["persistence true", f"persistence_location {workdir}/"]
        else:
            lines += ["persistence false"]
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        with open(self.workdir / "mosquitto.log", "ab") as log:  # mosquitto keeps its own copy
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)

        def accepting() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                assert self.proc.poll() is None, (self.workdir / "mosquitto.log").read_text()
                return False

        wait_for(accepting, 10, f"mosquitto on port {self.port}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


def make_certificates(out: Path) -> dict[str, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    out.mkdir(parents=True, exist_ok=True)
    ca, ca_key, cert, key, csr = (out / n for n in ("ca.crt", "ca.key", "server.crt", "server.key", "server.csr"))
    ext = out / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for cmd in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "1",
         "-subj", "/CN=harness CA"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "1",
         "-extfile", ext],
    ):
        subprocess.run(["openssl", *map(str, cmd)], check=True, capture_output=True)
    return {"ca": ca, "cert": cert, "key": key}


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float = field(default_factory=time.monotonic)


class Subscriber:
    """Records everything under the test prefix and Home Assistant discovery."""

    def __init__(self, port: int, persistent: bool = False, auth: tuple[str, str] | None = None,
                 ca: Path | None = None) -> None:
        self.port = port
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"harness-{port}-{next(_client_ids)}",
                                  clean_session=not persistent)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(f"{PREFIX}/#", 1), ("homeassistant/#", 1)])
        self.client.on_message = self._on_message
        if auth:
            self.client.username_pw_set(*auth)
        if ca:
            self.client.tls_set(ca_certs=str(ca))
        self.client.reconnect_delay_set(1, 1)
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self.subscribed.set()

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Received(msg.topic, msg.payload, bool(msg.retain)))

    def start(self) -> Subscriber:
        self.client.connect("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        assert self.subscribed.wait(10), "subscriber got no SUBACK"
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def on(self, topic_suffix: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic == f"{PREFIX}/{topic_suffix}"]

    def events(self) -> list[dict]:
        return [json.loads(m.payload) for m in self.on("plates")]

    def statuses(self) -> list[str]:
        return [m.payload.decode() for m in self.on("status")]

    def stats(self) -> list[dict]:
        return [json.loads(m.payload) for m in self.on("stats")]


class DaemonProc:
    """``python -m edge run --config FILE`` with its output in a log file."""

    def __init__(self, config: dict, workdir: Path, name: str = "daemon", env: dict | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / f"{name}.log"
        env = os.environ | {"PYTHONUNBUFFERED": "1"} | (env or {})
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(self.config_path)],
                                         cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float, count: int = 1) -> list[str]:
        """Wait until ``pattern`` (a regex) matches ``count`` log lines; return the matches."""
        def found():
            hits = re.findall(pattern, self.log(), flags=re.M)
            if len(hits) < count and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}) before logging {pattern!r}:\n"
                                     + self.log()[-4000:])
            return hits if len(hits) >= count else None

        return wait_for(found, timeout, f"{count} x {pattern!r} in the daemon log")

    def logged_events(self) -> list[tuple[str, str, str]]:
        """(type, text, id) of every event the daemon spooled, in order."""
        return re.findall(r"event (new|end) (\S+) id=(\S+)", self.log())

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"daemon did not exit within {timeout} s:\n{self.log()[-4000:]}") from None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def deliver_to_a_new_broker(d: DaemonProc, port: int, workdir: Path) -> Subscriber:
    """Start a broker on ``port`` for a daemon that has been waiting for one; once the daemon has delivered and
    exited 0, return the subscriber with what arrived (stopped, its messages kept)."""
    broker = Broker(workdir / "broker", port=port).start()
    sub = Subscriber(port).start()
    try:
        assert d.wait(60) == 0, d.log()
        wait_for(lambda: sub.stats(), 10, "the final stats")
    finally:
        sub.stop()
        broker.stop()
    return sub


def base_config(clip: Path, port: int, workdir: Path, **sections: dict) -> dict:
    """A daemon config for the clip and a broker port; ``sections`` update the defaults per section."""
    cfg: dict[str, dict] = {
        "camera": {"id": "lane1", "type": "file", "path": str(clip / "clip.avi"), "realtime": False},
        # The clip models are trained at whole-frame scale only: tiles and zoomed refinement are off.
        "detection": {"models": str(clip / "models"), "threads": 1, "tiles": 0, "refine": 0},
        "tracking": {"lost_after_s": 0.3, "confirm_frames": 2, "confirm_confidence": 0.5},
        "mqtt": {"host": "127.0.0.1", "port": port, "device_id": "test", "topic_prefix": PREFIX,
                 "stats_interval_s": 1, "reconnect_min_s": 1, "reconnect_max_s": 1, "drain_timeout_s": 30},
        "spool": {"path": str(workdir / "spool.sqlite")},
        "logging": {"level": "INFO"},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


@pytest.fixture(scope="session")
def clip() -> Path:
    """Directory with clip.avi, frames/, truth.json and models/ (see clipmodels.py)."""
    from conftest import harness_build

    started = harness_build()  # building since collection (tests/conftest.py), unless already cached
    if started:
        out, proc, log = started
        try:
            proc.wait(timeout=900)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        assert proc.returncode == 0, f"clip/model build failed:\n{log.read_text()[-6000:]}"
    else:
        out = Path(os.environ["EDGE_HARNESS_CACHE"])
    truth = json.loads((out / "truth.json").read_text())
    reads = truth["report"]["reads"]
    # The harness asserts exact events: the models must read this clip, or nothing below means anything.
    # A few single-frame misreads (of 36 reads) are what the tracker's vote is for; the event tests below
    # would fail if one reached an event.
    assert reads["wrong"] <= 3 and reads["right"] >= 30 and reads["spurious"] == 0 and reads["missed"] <= 3, \
        truth["report"]
    return out


@pytest.fixture
def truth(clip: Path) -> dict:
    return json.loads((clip / "truth.json").read_text())


@pytest.fixture
def broker(tmp_path: Path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture
def subscriber(broker: Broker):
    s = Subscriber(broker.port).start()
    yield s
    s.stop()
