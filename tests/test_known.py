"""Known plates (edge.known): look-alike distances, matching, ambiguity, validity, groups, files and reload."""
from __future__ import annotations

import datetime as dt
import itertools
import logging
import math
import random
from pathlib import Path

import pytest

from edge.config import ConfigError, KnownPlatesConfig, parse_config
from edge.known import (
    LOOKALIKES,
    KnownPlates,
    KnownPlatesError,
    distance,
    group_names,
    parse_window,
    read_plate_file,
    reload,
)
from edge.plates import edits_within, similarity
from edge.tracker import Event

UTC = dt.UTC
#: Monday 2 June 2025, 08:00 UTC.
MONDAY_8 = dt.datetime(2025, 6, 2, 8, 0, tzinfo=UTC).timestamp()


def known(plates: list[dict], **section: object) -> KnownPlates:
    """Lists from a known_plates section, local time UTC."""
    return KnownPlates.from_config(KnownPlatesConfig.model_validate({"plates": plates, **section}), tz=UTC)


def at(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# distances

@pytest.mark.parametrize("pair", LOOKALIKES)
def test_each_look_alike_costs_half_an_edit_either_way(pair: str) -> None:
    a, b = pair[0], pair[1]
    assert distance(f"AB{a}12", f"AB{b}12") == 0.5 and distance(f"AB{b}12", f"AB{a}12") == 0.5


@pytest.mark.parametrize("a, b, expected", [
    ("AB12CD0", "AB12CDO", 0.5),   # one look-alike (0/O)
    ("8B12CD0", "BB12CDO", 1.0),   # two look-alikes (8/B, 0/O)
    ("AB12CDE", "AB12CDF", 1.0),   # one ordinary replacement
    ("AB12CDE", "AB12CD", 1.0),    # one missing character
    ("AB12CDE", "XAB12CDE", 1.0),  # one extra character
    ("AB12CDE", "AB12CDE", 0.0),
    ("1", "T", 1.0),               # I/1 and I/T are look-alikes, 1/T are not
    ("S5Z2G6", "5S2Z6G", 3.0),     # six look-alikes
    ("AB12CDE", "", 7.0),
])
def test_weighted_distance_figures(a: str, b: str, expected: float) -> None:
    assert distance(a, b) == expected and distance(b, a) == expected


def test_without_look_alikes_it_is_the_edit_distance() -> None:
    plain = "ACEFHJKMNPRUVWXY3479"  # no character of a look-alike pair
    assert not set(plain) & set("".join(LOOKALIKES))
    rng = random.Random(0)
    for _ in range(300):
        a = "".join(rng.choices(plain, k=rng.randint(1, 8)))
        b = "".join(rng.choices(plain, k=rng.randint(1, 8)))
        levenshtein = round((1 - similarity(a, b)) * max(len(a), len(b)))
        assert distance(a, b) == levenshtein, (a, b)


def test_edits_within_finds_the_closest_run_of_the_longer_text() -> None:
    assert edits_within("489T", "489T051") == 0 and edits_within("T051", "489T051") == 0
    assert edits_within("JD21", "325J521") == 1  # J521 with one character read wrong
    assert edits_within("T4Y5", "812T475") == 1 and edits_within("XY88", "325J521") == 4
    assert edits_within("", "AB") == 0 and edits_within("AB", "") == 2
    assert edits_within("ABC", "ABC") == 0 and edits_within("ABCD", "ABC") == 1


def test_distance_above_the_limit_is_infinite() -> None:
    assert distance("AAAA", "BBBB", limit=1) == math.inf
    assert distance("AB12CDE", "AB12", limit=2) == math.inf  # three shorter: not even computed
    assert distance("AB12CDE", "AB12CDF", limit=1) == 1.0 and distance("AB12CD0", "AB12CDO", limit=0.5) == 0.5


# matching

def test_a_one_character_look_alike_matches_at_distance_1() -> None:
    lists = known([{"plate": "AB12CDO", "name": "Alice", "group": "residents"}], max_distance=1)
    found = lists.lookup("AB12CD0", MONDAY_8)
    assert found.outcome == "known" and found.match is not None
    assert found.match.as_json() == {"name": "Alice", "group": "residents", "plate": "AB12CDO", "distance": 0.5}
    assert lists.lookup("A812CD0", MONDAY_8).match.distance == 1.0  # two look-alikes: 1.0, still within 1
    assert lists.lookup("AB12CDX", MONDAY_8).match.distance == 1.0  # one ordinary replacement
    assert lists.lookup("XB12CDX", MONDAY_8).outcome == "unknown"  # two: 2.0


def test_case_and_separators_do_not_count_and_the_name_defaults_to_the_plate() -> None:
    lists = known([{"plate": "ab-12 cde", "group": "residents"}])
    found = lists.lookup("AB12CDE", MONDAY_8)
    assert found.match.distance == 0.0 and found.match.as_json()["name"] == "ab-12 cde"
    assert found.match.plate.plate == "AB12CDE"


def test_each_group_has_its_own_distance() -> None:
    lists = known([{"plate": "AB12CDO", "group": "residents"}, {"plate": "XY34ZZZ", "group": "deliveries"},
                   {"plate": "QQ11RRR", "group": "staff"}],
                  max_distance=1, groups={"residents": {"max_distance": 0}, "staff": {"max_distance": 0.5}})
    assert lists.lookup("AB12CDO", MONDAY_8).match.distance == 0.0
    assert lists.lookup("AB12CD0", MONDAY_8).outcome == "unknown"  # a look-alike is 0.5, more than 0
    assert lists.lookup("XY34ZZX", MONDAY_8).match.plate.group == "deliveries"  # the default, 1
    assert lists.lookup("QQI1RRR", MONDAY_8).match.distance == 0.5  # one look-alike within 0.5
    assert lists.lookup("QQIIRRR", MONDAY_8).outcome == "unknown"  # two: 1.0
    assert (lists.distance_of("residents"), lists.distance_of("deliveries"), lists.distance_of("other")) == (0, 1, 1)


# ambiguity

def test_two_known_plates_at_equal_distance_never_match() -> None:
    lists = known([{"plate": "AB12CDE", "name": "Alice", "group": "residents"},
                   {"plate": "AB12CDF", "name": "Bob", "group": "residents"}], ambiguity_margin=0.1)
    found = lists.lookup("AB12CDX", MONDAY_8)  # 1.0 from each
    assert found.match is None and found.outcome == "ambiguous"
    assert sorted(m.plate.name for m in found.rivals) == ["Alice", "Bob"]
    assert {m.distance for m in found.rivals} == {1.0}
    exact = lists.lookup("AB12CDE", MONDAY_8)  # 0 from Alice, 1 from Bob: a whole edit apart
    assert exact.match.plate.name == "Alice" and not exact.ambiguous


def test_the_margin_decides_how_much_farther_the_runner_up_must_be() -> None:
    plates = [{"plate": "AB12CD0", "name": "zero", "group": "residents"},
              {"plate": "AB12CDQ", "name": "queue", "group": "residents"}]  # 0/Q look alike: 0.5 apart
    # The default margin 1: an exact read of one is still ambiguous, since the reader confuses 0 and Q.
    assert known(plates).lookup("AB12CD0", MONDAY_8).outcome == "ambiguous"
    # Margin 0.5: the runner-up 0.5 farther is enough.
    assert known(plates, ambiguity_margin=0.5).lookup("AB12CD0", MONDAY_8).match.plate.name == "zero"
    # 0.5 from each (O is a look-alike of both): ambiguous whatever the margin.
    assert known(plates, ambiguity_margin=0.5).lookup("AB12CDO", MONDAY_8).outcome == "ambiguous"


def test_a_plate_outside_its_own_distance_still_makes_a_read_ambiguous() -> None:
    lists = known([{"plate": "AB12CDE", "group": "residents"}, {"plate": "AB12CDF", "group": "deliveries"}],
                  groups={"residents": {"max_distance": 0}})
    # 1.0 from both: the delivery is within its distance, the resident not; the read may still be the resident.
    assert lists.lookup("AB12CDX", MONDAY_8).outcome == "ambiguous"
    assert lists.lookup("AB12CDF", MONDAY_8).match.plate.group == "deliveries"
    assert lists.lookup("AB12CDE", MONDAY_8).match.plate.group == "residents"


def test_one_vehicle_listed_twice_is_not_ambiguous_but_one_plate_in_two_groups_is(
        caplog: pytest.LogCaptureFixture) -> None:
    twice = known([{"plate": "AB12CDE", "name": "Alice", "group": "residents", "windows": ["mon-fri 07:00-18:00"]},
                   {"plate": "AB12CDE", "name": "Alice", "group": "residents", "windows": ["sat 09:00-12:00"]}])
    assert twice.lookup("AB12CDE", MONDAY_8).match.plate.name == "Alice"
    assert "listed as" not in caplog.text
    with caplog.at_level(logging.WARNING, "edge.known"):
        both = known([{"plate": "AB12CDE", "group": "residents"}, {"plate": "AB-12-CDE", "group": "blocked"}])
    assert "known plate AB12CDE is listed as AB12CDE (residents, configuration) and as AB-12-CDE (blocked" \
        in caplog.text
    assert both.lookup("AB12CDE", MONDAY_8).outcome == "ambiguous"


def _event(kind: str, text: str) -> Event:
    return Event(kind, "gate-1", "gate", text, text, None, None, 0.9, MONDAY_8 - 1, MONDAY_8, 3, (0, 0, 10, 5), 0.9)


def test_new_events_that_match_or_are_ambiguous_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    lists = known([{"plate": "AB12CDE", "group": "residents"}, {"plate": "AB12CDF", "group": "residents"}])
    with caplog.at_level(logging.INFO, "edge.known"):
        assert lists.lookup_event(_event("new", "AB12CDX")).ambiguous
        assert lists.lookup_event(_event("end", "AB12CDX")).ambiguous
        assert lists.lookup_event(_event("new", "AB12CDE")).match
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["event new AB12CDX id=gate-1: ambiguous between known plates AB12CDE (AB12CDE, residents) "
                     "at 1, AB12CDF (AB12CDF, residents) at 1: no known plate matched",
                     "event new AB12CDE id=gate-1: known plate AB12CDE (AB12CDE, residents) at 0"]


# validity

def test_validity_times() -> None:
    lists = known([{"plate": "AB12CDE", "group": "contractors", "valid_from": "2025-06-02T09:00:00+02:00",
                    "valid_until": "2025-06-30"}])
    assert lists.lookup("AB12CDE", at("2025-06-02T06:59:59")).outcome == "unknown"  # 09:00 +02:00 is 07:00 UTC
    assert lists.lookup("AB12CDE", at("2025-06-02T07:00:00")).outcome == "known"
    assert lists.lookup("AB12CDE", at("2025-06-30T23:59:59")).outcome == "known"  # a date: through that day
    assert lists.lookup("AB12CDE", at("2025-07-01T00:00:00")).outcome == "unknown"


def test_an_entry_out_of_its_validity_counts_for_nothing_not_even_ambiguity() -> None:
    lists = known([{"plate": "AB12CDE", "group": "residents"},
                   {"plate": "AB12CDF", "group": "residents", "valid_until": "2025-01-31"}])
    assert lists.lookup("AB12CDX", at("2025-01-15T12:00:00")).outcome == "ambiguous"
    assert lists.lookup("AB12CDX", at("2025-02-01T12:00:00")).match.plate.plate == "AB12CDE"


def test_weekly_windows_in_local_time() -> None:
    lists = known([{"plate": "DEL123", "group": "deliveries", "windows": ["mon-fri 07:00-18:00", "sat 08:00-12:00"]},
                   {"plate": "NIGHT1", "group": "cleaners", "windows": ["22:00-06:00"]},
                   {"plate": "FRI001", "group": "weekend", "windows": ["fri 22:00-02:00"]}])

    def known_at(plate: str, when: str) -> bool:
        return lists.lookup(plate, at(when)).outcome == "known"

    assert known_at("DEL123", "2025-06-02T07:00:00") and known_at("DEL123", "2025-06-06T17:59:00")  # Mon, Fri
    assert not known_at("DEL123", "2025-06-02T18:00:00") and not known_at("DEL123", "2025-06-02T06:59:00")
    assert known_at("DEL123", "2025-06-07T09:00:00") and not known_at("DEL123", "2025-06-08T09:00:00")  # Sat, Sun
    assert known_at("NIGHT1", "2025-06-02T23:30:00") and known_at("NIGHT1", "2025-06-03T05:59:00")
    assert not known_at("NIGHT1", "2025-06-03T12:00:00")
    assert known_at("FRI001", "2025-06-06T23:00:00") and known_at("FRI001", "2025-06-07T01:00:00")  # Fri night
    assert not known_at("FRI001", "2025-06-07T23:00:00") and not known_at("FRI001", "2025-06-06T01:00:00")
    # Local time is the zone given (the system's by default): 08:00 UTC is 10:00 in UTC+2, 06:00 in UTC-2.
    cfg = KnownPlatesConfig.model_validate({"plates": [{"plate": "X1", "group": "g", "windows": ["09:00-10:00"]}]})
    assert KnownPlates.from_config(cfg, tz=dt.timezone(dt.timedelta(hours=-2))).lookup("X1", MONDAY_8).match is None
    assert KnownPlates.from_config(cfg, tz=dt.timezone(dt.timedelta(hours=1))).lookup("X1", MONDAY_8).match


@pytest.mark.parametrize("text, days, start, end", [
    ("mon-fri 07:00-18:00", {0, 1, 2, 3, 4}, 420, 1080),
    ("Sat, Sun 9:30-12:00", {5, 6}, 570, 720),
    ("fri-mon 00:00-24:00", {4, 5, 6, 0}, 0, 1440),
    ("22:00-06:00", set(range(7)), 1320, 360),
])
def test_window_syntax(text: str, days: set[int], start: int, end: int) -> None:
    w = parse_window(text)
    assert (set(w.days), w.start, w.end) == (days, start, end)


@pytest.mark.parametrize("text", ["weekdays 07:00-18:00", "mon-fri 7-18", "mon 25:00-26:00", "mon 07:60-08:00",
                                  "mon 08:00-08:00", "mon 24:00-01:00", ""])
def test_bad_windows_say_why_without_breaking_the_key_in_config_errors(text: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_window(text)
    assert ": " not in str(err.value) and repr(text) in str(err.value)


# groups

def test_groups_are_those_declared_and_those_plates_name(tmp_path: Path) -> None:
    (tmp_path / "more.csv").write_text("plate,group\nZZ99ZZZ,deliveries\n")
    cfg = KnownPlatesConfig.model_validate({"plates": [{"plate": "AB12CDE", "group": "residents"}],
                                            "files": [tmp_path / "more.csv"],
                                            "groups": {"blocked": {}, "residents": {"max_distance": 0}}})
    assert group_names(cfg) == ("blocked", "deliveries", "residents")
    assert KnownPlates().groups == () and KnownPlates().lookup("AB12CDE", MONDAY_8).outcome == "unknown"


# files

def test_yaml_and_csv_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("- {plate: AB12CDE, name: Alice, group: residents}\n"
                                     "- {plate: '0123', group: residents, valid_from: 2025-01-01}\n")
    (tmp_path / "b.yml").write_text("plates:\n  - plate: XY 34 ZZZ\n    group: deliveries\n"
                                    "    windows: [mon-fri 07:00-18:00]\n")
    (tmp_path / "c.csv").write_text("# vans\nPlate, Name, Group, Windows\n\nDEL-123,Post van,deliveries,"
                                    "mon-fri 07:00-18:00; sat 08:00-12:00\n\"QQ 11\",\"Smith, J.\",residents,\n")
    entries = {p: read_plate_file(tmp_path / p) for p in ("a.yaml", "b.yml", "c.csv")}
    assert [e.plate for _, e in entries["a.yaml"]] == ["AB12CDE", "0123"]
    assert entries["a.yaml"][1][1].valid_from == dt.date(2025, 1, 1)
    assert [where for where, _ in entries["c.csv"]] == [f"{tmp_path / 'c.csv'}:4", f"{tmp_path / 'c.csv'}:5"]
    van, smith = (e for _, e in entries["c.csv"])
    assert van.windows == ["mon-fri 07:00-18:00", "sat 08:00-12:00"] and smith.name == "Smith, J."
    cfg = KnownPlatesConfig.model_validate({"files": [tmp_path / p for p in entries]})
    lists = KnownPlates.from_config(cfg, tz=UTC)
    assert len(lists) == 5 and lists.lookup("DEL123", MONDAY_8).match.plate.name == "Post van"
    assert lists.lookup("XY34ZZZ", MONDAY_8).match.plate.group == "deliveries"


@pytest.mark.parametrize("name, text, message", [
    ("r.csv", "plate,group\nAB12CDE,residents\nXY34ZZZ,bad/group\n", r"r.csv: line 3 \(plate XY34ZZZ\): group: "),
    ("r.csv", "plate,colour\nAB12CDE,red\n", r"r.csv: line 1: the header row .* \(unknown: colour\)"),
    ("r.csv", "plate,group\nAB12CDE,residents,extra\n", r"r.csv: line 2: 3 cells, the header names 2 columns"),
    ("r.csv", "plate,group,windows\nAB12CDE,residents,weekdays 7-18\n", r"r.csv: line 2 \(plate AB12CDE\): windows"),
    ("r.yaml", "- {plate: AB12CDE, group: residents}\n- {plate: XY34ZZZ}\n",
     r"r.yaml: \[1\] \(plate XY34ZZZ\): group: Field required"),
    ("r.yaml", "- {plate: 0123, group: residents}\n", r"r.yaml: \[0\]: plate: write the plate in quotes"),
    ("r.yaml", "- {plate: ÄB12, group: residents}\n", r"r.yaml: \[0\] \(plate ÄB12\): plate: letters A-Z"),
    ("r.yaml", "plates: {plate: AB12CDE}\n", r"r.yaml: a plate file holds a list of plates"),
    ("r.yaml", "- {plate: AB12CDE, group: r}\n- {plate: AB12CDE, group: r, group: s}\n",
     r"r.yaml: .*duplicate key at line 2"),
    ("r.yaml", "- [unclosed\n", r"r.yaml: not valid YAML"),
    ("r.txt", "AB12CDE\n", r"r.txt: a plate file is .yaml, .yml or .csv"),
])
def test_file_errors_name_the_file_and_the_line_or_entry(tmp_path: Path, name: str, text: str, message: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(KnownPlatesError, match=message):
        read_plate_file(tmp_path / name)


def test_the_configuration_checks_the_files_relative_to_itself(tmp_path: Path) -> None:
    base = {"camera": {"type": "file", "path": "clip.mp4"}}
    with pytest.raises(ConfigError, match=r"^known_plates.files: .*missing.csv: cannot read"):
        parse_config(base | {"known_plates": {"files": ["missing.csv"]}}, tmp_path)
    (tmp_path / "plates.csv").write_text("plate,group\nAB12CDE,residents\n")
    cfg = parse_config(base | {"known_plates": {"files": ["plates.csv"]},
                               "relay": {"enabled": True, "pin": 17, "groups": ["residents"]}}, tmp_path)
    assert cfg.known_plates.files == [tmp_path / "plates.csv"] and cfg.relay.pin == "17"
    with pytest.raises(ConfigError, match=r"^relay.groups: no known-plate group resident \(groups: residents\)"):
        parse_config(base | {"known_plates": {"files": ["plates.csv"]},
                             "relay": {"enabled": True, "pin": 17, "groups": ["resident"]}}, tmp_path)


@pytest.mark.parametrize("section, key", [
    ({"known_plates": {"plates": [{"plate": 123, "group": "r"}]}}, "known_plates.plates.0.plate"),
    ({"known_plates": {"plates": [{"plate": "AB12", "group": "a/b"}]}}, "known_plates.plates.0.group"),
    ({"known_plates": {"plates": [{"plate": "AB12"}]}}, "known_plates.plates.0.group"),
    ({"known_plates": {"plates": [{"plate": "AB12", "group": "r", "windows": ["mon-xyz 07:00-08:00"]}]}},
     "known_plates.plates.0.windows"),
    ({"known_plates": {"plates": [{"plate": "AB12", "group": "r", "valid_from": "2025-02-01",
                                   "valid_until": "2025-01-31"}]}}, "known_plates.plates.0.valid_until"),
    ({"known_plates": {"max_distance": -1}}, "known_plates.max_distance"),
    ({"known_plates": {"ambiguity_margin": 0}}, "known_plates.ambiguity_margin"),
    ({"known_plates": {"groups": {"residents": {"max_distnce": 0}}}}, "known_plates.groups.residents.max_distnce"),
    ({"relay": {"enabled": True, "groups": ["residents"]}}, "relay.pin"),
    ({"relay": {"enabled": True, "pin": 17}}, "relay.groups"),
    ({"relay": {"groups": ["residents", "Blocked"]}}, "relay.groups"),
    ({"relay": {"pulse_s": 0}}, "relay.pulse_s"),
])
def test_configuration_errors_name_the_key(section: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"camera": {"type": "file", "path": "x"}} | section)
    assert str(err.value).startswith(f"{key}:"), str(err.value)


# reload

def test_reload_takes_the_new_lists_and_keeps_the_old_ones_when_a_file_is_bad(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "plates.yaml"
    path.write_text("- {plate: AB12CDE, group: residents}\n")
    cfg = KnownPlatesConfig.model_validate({"files": [path], "plates": [{"plate": "ZZ1", "group": "staff"}]})
    first = KnownPlates.from_config(cfg)
    path.write_text("- {plate: AB12CDE, group: residents}\n- {plate: XY34ZZZ, group: deliveries}\n")
    with caplog.at_level(logging.INFO, "edge.known"):
        second = reload(first, cfg)
    assert len(second) == 3 and second.groups == ("deliveries", "residents", "staff")
    assert "known plates reloaded: 3 plates (2 before) in groups deliveries, residents, staff" in caplog.text
    path.write_text("- {plate: AB12CDE, group: residents}\n- {plate: XY34ZZZ}\n")
    assert reload(second, cfg) is second
    assert f"known plates not reloaded, the 3 loaded before stay in use: {path}: [1] (plate XY34ZZZ): group" \
        in caplog.text
    path.unlink()
    assert reload(second, cfg) is second and f"{path}: cannot read" in caplog.text


def test_lookup_finds_what_comparing_every_plate_finds() -> None:
    """The character-count bound that spares most plates the full distance never drops a near one."""
    rng = random.Random(1)
    alphabet = "O0DQI1TB8S5AC"  # mostly look-alikes, so that near plates are many
    plates = sorted({"".join(rng.choices(alphabet, k=rng.randint(4, 6))) for _ in range(150)})
    lists = known([{"plate": p, "group": "g"} for p in plates], max_distance=1.5)
    for _ in range(200):
        text = "".join(rng.choices(alphabet, k=rng.randint(3, 7)))
        d = {p: distance(text, p) for p in plates}
        found = lists.lookup(text, MONDAY_8)
        best = min(d.values())
        expected = ("unknown" if best > 1.5 else
                    "ambiguous" if sum(v < best + 1 for v in d.values()) > 1 else "known")
        assert found.outcome == expected, (text, found)
        if found.match:
            assert found.match.distance == best and d[found.match.plate.plate] == best
        if found.rivals:
            assert {m.plate.plate for m in found.rivals} == {p for p, v in d.items() if v < best + 1}


def test_matching_every_pair_of_a_list_is_consistent() -> None:
    """A list whose plates are all at least margin + distance apart matches each of its own plates to itself."""
    plates = ["AB12CDE", "XY34ZZZ", "KM77PQR", "HN20WXY", "DL90RST"]
    assert all(distance(a, b) >= 2 for a, b in itertools.combinations(plates, 2))
    lists = known([{"plate": p, "group": "g"} for p in plates])
    assert [lists.lookup(p, MONDAY_8).match.plate.plate for p in plates] == plates
