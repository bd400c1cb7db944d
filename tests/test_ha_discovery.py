"""Home Assistant discovery and the messages behind it: what each entity and device trigger listens to, what is
retained, where a crop may go, and the Node-RED flow shipped in deploy/ (tools/ha_check.py checks all of it
against a real Home Assistant)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from edge.config import MqttConfig, parse_config
from edge.events import (
    STATS_EXPIRY_INTERVALS,
    STATUS_OFFLINE,
    STATUS_ONLINE,
    TRIGGER_ARRIVED,
    TRIGGER_KNOWN,
    Topics,
    daemon_discovery,
    discovery_messages,
    event_messages,
    expire_after_s,
    retained_messages,
)
from edge.publish import Publisher
from edge.spool import Spool
from edge.tracker import Event

ROOT = Path(__file__).resolve().parents[1]
TOPICS = Topics("anpr/gate", "gate")
JPEG = b"\xff\xd8\xff\xe0fake jpeg"


def configs(**kwargs) -> dict[str, dict]:
    """Discovery topic -> its parsed config."""
    kwargs.setdefault("camera", "lane1")
    return {topic: json.loads(payload) for topic, payload in discovery_messages(TOPICS, "1.2.3", **kwargs)}


def by_key(msgs: dict[str, dict]) -> dict[tuple[str, str], dict]:
    """(component, object id) -> config, from ``<prefix>/<component>/<node>/<object id>/config``."""
    out = {}
    for topic, cfg in msgs.items():
        prefix, component, node, key, tail = topic.split("/")
        assert (prefix, node, tail) == ("homeassistant", "edge_anpr_gate", "config"), topic
        out[component, key] = cfg
    return out


def event(kind: str, crop: bytes | None = None) -> Event:
    return Event(kind, "gate-20250114T081502123Z-3fa9c1", "gate", "AB12CDE", "AB12 CDE", "gb_current", "GB",
                 0.94, 1736842502.123, 1736842502.323, 3, (412.0, 300.5, 530.2, 331.0), 0.97, crop)


def test_every_entity_and_trigger_is_discovered_under_one_device() -> None:
    msgs = by_key(configs(crop_image=True, groups=["residents", "blocked"]))
    assert set(msgs) == {
        ("sensor", "last_plate"), ("event", "plate"), ("image", "last_crop"), ("binary_sensor", "camera_ok"),
        ("sensor", "fps"), ("sensor", "source_errors"), ("sensor", "source_reconnects"),
        ("sensor", "frames_dropped"), ("sensor", "spool_depth"),
        ("device_automation", "vehicle_arrived"), ("device_automation", "known_residents"),
        ("device_automation", "known_blocked")}
    devices = {json.dumps(cfg["device"], sort_keys=True) for cfg in msgs.values()}
    assert len(devices) == 1
    device = json.loads(devices.pop())
    assert device["identifiers"] == ["edge_anpr_gate"] and device["sw_version"] == "1.2.3"
    for (component, key), cfg in msgs.items():
        assert cfg["origin"] == {"name": "edge-anpr", "sw_version": "1.2.3"}, key
        if component == "device_automation":
            assert "unique_id" not in cfg and "availability_topic" not in cfg  # not part of a trigger's schema
            continue
        assert cfg["unique_id"] == f"edge_anpr_gate_{key}"
        assert cfg["name"].startswith("lane1 "), cfg["name"]  # the camera id names the entity
        assert (cfg["availability_topic"], cfg["payload_available"], cfg["payload_not_available"]) == (
            "anpr/gate/status", STATUS_ONLINE, STATUS_OFFLINE)


def test_no_trigger_or_event_listens_on_a_retained_topic() -> None:
    """A retained message comes again on every resubscription (a reconnect, a Home Assistant restart): a trigger
    on one would fire with no vehicle there."""
    msgs = by_key(configs(crop_image=True, groups=["residents"]))
    retained = {TOPICS.status, TOPICS.last_plate, TOPICS.last_crop}
    listened = [msgs["device_automation", "vehicle_arrived"]["topic"],
                msgs["device_automation", "known_residents"]["topic"], msgs["event", "plate"]["state_topic"]]
    assert listened == [TOPICS.arrivals, TOPICS.known("residents"), TOPICS.plates]
    assert not retained & set(listened)
    # ... and what must survive a restart reads the retained topics.
    assert msgs["sensor", "last_plate"]["state_topic"] == TOPICS.last_plate
    assert msgs["sensor", "last_plate"]["json_attributes_topic"] == TOPICS.last_plate
    assert msgs["image", "last_crop"]["image_topic"] == TOPICS.last_crop


def test_device_triggers_fire_on_arrivals_and_on_a_known_group() -> None:
    msgs = by_key(configs(groups=["residents", "blocked"]))
    arrived = msgs["device_automation", "vehicle_arrived"]
    assert (arrived["automation_type"], arrived["type"], arrived["subtype"]) == ("trigger", TRIGGER_ARRIVED, "lane1")
    assert "payload" not in arrived and "value_template" not in arrived  # every message on arrivals is a new
    for group in ("residents", "blocked"):
        known = msgs["device_automation", f"known_{group}"]
        assert (known["type"], known["subtype"], known["topic"]) == (TRIGGER_KNOWN, group, f"anpr/gate/known/{group}")
        assert "payload" not in known  # the group's topic carries only its new events
    assert not any(k[1].startswith("known_") for k in by_key(configs()))  # no groups, no known triggers


def test_stats_entities_expire_and_are_diagnostic() -> None:
    msgs = by_key(configs(stats_interval_s=7.5))
    fed = {k: cfg for k, cfg in msgs.items() if cfg.get("state_topic") == TOPICS.stats}
    assert set(fed) == {("sensor", "fps"), ("binary_sensor", "camera_ok"), ("sensor", "source_errors"),
                        ("sensor", "source_reconnects"), ("sensor", "frames_dropped"), ("sensor", "spool_depth")}
    for key, cfg in fed.items():
        assert cfg["expire_after"] == 23 == expire_after_s(7.5), key  # 3 x 7.5 s, whole seconds up
        assert cfg["entity_category"] == "diagnostic", key
    assert STATS_EXPIRY_INTERVALS == 3 and expire_after_s(30) == 90 and expire_after_s(0.1) == 1
    for key in ("last_plate",):
        assert "expire_after" not in msgs["sensor", key]  # the last plate stays until the next one
    counters = {k[1]: fed[k]["state_class"] for k in fed if k[0] == "sensor"}
    assert counters == {"fps": "measurement", "source_errors": "total_increasing",
                        "source_reconnects": "total_increasing", "frames_dropped": "total_increasing",
                        "spool_depth": "measurement"}
    for field in ("source_errors", "source_reconnects", "frames_dropped", "spool_depth", "fps"):
        assert msgs["sensor", field]["value_template"] == f"{{{{ value_json.{field} }}}}"
    ok = msgs["binary_sensor", "camera_ok"]
    # Off as soon as a stats message counts no frame captured since the one before.
    assert "value_json.fps_captured > 0" in ok["value_template"] and ok["device_class"] == "connectivity"


def test_the_crop_is_an_image_entity_never_an_attribute() -> None:
    assert ("image", "last_crop") not in by_key(configs(crop_image=False))
    image = by_key(configs(crop_image=True))["image", "last_crop"]
    assert image["content_type"] == "image/jpeg" and "json_attributes_topic" not in image
    event_entity = by_key(configs())["event", "plate"]
    assert event_entity["event_types"] == ["new", "end"]
    # Its attributes are the event's fields but the crop (plates carries it with tracking.crop: base64).
    assert "rejectattr('0', 'eq', 'crop')" in event_entity["value_template"]
    assert "event_type=value_json.type" in event_entity["value_template"]


@pytest.mark.parametrize("crop", ["none", "base64", "topic"])
def test_arrivals_carry_each_new_once_without_the_crop(crop: str) -> None:
    jpeg = None if crop == "none" else JPEG
    new = dict(event_messages(event("new", jpeg), crop, TOPICS))
    end = dict(event_messages(event("end", jpeg), crop, TOPICS))
    assert TOPICS.arrivals in new and TOPICS.arrivals not in end
    assert list(dict(event_messages(event("new", jpeg), crop, TOPICS)))[-1] == TOPICS.arrivals  # sent last
    arrival = json.loads(new[TOPICS.arrivals])
    plate = json.loads(new[TOPICS.plates])
    assert "crop" not in arrival and arrival == {k: v for k, v in plate.items() if k != "crop"}
    assert ("crop" in plate) == (crop == "base64")  # plates keeps its contract


@pytest.mark.parametrize("crop", ["none", "base64", "topic"])
def test_a_new_event_replaces_the_retained_last_plate_and_crop(crop: str) -> None:
    jpeg = None if crop == "none" else JPEG
    msgs = dict(retained_messages(event("new", jpeg), crop, TOPICS))
    assert set(msgs) == ({TOPICS.last_plate} | ({TOPICS.last_crop} if jpeg else set()))
    last = json.loads(msgs[TOPICS.last_plate])
    assert last["type"] == "new" and last["text"] == "AB12CDE" and "crop" not in last
    if jpeg:
        assert msgs[TOPICS.last_crop] == JPEG
    assert retained_messages(event("end", jpeg), crop, TOPICS) == []  # an end never replaces the last plate


def test_topics_only_grow() -> None:
    t = Topics.from_config(MqttConfig(device_id="gate", topic_prefix="site/lane2", discovery={"prefix": "ha"}))
    assert (t.plates, t.arrivals, t.last_plate, t.last_crop) == (
        "site/lane2/plates", "site/lane2/arrivals", "site/lane2/last_plate", "site/lane2/last_crop")
    assert t.discovery("fps") == "ha/sensor/edge_anpr_gate/fps/config"  # the sensor topics of before
    assert t.discovery("vehicle_arrived", "device_automation") == (
        "ha/device_automation/edge_anpr_gate/vehicle_arrived/config")


def test_the_daemon_discovers_its_camera_stats_interval_crop_and_groups() -> None:
    cfg = parse_config({"camera": {"id": "drive", "type": "file", "path": "clip.mp4"},
                        "tracking": {"crop": "base64"},
                        "mqtt": {"device_id": "gate", "topic_prefix": "anpr/gate", "stats_interval_s": 10}})
    msgs = by_key({t: json.loads(p) for t, p in daemon_discovery(cfg, "9.9", ["residents"])})
    assert msgs["sensor", "last_plate"]["name"] == "drive last plate"
    assert msgs["binary_sensor", "camera_ok"]["expire_after"] == 30
    assert ("image", "last_crop") in msgs and msgs["device_automation", "known_residents"]["subtype"] == "residents"
    assert msgs["device_automation", "vehicle_arrived"]["subtype"] == "drive"


def test_node_red_flow_subscribes_to_topics_the_daemon_publishes() -> None:
    flow = json.loads((ROOT / "deploy" / "node-red-gate.json").read_text())
    nodes = {n["id"]: n for n in flow}
    assert len(nodes) == len(flow), "duplicate node ids"
    subscribed = [n["topic"] for n in flow if n["type"] == "mqtt in"]
    published = {TOPICS.plates, TOPICS.arrivals, TOPICS.known("residents"), TOPICS.known("blocked"),
                 TOPICS.last_plate, TOPICS.stats, TOPICS.status}
    assert subscribed and set(subscribed) <= published, subscribed
    # Retained topics would open the gate again at every reconnect of Node-RED.
    assert TOPICS.last_plate not in subscribed and TOPICS.status not in subscribed
    for n in flow:
        for output in n.get("wires", []):
            assert all(target in nodes for target in output), (n["id"], output)
        if n["type"] in ("mqtt in", "mqtt out"):
            assert nodes[n["broker"]]["type"] == "mqtt-broker"
        if "z" in n:
            assert nodes[n["z"]]["type"] == "tab"
    # A resident's arrival opens the gate, a blocked plate's gives a message: each from its group's topic.
    assert sorted(subscribed) == [TOPICS.known("blocked"), TOPICS.known("residents")]
    for n in flow:
        if n["type"] == "mqtt in":
            code = nodes[n["wires"][0][0]]["func"]
            assert "seen.includes(ev.id)" in code  # at-least-once delivery: once per event id
            assert ("ev.confidence < 0.8" in code) == n["topic"].endswith("/residents")  # a doubtful read opens nothing


def _readme_blocks(kind: str) -> list[str]:
    """The ``kind`` code blocks of the README's Home Assistant section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Home Assistant\n"):]
    section = section[:section.index("\n### ", 1)]
    blocks = section.split(f"```{kind}\n")[1:]
    return [b[:b.index("```")] for b in blocks]


def test_readme_shows_the_shipped_node_red_flow() -> None:
    [block] = _readme_blocks("json")
    assert json.loads(block) == json.loads((ROOT / "deploy" / "node-red-gate.json").read_text())


def test_readme_automations_use_the_discovered_triggers() -> None:
    [block] = _readme_blocks("yaml")
    automations = yaml.safe_load(block)
    triggers = {(t["type"], t["subtype"]) for a in automations for t in a["triggers"]}
    discovered = {(c["type"], c["subtype"]) for c in by_key(configs(groups=["residents", "blocked"])).values()
                  if c.get("automation_type") == "trigger"}
    assert triggers == {(TRIGGER_KNOWN, "residents"), (TRIGGER_KNOWN, "blocked")} and triggers <= discovered
    assert all(t["trigger"] == "device" and t["domain"] == "mqtt" for a in automations for t in a["triggers"])


class _Client:
    """Stands for paho's client: records what is published."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | str, bool]] = []

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False) -> None:
        self.sent.append((topic, payload, retain))


def test_the_publisher_keeps_the_latest_retained_messages_for_every_connect(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite")
    p = Publisher(MqttConfig(device_id="gate", topic_prefix="anpr/gate"), spool, "1.0",
                  discovery=discovery_messages(TOPICS, "1.0", groups=["residents"]))
    p.client = fake = _Client()
    p.publish_retained([(TOPICS.last_plate, b"first")])
    p.publish_retained([(TOPICS.last_plate, b"second"), (TOPICS.last_crop, JPEG)])
    assert fake.sent == []  # not connected: kept, not sent
    accepted = SimpleNamespace(is_failure=False)
    p._on_connect(fake, None, None, accepted, None)
    retained = {t: m for t, m, r in fake.sent if r}
    assert retained[TOPICS.last_plate] == b"second" and retained[TOPICS.last_crop] == JPEG  # only the latest
    assert TOPICS.discovery("known_residents", "device_automation") in retained
    fake.sent.clear()
    p.publish_retained([(TOPICS.last_plate, b"third")])
    assert fake.sent == [(TOPICS.last_plate, b"third", True)]  # connected: at once
    fake.sent.clear()
    p.set_discovery(discovery_messages(TOPICS, "1.0", groups=["deliveries"]))  # the groups changed on SIGHUP
    sent = {t: m for t, m, _ in fake.sent}
    assert sent[TOPICS.discovery("known_residents", "device_automation")] == b""  # removed from Home Assistant
    assert TOPICS.discovery("known_deliveries", "device_automation") in sent
    spool.close()
