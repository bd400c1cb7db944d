"""Known plates and the relay in the real daemon, against a real mosquitto.

The clip's plates are AB12CDE, ZG4821KT and MXE7315 (``clipmodels.py``), in
that order; the relay drives gpiozero's mock pin factory
(``GPIOZERO_PIN_FACTORY=mock``), since there is no GPIO here.
"""
from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import yaml

from harness import PREFIX, Broker, DaemonProc, Subscriber, base_config, wait_for

MOCK_GPIO = {"GPIOZERO_PIN_FACTORY": "mock"}


def messages(sub: Subscriber, suffix: str) -> list[dict]:
    return [json.loads(m.payload) for m in sub.on(suffix)]


def first_by_type_and_id(events: list[dict]) -> dict[tuple[str, str], dict]:
    """Each (type, id) once (delivery is at-least-once)."""
    out: dict[tuple[str, str], dict] = {}
    for e in events:
        out.setdefault((e["type"], e["id"]), e)
    return out


def test_known_plates_carry_known_go_to_their_group_topic_and_pulse_the_relay(
        clip: Path, truth: dict, broker: Broker, subscriber: Subscriber, tmp_path: Path) -> None:
    # ZG482IKT: the clip's ZG4821KT with I for 1, a look-alike (0.5). MXE7315 is 1.0 from both visitors.
    (tmp_path / "plates.csv").write_text("plate,name,group\nZG482IKT,Parcel van,deliveries\n"
                                         "MXE7316,Visitor 6,visitors\nMXE7317,Visitor 7,visitors\n")
    cfg = base_config(clip, broker.port, tmp_path,
                      known_plates={"plates": [{"plate": "AB12 CDE", "name": "Alice", "group": "residents"}],
                                    "files": ["plates.csv"], "groups": {"residents": {"max_distance": 0}}},
                      relay={"enabled": True, "pin": 17, "groups": ["residents"], "pulse_s": 0.2,
                             "min_confidence": 0.5})
    d = DaemonProc(cfg, tmp_path, env=MOCK_GPIO)
    assert d.wait(120) == 0, d.log()
    wait_for(lambda: "offline" in subscriber.statuses(), 10, "status offline")
    assert truth["plates"] == ["AB12CDE", "ZG4821KT", "MXE7315"]

    events = first_by_type_and_id(subscriber.events())
    by_text = {(e["type"], e["text"]): e for e in events.values()}
    assert len(events) == 6, events
    alice = {"name": "Alice", "group": "residents", "plate": "AB12CDE", "distance": 0.0}
    van = {"name": "Parcel van", "group": "deliveries", "plate": "ZG482IKT", "distance": 0.5}
    for kind in ("new", "end"):
        assert by_text[kind, "AB12CDE"]["known"] == alice
        assert by_text[kind, "ZG4821KT"]["known"] == van
        assert "known" not in by_text[kind, "MXE7315"]  # ambiguous: no known plate
    assert "event new MXE7315 id=" in d.log() and re.search(
        r"ambiguous between known plates MXE7316 \(Visitor 6, visitors\) at 1, MXE7317 \(Visitor 7, visitors\) at 1",
        d.log())

    # Each group's topic: the new events of its plates, once each, nothing else.
    residents = first_by_type_and_id(messages(subscriber, "known/residents"))
    deliveries = first_by_type_and_id(messages(subscriber, "known/deliveries"))
    assert list(residents) == [("new", by_text["new", "AB12CDE"]["id"])]
    assert list(deliveries) == [("new", by_text["new", "ZG4821KT"]["id"])]
    assert next(iter(deliveries.values()))["known"] == van
    assert not subscriber.on("known/visitors")
    assert {m.topic for m in subscriber.messages if "/known/" in m.topic} == {f"{PREFIX}/known/residents",
                                                                                f"{PREFIX}/known/deliveries"}

    # The relay: one decision per new event, pulse only for the resident.
    decisions = {m["text"]: m for m in messages(subscriber, "relay")}
    assert set(decisions) == set(truth["plates"])
    assert decisions["AB12CDE"]["pulse"] is True and decisions["AB12CDE"]["reason"] == "known"
    assert decisions["AB12CDE"]["known"] == alice and decisions["AB12CDE"]["pulse_s"] == 0.2
    assert decisions["AB12CDE"]["event_id"] == by_text["new", "AB12CDE"]["id"]
    assert isinstance(decisions["AB12CDE"]["latency_ms"], float)
    assert (decisions["ZG4821KT"]["pulse"], decisions["ZG4821KT"]["reason"]) == (False, "group_not_chosen")
    assert (decisions["MXE7315"]["pulse"], decisions["MXE7315"]["reason"]) == (False, "ambiguous")
    assert len(re.findall(r"relay: pulse 0.2 s on GPIO17 for AB12CDE", d.log())) == 1
    assert "relay on GPIO17 (active high)" in d.log()


def test_sighup_reloads_the_lists_and_a_bad_file_keeps_them(clip: Path, broker: Broker, subscriber: Subscriber,
                                                             tmp_path: Path) -> None:
    plates = tmp_path / "plates.yaml"
    plates.write_text("- {plate: ZG4821KT, name: Parcel van, group: deliveries}\n")
    # The clip in real time, looping; every pass gives new events.
    cfg = base_config(clip, broker.port, tmp_path, camera={"realtime": True, "loop": True},
                      tracking={"reappear_window_s": 0}, known_plates={"files": [str(plates)]})
    d = DaemonProc(cfg, tmp_path)
    try:
        d.wait_log(r"event new AB12CDE id=", 60)
        plates.write_text("- {plate: ZG4821KT, name: Parcel van, group: deliveries}\n"
                          "- {plate: AB12CDE, name: Alice, group: residents}\n")
        d.signal(signal.SIGHUP)
        d.wait_log(r"known plates reloaded: 2 plates \(1 before\) in groups deliveries, residents", 20)
        plates.write_text("- {plate: AB12CDE, name: Alice}\n")  # no group
        d.signal(signal.SIGHUP)
        d.wait_log(r"known plates not reloaded, the 2 loaded before stay in use: .*plates.yaml: \[0\] "
                   r"\(plate AB12CDE\): group: Field required", 20)
        # Plates written in the configuration file itself are read again too.
        written = yaml.safe_load(d.config_path.read_text())
        written["known_plates"]["plates"] = [{"plate": "MXE7315", "name": "Bob", "group": "visitors"}]
        d.config_path.write_text(yaml.safe_dump(written))
        plates.write_text("- {plate: ZG4821KT, name: Parcel van, group: deliveries}\n"
                          "- {plate: AB12CDE, name: Alice, group: residents}\n")
        d.signal(signal.SIGHUP)
        d.wait_log(r"known plates reloaded: 3 plates \(2 before\) in groups deliveries, residents, visitors", 20)
        d.wait_log(r"event new AB12CDE id=", 60, count=2)  # the next pass
        d.signal(signal.SIGTERM)
        assert d.wait(60) == 0, d.log()
    finally:
        d.kill()
    log = d.log()
    assert log.index("known plates not reloaded") < [m.start() for m in re.finditer("event new AB12CDE", log)][1]
    wait_for(lambda: "offline" in subscriber.statuses(), 10, "status offline")
    alice = [e for e in first_by_type_and_id(subscriber.events()).values()
             if e["type"] == "new" and e["text"] == "AB12CDE"]
    assert "known" not in alice[0]  # before the reload
    assert alice[1]["known"] == {"name": "Alice", "group": "residents", "plate": "AB12CDE", "distance": 0.0}
    assert all(e["known"]["group"] == "deliveries" for e in subscriber.events() if e["text"] == "ZG4821KT")
    assert [json.loads(m.payload)["id"] for m in subscriber.on("known/residents")][:1] == [alice[1]["id"]]
    assert "Traceback" not in log
