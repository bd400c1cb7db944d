"""The daemon against a real Home Assistant: ``python -m tools.ha_check`` (what ``make test-ha`` runs).

Installs Home Assistant core (``HA_VERSION``, from PyPI) into its own virtual
environment ``.venv-ha`` with a Python 3.13 (``HA_PYTHON``, else
``python3.13`` on PATH, else pyenv's), kept between runs; starts a private
mosquitto and Home Assistant with a fresh configuration folder on loopback
ports; onboards it through its HTTP API (the token comes from there) and
sets MQTT up through its config-flow API, as a user's browser would. Then it
runs the daemon (``python -m edge run``) on a camera folder built from the
shipped demo clip: 7 passes of a known resident's plate (121CW79) between 7
other vehicles (OCH8X83, a blocked plate, and NUF83743, unknown), read with
the shipped models, and asserts through Home Assistant's REST API:

- every discovered entity exists, under one device, and is available;
- the device triggers fire once per arrival: "vehicle arrived" for every
  ``new`` event, "known vehicle arrived" (residents, blocked) for each
  known plate's, none on ``end`` (the event entity counts those); the
  README's MQTT-trigger automation fires as often;
- nothing fires on a broker restart, a daemon killed and restarted, or a
  Home Assistant restart;
- availability follows ``<prefix>/status`` (SIGTERM, SIGKILL);
- the last plate survives a Home Assistant restart; no crop in attributes,
  the crop is an image entity;
- a stopped camera turns "camera OK" off within 3 stats intervals, and the
  stats-fed sensors expire when the stats stop;
- Home Assistant logged no warning about MQTT or a template.

Prints one PASS/FAIL row per check; exit 0 when every row passes, 1 when one
fails, 2 when something it needs cannot be had (no Python 3.13, the install
failed, Home Assistant did not start). ``--keep DIR`` keeps the configuration
folders and logs there.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from edge.events import EVENT_TEMPLATE, Topics, discovery_messages, expire_after_s
from edge.mosquitto import free_port, mosquitto_binary

ROOT = Path(__file__).resolve().parents[1]
HA_VERSION = "2025.4.4"
VENV = ROOT / ".venv-ha"
DEVICE_ID = "hacheck"
PREFIX = f"anpr/{DEVICE_ID}"
CAMERA_ID = "gate"
STATS_INTERVAL_S = 2.0
KNOWN_PLATE, BLOCKED_PLATE = "121CW79", "OCH8X83"
PASSES = 7
#: demo/clip.mp4 (8 fps): the frames of each vehicle's pass with empty road before and after it.
SEGMENTS = {"121CW79": range(0, 20), "OCH8X83": range(20, 38), "NUF83743": range(38, 58)}
#: Frames of empty road after the last vehicle: time for this check to stop the camera before the folder loops.
TAIL_FRAMES = 400
COUNTERS = ("vehicle_arrived", "known_residents", "known_blocked", "mqtt_residents", "event_new", "event_end")


class Unavailable(Exception):
    """Something the check needs cannot be had (exit 2)."""


# --- the Home Assistant environment -------------------------------------------------------------------------------

def _python_version(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:  # a pyenv shim for a version not selected, a broken install
        return None
    major, minor = (int(x) for x in out.stdout.split())
    return major, minor


def find_python313() -> str:
    """A Python 3.13 to run Home Assistant with: ``HA_PYTHON``, ``python3.13`` on PATH, or pyenv's 3.13."""
    candidates = [os.environ.get("HA_PYTHON"), shutil.which("python3.13")]
    pyenv_root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    candidates += sorted(glob.glob(f"{pyenv_root}/versions/3.13*/bin/python3.13"), reverse=True)
    for python in candidates:
        if python and _python_version(python) == (3, 13):
            return python
    raise Unavailable(f"Home Assistant {HA_VERSION} needs Python 3.13 and none was found (tried HA_PYTHON, "
                      "python3.13 on PATH, pyenv's versions/3.13*): install one, or set HA_PYTHON=/path/to/python3.13")


def ensure_venv(log: Callable[[str], None]) -> Path:
    """``.venv-ha`` with Home Assistant installed (made once, then reused); returns its ``hass``."""
    hass, stamp = VENV / "bin" / "hass", VENV / f".homeassistant-{HA_VERSION}"
    if stamp.is_file() and hass.is_file():
        return hass
    python = find_python313()
    log(f"installing homeassistant=={HA_VERSION} into {VENV.relative_to(ROOT)} with {python} (a few minutes)")
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    for cmd in ([python, "-m", "venv", str(VENV)], [*pip, "--upgrade", "pip"], [*pip, f"homeassistant=={HA_VERSION}"]):
        done = subprocess.run(["nice", "-n", "10", *cmd], capture_output=True, text=True)
        if done.returncode != 0:
            raise Unavailable(f"{' '.join(cmd[:4])} ... failed:\n{(done.stdout + done.stderr)[-3000:]}")
    stamp.touch()
    return hass


class Api:
    """Home Assistant's HTTP API with the onboarded user's tokens (refreshed before they expire)."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.client_id = f"{self.base}/"
        self.access: str | None = None
        self.refresh: str | None = None
        self.issued = 0.0

    def call(self, method: str, path: str, body: Any = None, form: dict | None = None, auth: bool = True,
             timeout: float = 30) -> tuple[int, Any]:
        """(status, parsed JSON, text or bytes) of one request; connection errors give status 0."""
        headers = {}
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        elif form is not None:
            data, headers["Content-Type"] = urllib.parse.urlencode(form).encode(), "application/x-www-form-urlencoded"
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        req = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw, kind = resp.status, resp.read(), resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            status, raw, kind = exc.code, exc.read(), exc.headers.get("Content-Type", "")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, None
        if "json" in kind:
            return status, json.loads(raw or b"null")
        return status, raw if kind.startswith("image/") else raw.decode(errors="replace")

    def token(self) -> str:
        if self.refresh and time.monotonic() - self.issued > 600:  # access tokens last 30 min
            status, tok = self.call("POST", "/auth/token", form={"grant_type": "refresh_token",
                                    "refresh_token": self.refresh, "client_id": self.client_id}, auth=False)
            if status == 200:
                self.access, self.issued = tok["access_token"], time.monotonic()
        if self.access is None:
            raise RuntimeError("not onboarded: no token")
        return self.access

    def onboard(self) -> None:
        """Create the owner through onboarding and take its tokens.

        Only the user step (and the integration step, which hands the browser its code): the core-config step
        sets up integrations that reach out to the internet (radio browser, weather), which a check on loopback
        must not."""
        status, res = self.call("POST", "/api/onboarding/users", {
            "client_id": self.client_id, "name": "ha-check", "username": "hacheck", "password": "ha-check-password",
            "language": "en"}, auth=False)
        if status != 200:
            raise Unavailable(f"onboarding: creating the user answered {status}: {res}")
        status, tok = self.call("POST", "/auth/token", form={"grant_type": "authorization_code",
                                "code": res["auth_code"], "client_id": self.client_id}, auth=False)
        if status != 200:
            raise Unavailable(f"onboarding: the token request answered {status}: {tok}")
        self.access, self.refresh, self.issued = tok["access_token"], tok["refresh_token"], time.monotonic()
        self.call("POST", "/api/onboarding/integration", {"client_id": self.client_id,
                                                         "redirect_uri": f"{self.base}/?auth_callback=1"})

    def state(self, entity_id: str) -> dict | None:
        status, res = self.call("GET", f"/api/states/{entity_id}")
        return res if status == 200 else None

    def value(self, entity_id: str) -> str | None:
        st = self.state(entity_id)
        return None if st is None else st["state"]

    def template(self, template: str, variables: dict | None = None) -> str:
        status, res = self.call("POST", "/api/template", {"template": template, "variables": variables or {}})
        if status != 200:
            raise AssertionError(f"template {template!r}: {status} {res}")
        return str(res)


class HomeAssistant:
    """A Home Assistant core process on a loopback port with its own configuration folder."""

    def __init__(self, hass: Path, config: Path, port: int) -> None:
        self.hass, self.config, self.port = hass, config, port
        self.api = Api(port)
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def write_config(self, broker_port: int) -> None:
        counters = {name: {"initial": 0, "step": 1} for name in COUNTERS}
        cfg = {
            "homeassistant": {"name": "ha-check", "latitude": 52.37, "longitude": 4.89, "elevation": 0,
                              "unit_system": "metric", "time_zone": "UTC", "currency": "EUR", "country": "NL"},
            "http": {"server_host": "127.0.0.1", "server_port": self.port},
            "logger": {"default": "warning"},
            "counter": counters,
            "input_text": {"last_blocked": {"name": "last blocked", "max": 255}},
        }
        self.config.mkdir(parents=True, exist_ok=True)
        (self.config / "configuration.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False)
                                                        + "automation: !include automations.yaml\n")
        (self.config / "automations.yaml").write_text("[]\n")

    def start(self, timeout: float) -> None:
        """Start and wait until it runs (onboarded: its API answers with the token and says RUNNING)."""
        self.starts += 1
        out = open(self.config / f"stdout-{self.starts}.log", "wb")  # noqa: SIM115  (closed with the process)
        self.proc = subprocess.Popen(["nice", "-n", "10", str(self.hass), "-c", str(self.config), "--log-no-color"],
                                     stdout=out, stderr=subprocess.STDOUT)
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Unavailable(f"Home Assistant exited with {self.proc.returncode}: "
                                  f"{self.log_tail()}")
            if self.api.access is None:
                status, _ = self.api.call("GET", "/api/onboarding", auth=False, timeout=5)
                if status == 200:
                    return
            else:
                status, res = self.api.call("GET", "/api/config", timeout=5)
                if status == 200 and res.get("state") == "RUNNING":
                    return
            time.sleep(1)
        raise Unavailable(f"Home Assistant did not start within {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self) -> str:
        path = self.config / "home-assistant.log"
        return path.read_text(errors="replace")[-3000:] if path.is_file() else "(no log)"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


# --- the camera, the broker and the daemon -------------------------------------------------------------------------

def build_camera(out: Path) -> tuple[Path, Path, list[str]]:
    """The frames of the check's camera in ``out/frames`` (PASSES passes of the known plate, each followed by
    another vehicle, then TAIL_FRAMES of empty road) and an empty folder ``out/empty``; returns both and the
    plates in the order they pass."""
    cap = cv2.VideoCapture(str(ROOT / "demo" / "clip.mp4"))
    demo = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        demo.append(frame)
    cap.release()
    if len(demo) < max(max(r) for r in SEGMENTS.values()) + 1:
        raise Unavailable(f"demo/clip.mp4: {len(demo)} frames decoded, fewer than the check needs")
    others = [p for p in SEGMENTS if p != KNOWN_PLATE]
    order = []
    for i in range(PASSES):
        order += [KNOWN_PLATE, others[i % len(others)]]
    frames, empty = out / "frames", out / "empty"
    frames.mkdir(parents=True)
    empty.mkdir()
    n = 0
    for plate in order:
        for index in SEGMENTS[plate]:
            cv2.imwrite(str(frames / f"{n:05d}.jpg"), demo[index], [cv2.IMWRITE_JPEG_QUALITY, 95])
            n += 1
    road = frames / f"{n:05d}.jpg"
    cv2.imwrite(str(road), demo[-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    for i in range(n + 1, n + TAIL_FRAMES):
        os.link(road, frames / f"{i:05d}.jpg")
    return frames, empty, order


def point(link: Path, target: Path) -> None:
    """Make the camera folder ``link`` show ``target``, atomically (the daemon lists the folder per pass)."""
    tmp = link.with_name(link.name + ".new")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link)


class Broker:
    """A private mosquitto on a fixed loopback port, restartable (retained messages are not kept)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.port = workdir, free_port()
        self.conf = workdir / "mosquitto.conf"
        # Run as ourselves: started by root, mosquitto would switch to a user that cannot read the temp dir.
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                             f"user {pwd.getpwuid(os.geteuid()).pw_name}\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.workdir / "mosquitto.log", "ab") as log:
            self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            time.sleep(0.05)
        raise Unavailable(f"mosquitto did not start: {(self.workdir / 'mosquitto.log').read_text()[-500:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@dataclass
class Watcher:
    """What the broker carries under the prefix: the truth the Home Assistant counts are checked against."""

    port: int
    events: list[dict] = field(default_factory=list)
    arrivals: list[dict] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Watcher:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ha-check-watcher")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{PREFIX}/#", qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 1)
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        return self

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            if msg.topic == f"{PREFIX}/plates":
                self.events.append(json.loads(msg.payload))
            elif msg.topic == f"{PREFIX}/arrivals":
                self.arrivals.append(json.loads(msg.payload))
            elif msg.topic == f"{PREFIX}/status":
                self.statuses.append(msg.payload.decode())

    def unique(self, kind: str) -> list[dict]:
        """Events of ``kind`` once each (delivery is at-least-once)."""
        with self.lock:
            seen: dict[str, dict] = {}
            for e in self.events:
                if e["type"] == kind:
                    seen.setdefault(e["id"], e)
            return list(seen.values())

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Daemon:
    """``python -m edge run`` with the check's configuration."""

    def __init__(self, workdir: Path, camera: Path, broker_port: int) -> None:
        self.workdir = workdir
        self.config = {
            "camera": {"id": CAMERA_ID, "type": "folder", "path": str(camera), "fps": 8, "loop": True,
                       "realtime": False, "reconnect_min_s": 1, "reconnect_max_s": 2},
            "detection": {"threads": 1},
            "tracking": {"reappear_window_s": 0, "crop": "base64"},
            "mqtt": {"host": "127.0.0.1", "port": broker_port, "device_id": DEVICE_ID, "topic_prefix": PREFIX,
                     "stats_interval_s": STATS_INTERVAL_S, "reconnect_min_s": 1, "reconnect_max_s": 2},
            "known_plates": {"plates": [{"plate": KNOWN_PLATE, "name": "resident's car", "group": "residents"},
                                        {"plate": BLOCKED_PLATE, "name": "banned van", "group": "blocked"}]},
            "spool": {"path": str(workdir / "spool.sqlite")},
            "logging": {"level": "INFO"},
        }
        (workdir / "daemon.yaml").write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.proc: subprocess.Popen | None = None
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        with open(self.workdir / f"daemon-{self.runs}.log", "wb") as log:
            self.proc = subprocess.Popen(["nice", "-n", "5", sys.executable, "-m", "edge", "run", "--config",
                                          str(self.workdir / "daemon.yaml")], cwd=ROOT, stdout=log,
                                         stderr=subprocess.STDOUT, env=os.environ | {"PYTHONUNBUFFERED": "1"})

    def signal(self, sig: int) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None
        self.proc.send_signal(sig)
        if sig in (signal.SIGSTOP, signal.SIGCONT):
            return None
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def log(self) -> str:
        path = self.workdir / f"daemon-{self.runs}.log"
        return path.read_text(errors="replace") if path.is_file() else ""


# --- the check ---------------------------------------------------------------------------------------------------

def wait_until(pred: Callable[[], Any], timeout: float, interval: float = 0.25) -> Any:
    """``pred()`` once truthy, or its last value after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


class Check:
    """The rows of the table: each check's name, whether it passed, and what was seen."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, bool, str]] = []

    def row(self, name: str, ok: bool, detail: str) -> bool:
        self.rows.append((name, bool(ok), detail))
        print(f"  {'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)
        return bool(ok)

    def table(self) -> str:
        width = max(len(n) for n, _, _ in self.rows)
        lines = [f"{'check':<{width}}  result  seen", f"{'-' * width}  ------  ----"]
        lines += [f"{n:<{width}}  {'PASS' if ok else 'FAIL':<6}  {d}" for n, ok, d in self.rows]
        passed = sum(ok for _, ok, _ in self.rows)
        lines.append(f"{passed} of {len(self.rows)} checks passed: {'PASS' if passed == len(self.rows) else 'FAIL'}")
        return "\n".join(lines)


def expected_entities() -> dict[str, dict]:
    """friendly name -> discovery config of each entity the daemon announces (device triggers are no entities)."""
    topics = Topics(PREFIX, DEVICE_ID)
    out = {}
    for topic, payload in discovery_messages(topics, "", camera=CAMERA_ID, stats_interval_s=STATS_INTERVAL_S,
                                             crop_image=True, groups=("blocked", "residents")):
        cfg = json.loads(payload)
        component = topic.split("/")[1]
        if component != "device_automation":
            out[f"ANPR {DEVICE_ID} {cfg['name']}"] = cfg | {"component": component}
    return out


def automations(device_id: str, event_entity: str) -> list[dict]:
    """The automations whose counters the check reads: the README's triggers, counting."""
    def count(name: str) -> dict:
        return {"action": "counter.increment", "target": {"entity_id": f"counter.{name}"}}

    def device(kind: str, subtype: str) -> dict:
        return {"trigger": "device", "domain": "mqtt", "device_id": device_id, "type": kind, "subtype": subtype}

    def event_of(kind: str) -> dict:
        return {"id": f"ha_check_event_{kind}", "alias": f"ha-check plate event {kind}", "mode": "queued",
                "max": 1000, "triggers": [{"trigger": "state", "entity_id": event_entity,
                                           "not_from": ["unavailable"]}],
                "conditions": [{"condition": "template", "value_template":
                                "{{ trigger.from_state is not none and trigger.to_state.state not in "
                                "['unavailable', 'unknown'] and "
                                f"trigger.to_state.attributes.event_type == '{kind}' }}}}"}],
                "actions": [count(f"event_{kind}")]}

    blocked_message = ("Blocked plate {{ trigger.payload_json.display }} ({{ trigger.payload_json.known.name }}) "
                       "at {{ trigger.payload_json.camera }}")
    return [
        {"id": "ha_check_vehicle_arrived", "alias": "ha-check vehicle arrived", "mode": "queued", "max": 1000,
         "triggers": [device("vehicle_arrived", CAMERA_ID)], "actions": [count("vehicle_arrived")]},
        {"id": "ha_check_known_residents", "alias": "ha-check resident arrived", "mode": "queued", "max": 1000,
         "triggers": [device("known_vehicle_arrived", "residents")], "actions": [count("known_residents")]},
        {"id": "ha_check_known_blocked", "alias": "ha-check blocked plate", "mode": "queued", "max": 1000,
         "triggers": [device("known_vehicle_arrived", "blocked")],
         "actions": [count("known_blocked"),
                     {"action": "input_text.set_value", "target": {"entity_id": "input_text.last_blocked"},
                      "data": {"value": blocked_message}}]},
        {"id": "ha_check_mqtt_residents", "alias": "ha-check resident arrived (mqtt trigger)", "mode": "queued",
         "max": 1000, "triggers": [{"trigger": "mqtt", "topic": f"{PREFIX}/known/residents"}],
         "actions": [count("mqtt_residents")]},
        event_of("new"),
        event_of("end"),
    ]


def counts(api: Api) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for name in COUNTERS:
        value = api.value(f"counter.{name}")
        out[name] = int(value) if value is not None and value.isdigit() else None
    return out


def run_check(work: Path, check: Check, log: Callable[[str], None]) -> None:
    hass_bin = ensure_venv(log)
    frames, empty, order = build_camera(work / "camera")
    camera = work / "camera" / "cam"
    point(camera, empty)
    known_passes = order.count(KNOWN_PLATE)
    log(f"camera: {len(order)} vehicles ({known_passes} x {KNOWN_PLATE}), {len(list(frames.iterdir()))} frames")

    (work / "broker").mkdir()
    broker = Broker(work / "broker")
    broker.start()
    watcher = Watcher(broker.port).start()
    ha = HomeAssistant(hass_bin, work / "ha", free_port())
    ha.write_config(broker.port)
    (work / "daemon").mkdir()
    daemon = Daemon(work / "daemon", camera, broker.port)
    api = ha.api
    try:
        log("starting Home Assistant (the first start installs the integrations' requirements: minutes)")
        ha.start(timeout=1200)
        api.onboard()
        status, flow = api.call("POST", "/api/config/config_entries/flow", {"handler": "mqtt",
                                                                             "show_advanced_options": False})
        if status == 200 and flow.get("type") == "menu":
            status, flow = api.call("POST", f"/api/config/config_entries/flow/{flow['flow_id']}",
                                    {"next_step_id": "broker"})
        if status == 200 and flow.get("step_id") == "broker":
            status, flow = api.call("POST", f"/api/config/config_entries/flow/{flow['flow_id']}",
                                    {"broker": "127.0.0.1", "port": broker.port})
        if not check.row("MQTT set up through the config flow", status == 200 and flow.get("type") == "create_entry",
                         f"{status} {flow.get('type') if isinstance(flow, dict) else flow}"):
            return

        # Discovery: the daemon's first run, its camera showing nothing yet.
        daemon.start()
        want = expected_entities()

        def found() -> dict[str, str]:
            status, states = api.call("GET", "/api/states")
            names = {s["attributes"].get("friendly_name"): s["entity_id"] for s in states} if status == 200 else {}
            return {name: names[name] for name in want if name in names}

        wait_until(lambda: len(found()) == len(want), 90)
        ids = found()
        missing = sorted(set(want) - set(ids))
        check.row("entities discovered", not missing, f"{len(ids)} of {len(want)}" +
                  (f"; missing {missing}" if missing else f": {', '.join(sorted(ids.values()))}"))
        if missing:
            return
        entity = {cfg["unique_id"].removeprefix(f"edge_anpr_{DEVICE_ID}_"): ids[name] for name, cfg in want.items()}
        device_ids = {api.template(f"{{{{ device_id('{e}') }}}}") for e in entity.values()}
        check.row("one device for every entity", len(device_ids) == 1, ", ".join(sorted(device_ids)))
        device_id = device_ids.pop()
        available = wait_until(lambda: all(api.value(e) != "unavailable" for e in entity.values()), 30)
        check.row("available while the daemon runs", available,
                  ", ".join(f"{k}={api.value(e)}" for k, e in sorted(entity.items()) if k in ("last_plate", "fps")))
        camera_ok = entity["camera_ok"]
        off = wait_until(lambda: api.value(camera_ok) == "off", 4 * STATS_INTERVAL_S + 5)
        check.row("camera OK is off while the camera shows nothing", off, f"{camera_ok}={api.value(camera_ok)}")

        # Home Assistant's own rendering of the discovery templates.
        sample = {"type": "new", "id": "x", "text": "AB12CDE", "crop": "/9j/AAAA", "known": None}
        rendered = json.loads(api.template(EVENT_TEMPLATE, {"value_json": sample}))
        check.row("the event template renders in Home Assistant, without the crop",
                  rendered.get("event_type") == "new" and "crop" not in rendered and rendered["text"] == "AB12CDE",
                  f"attributes {sorted(rendered)}")

        (ha.config / "automations.yaml").write_text(yaml.safe_dump(automations(device_id, entity["plate"]),
                                                                   sort_keys=False))
        status, _ = api.call("POST", "/api/services/automation/reload", {})
        autos = wait_until(lambda: [s for s in (api.call("GET", "/api/states")[1] or [])
                                    if s["entity_id"].startswith("automation.")], 30) or []
        check.row("automations loaded", status == 200 and len(autos) == 6 and all(a["state"] == "on" for a in autos),
                  f"{len(autos)}: " + ", ".join(f"{a['entity_id']}={a['state']}" for a in autos))

        # Availability follows the status topic: a clean stop, then the run with vehicles.
        code = daemon.signal(signal.SIGTERM)
        gone = wait_until(lambda: all(api.value(e) == "unavailable" for e in entity.values()), 20)
        check.row("unavailable after the daemon stops (SIGTERM, offline)", gone and code == 0,
                  f"exit {code}; last_plate={api.value(entity['last_plate'])}")
        point(camera, frames)
        daemon.start()
        back = wait_until(lambda: all(api.value(e) != "unavailable" for e in entity.values()), 60)
        check.row("available again when the daemon starts (online)", back, f"fps={api.value(entity['fps'])}")

        n_vehicles = len(order)
        seen_ok = wait_until(lambda: api.value(camera_ok) == "on", 60)
        done = wait_until(lambda: len(watcher.unique("end")) >= n_vehicles, 600, interval=0.5)
        point(camera, empty)  # the camera stops: before the folder's next pass
        stopped_at = time.monotonic()
        check.row("camera OK is on while frames flow", seen_ok, f"{camera_ok} on: {bool(seen_ok)}")
        news, ends = watcher.unique("new"), watcher.unique("end")
        known_news = [e for e in news if e["text"] == KNOWN_PLATE]
        blocked_news = [e for e in news if e["text"] == BLOCKED_PLATE]
        texts = [e["text"] for e in news]
        check.row(f"the clip gives {known_passes} arrivals of {KNOWN_PLATE} (MQTT)",
                  bool(done) and len(known_news) == known_passes and texts == order,
                  f"{len(news)} new, {len(ends)} end on {PREFIX}/plates; new in order: {texts}")
        with watcher.lock:
            arrivals = list(watcher.arrivals)
        check.row("one arrivals message per new, none per end",
                  [a["id"] for a in arrivals] == [e["id"] for e in news],
                  f"{len(arrivals)} on {PREFIX}/arrivals for {len(news)} new and {len(ends)} end")
        known_field = [e.get("known") for e in known_news]
        check.row("known plates carry 'known'",
                  bool(known_field) and all(k and k.get("group") == "residents" for k in known_field)
                  and all((e.get("known") or {}).get("group") == "blocked" for e in blocked_news),
                  f"{KNOWN_PLATE}: {known_field[:1]}; {BLOCKED_PLATE}: {[e.get('known') for e in blocked_news][:1]}")

        off = wait_until(lambda: api.value(camera_ok) == "off", 3 * STATS_INTERVAL_S + 5, interval=0.1)
        took = time.monotonic() - stopped_at
        check.row("a stopped camera turns camera OK off within 3 stats intervals",
                  bool(off) and took <= 3 * STATS_INTERVAL_S,
                  f"off after {took:.1f} s (stats every {STATS_INTERVAL_S:g} s, limit {3 * STATS_INTERVAL_S:g} s); "
                  f"source errors {api.value(entity['source_errors'])}, "
                  f"reconnects {api.value(entity['source_reconnects'])}")

        expect = {"vehicle_arrived": len(news), "known_residents": len(known_news),
                  "known_blocked": len(blocked_news), "mqtt_residents": len(known_news),
                  "event_new": len(news), "event_end": len(ends)}
        wait_until(lambda: counts(api) == expect, 30)
        got = counts(api)
        check.row(f"device triggers: vehicle arrived {len(news)} of {len(news)}, none on end",
                  got["vehicle_arrived"] == len(news),
                  f"fired {got['vehicle_arrived']} for {len(news)} new and {len(ends)} end")
        check.row(f"device trigger: known vehicle arrived (residents) {known_passes} of {known_passes}",
                  got["known_residents"] == len(known_news) == known_passes,
                  f"fired {got['known_residents']} for {len(known_news)} arrivals of {KNOWN_PLATE}")
        check.row("device trigger: known vehicle arrived (blocked)",
                  got["known_blocked"] == len(blocked_news) and len(blocked_news) > 0,
                  f"fired {got['known_blocked']} for {len(blocked_news)} arrivals of {BLOCKED_PLATE}; "
                  f"message {api.value('input_text.last_blocked')!r}")
        check.row("MQTT trigger on the group's topic known/residents (README)",
                  got["mqtt_residents"] == len(known_news), f"fired {got['mqtt_residents']}")
        check.row("event entity: every new and end", got["event_new"] == len(news) and got["event_end"] == len(ends),
                  f"new {got['event_new']}, end {got['event_end']}")

        last = news[-1]
        plate_state = api.state(entity["last_plate"]) or {}
        event_state = api.state(entity["plate"]) or {}
        check.row("last plate is the latest new, no crop in attributes",
                  plate_state.get("state") == last["text"] and plate_state.get("attributes", {}).get("id") == last["id"]
                  and "crop" not in plate_state.get("attributes", {})
                  and "crop" not in event_state.get("attributes", {}),
                  f"{entity['last_plate']}={plate_state.get('state')} (latest new {last['text']}); "
                  f"attributes {len(json.dumps(plate_state.get('attributes', {})))} bytes")
        status, image = api.call("GET", f"/api/image_proxy/{entity['last_crop']}")
        jpeg = status == 200 and isinstance(image, bytes) and image[:2] == b"\xff\xd8"
        check.row("the crop is an image entity", jpeg,
                  f"{entity['last_crop']}: {status}, {len(image) if isinstance(image, bytes) else 0} bytes JPEG")

        # Stats stop while the daemon stays online (frozen): the stats-fed entities expire.
        fps, expiry = entity["fps"], expire_after_s(STATS_INTERVAL_S)
        daemon.signal(signal.SIGSTOP)
        frozen = time.monotonic()
        expired = wait_until(lambda: api.value(fps) == "unavailable" and api.value(camera_ok) == "unavailable",
                             expiry + 10, interval=0.2)
        took = time.monotonic() - frozen
        daemon.signal(signal.SIGCONT)
        check.row("stats sensors expire without stats (expire_after)", bool(expired) and took <= expiry + 2,
                  f"unavailable {took:.1f} s after the daemon froze (expire_after {expiry} s from its last stats)")
        wait_until(lambda: api.value(fps) not in ("unavailable", None), 20)

        # Reconnects fire nothing: the broker restarted (retained messages lost and sent again), the daemon
        # killed (last will) and started again.
        before = counts(api)
        broker.stop()
        broker.start()
        daemon_back = wait_until(lambda: daemon.log().count("MQTT connected") >= 2, 30)
        ha_back = wait_until(lambda: api.value(fps) not in ("unavailable", None)
                             and api.value(entity["last_plate"]) == last["text"], 60)
        check.row("after a broker restart: reconnected, last plate sent again", bool(daemon_back and ha_back),
                  f"last_plate={api.value(entity['last_plate'])}")
        daemon.signal(signal.SIGKILL)
        will = wait_until(lambda: api.value(entity["last_plate"]) == "unavailable", 30)
        check.row("unavailable when the daemon dies (SIGKILL, last will)", will,
                  f"last_plate={api.value(entity['last_plate'])}")
        daemon.start()
        back = wait_until(lambda: api.value(entity["last_plate"]) == last["text"], 60)
        time.sleep(3 * STATS_INTERVAL_S)  # room for anything a reconnect would wrongly fire
        after = counts(api)
        check.row("no trigger on a broker restart or a daemon restart", bool(back) and after == before,
                  f"counters {after} (before {before})")

        # Home Assistant restarts: the last plate comes back from the retained topic, nothing fires.
        ha.stop()
        ha.start(timeout=300)
        restored = wait_until(lambda: api.value(entity["last_plate"]) == last["text"], 60)
        time.sleep(3 * STATS_INTERVAL_S)
        after_restart = counts(api)
        check.row("last plate survives a Home Assistant restart", restored,
                  f"{entity['last_plate']}={api.value(entity['last_plate'])} (latest new {last['text']})")
        check.row("no trigger on a Home Assistant restart", after_restart == before, f"counters {after_restart}")

        code = daemon.signal(signal.SIGTERM)
        lines = [line for path in sorted(ha.config.glob("home-assistant.log*"))
                 for line in path.read_text(errors="replace").splitlines()]
        warnings = [line for line in lines if (" WARNING " in line or " ERROR " in line)
                    and any(w in line.lower() for w in ("mqtt", "template", "anpr", DEVICE_ID))]
        # The broker restart above was on purpose: Home Assistant says it lost the connection, once.
        expected = [w for w in warnings if "connection was lost" in w]
        warnings = [w for w in warnings if w not in expected]
        check.row("no warning about MQTT or a template in Home Assistant's log", not warnings,
                  f"{len(warnings)} lines" + (": " + " | ".join(w[-200:] for w in warnings[:3]) if warnings else "")
                  + f" (and {len(expected)} on the broker restart: connection lost)")
    finally:
        daemon.signal(signal.SIGCONT)
        daemon.signal(signal.SIGTERM)
        ha.stop()
        watcher.stop()
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.ha_check [--keep DIR]``."""
    ap = argparse.ArgumentParser(prog="python -m tools.ha_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", type=Path, default=None, help="keep the configuration folders and logs in DIR")
    args = ap.parse_args(argv)
    start = time.monotonic()

    def log(line: str) -> None:
        print(f"[{time.monotonic() - start:6.1f} s] {line}", flush=True)

    check = Check()
    if args.keep:
        if args.keep.exists() and any(args.keep.iterdir()):
            print(f"error: --keep {args.keep}: not empty", file=sys.stderr)
            return 2
        args.keep.mkdir(parents=True, exist_ok=True)
        work = args.keep.resolve()
    else:
        tmp = tempfile.mkdtemp(prefix="edge-ha-check-")
        work = Path(tmp)
    try:
        run_check(work, check, log)
    except Unavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nHome Assistant {HA_VERSION} against the daemon ({time.monotonic() - start:.0f} s):\n")
    print(check.table())
    return 0 if check.rows and all(ok for _, ok, _ in check.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
