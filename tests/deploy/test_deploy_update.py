"""update.sh in test mode: a good model set switches in, a hash mismatch is refused before switching, a set
that verifies but fails the health check is rolled back; the health verb against a real mosquitto."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deploytools import ROOT, install, install_older_release, link, script, write_config
from harness import Broker


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory):
    b = Broker(tmp_path_factory.mktemp("broker")).start()
    yield b
    b.stop()


@pytest.fixture
def root(untrained_models: Path, broker: Broker, tmp_path: Path) -> Path:
    """A test-mode installation with a config that points at the loopback broker."""
    root = tmp_path / "root"
    proc = install(root, untrained_models)
    assert proc.returncode == 0, proc.stdout
    write_config(root, broker.port)
    return root


def model_set(untrained_models: Path, dest: Path, note: str) -> Path:
    """A copy of the untrained set made distinct (another content id) by a note in its metadata."""
    shutil.copytree(untrained_models, dest)
    for meta_path in dest.glob("*.json"):
        meta = json.loads(meta_path.read_text())
        meta["note"] = note
        meta_path.write_text(json.dumps(meta))
    return dest


def models_on_disk(root: Path) -> set[str]:
    return {p.name for p in (root / "opt/edge-anpr/models").iterdir()}


def test_update_switches_to_a_good_model_set(root: Path, untrained_models: Path, tmp_path: Path) -> None:
    old = link(root / "opt/edge-anpr/models/current")
    new_set = model_set(untrained_models, tmp_path / "v2", "v2")
    proc = script("update.sh", root, "--models", str(new_set))
    assert proc.returncode == 0, proc.stdout
    new = link(root / "opt/edge-anpr/models/current")
    assert new != old and (root / "opt/edge-anpr/models" / old).is_dir()  # the old set stays for a rollback
    assert "ok    models:" in proc.stdout and "health: 4 of 4 checks passed" in proc.stdout
    assert "would run: systemctl restart edge-anpr.service" in proc.stdout
    assert f"update done: release {link(root / 'opt/edge-anpr/current')}, model set {new}" in proc.stdout
    # The same set again: nothing to do.
    again = script("update.sh", root, "--models", str(new_set))
    assert again.returncode == 0 and "already current; nothing to do" in again.stdout


def test_update_refuses_a_hash_mismatch_before_switching(root: Path, untrained_models: Path,
                                                         tmp_path: Path) -> None:
    before, on_disk = link(root / "opt/edge-anpr/models/current"), models_on_disk(root)
    bad = model_set(untrained_models, tmp_path / "bad", "tampered")
    data = bytearray((bad / "reader.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights
    (bad / "reader.tflite").write_bytes(bytes(data))
    proc = script("update.sh", root, "--models", str(bad))
    assert proc.returncode == 1, proc.stdout
    assert "FAIL  " in proc.stdout and "reader.tflite: sha256" in proc.stdout
    assert "nothing was changed" in proc.stdout and "switching" not in proc.stdout
    assert link(root / "opt/edge-anpr/models/current") == before and models_on_disk(root) == on_disk


def test_update_rolls_back_when_the_health_check_fails(root: Path, untrained_models: Path, tmp_path: Path) -> None:
    before = link(root / "opt/edge-anpr/models/current")
    # Every hash matches, but the metadata promises an input the model does not have: it cannot load.
    broken = model_set(untrained_models, tmp_path / "broken", "broken")
    meta = json.loads((broken / "detector.json").read_text())
    meta["input"]["shape"] = [1, 8, 8, 3]
    (broken / "detector.json").write_text(json.dumps(meta))
    proc = script("update.sh", root, "--models", str(broken))
    assert proc.returncode == 3, proc.stdout
    out = proc.stdout
    assert "switching" in out and "FAIL  models:" in out and "input does not match its metadata" in out
    assert out.index("health check failed: rolling back") < out.index("rolled back:")
    assert "health: 4 of 4 checks passed" in out.split("rolling back")[1]  # the rollback was checked too
    assert link(root / "opt/edge-anpr/models/current") == before


def test_update_check_reports_an_unreachable_broker(root: Path, broker: Broker) -> None:
    assert script("update.sh", root, "--check").returncode == 0
    config = root / "etc/edge-anpr/config.yaml"
    config.write_text(config.read_text().replace(f"port: {broker.port}", "port: 1"))
    proc = script("update.sh", root, "--check")
    assert proc.returncode == 1, proc.stdout
    assert "FAIL  broker: 127.0.0.1:1: cannot connect" in proc.stdout
    assert "health: 3 of 4 checks passed; failed: broker" in proc.stdout


def test_the_deploy_readme_shows_what_the_check_prints(broker: Broker, tmp_path: Path) -> None:
    """deploy/README's example of `update.sh --check` on a fresh install (the shipped models): the same lines."""
    root = tmp_path / "root"
    assert install(root, ROOT / "edge" / "models").returncode == 0
    write_config(root, broker.port)
    proc = script("update.sh", root, "--check")
    assert proc.returncode == 0, proc.stdout
    readme = (ROOT / "deploy" / "README.md").read_text()
    shown = re.search(r"\n(ok +models: .*?\nhealth: .*?)\n", readme, re.S)
    assert shown, "deploy/README.md: no example of the health check's output"

    def checks(text: str) -> list[str]:  # each check's outcome and name, and the summary
        return re.findall(r"^((?:ok|FAIL) +\w+):|^(health: .*)$", text, re.M)

    assert checks(shown.group(1)) == checks(proc.stdout), proc.stdout
    plates = re.search(r"test frame read in \d+ ms \((\d+ plates?)\)", proc.stdout)
    assert plates and f"({plates.group(1)})" in shown.group(1), (plates, shown.group(1))


def test_health_checks_credentials(untrained_models: Path, tmp_path: Path) -> None:
    """Wrong password: the broker's refusal is named; the password comes from ANPR_MQTT_PASSWORD."""
    secured = Broker(tmp_path / "broker", users={"anpr": "right"}).start()
    try:
        assert install(tmp_path / "root", untrained_models).returncode == 0
        config = write_config(tmp_path / "root", secured.port, username="anpr")

        def health(password: str) -> subprocess.CompletedProcess[str]:
            env = {"PATH": "/usr/bin:/bin", "ANPR_MQTT_PASSWORD": password}
            return subprocess.run([sys.executable, "-m", "edge", "health", "--config", str(config)], cwd=ROOT,
                                  env=env, capture_output=True, text=True, timeout=120)

        ok, wrong = health("right"), health("wrong")
        assert ok.returncode == 0 and "accepted the connection as anpr" in ok.stdout, ok.stdout + ok.stderr
        assert wrong.returncode == 1 and "FAIL  broker:" in wrong.stdout and "refused" in wrong.stdout, wrong.stdout
    finally:
        secured.stop()


def test_health_with_an_invalid_config_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("camera: {type: v4l2}\nmqtt: {port: 70000}\n")
    proc = subprocess.run([sys.executable, "-m", "edge", "health", "--config", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "mqtt.port" in proc.stderr


def test_update_release_installs_beside_and_switches(untrained_models: Path, broker: Broker, tmp_path: Path) -> None:
    """An installation from an older checkout (a copy with one change) is switched to this checkout's release."""
    root, proc = install_older_release(tmp_path, untrained_models)
    assert proc.returncode == 0, proc.stdout
    write_config(root, broker.port)
    old = link(root / "opt/edge-anpr/current")
    proc = script("update.sh", root, "--release", "--venv-from", sys.prefix)
    assert proc.returncode == 0, proc.stdout
    new = link(root / "opt/edge-anpr/current")
    assert new != old and (root / "opt/edge-anpr/releases" / old).is_dir()
    assert (root / "opt/edge-anpr/releases" / new / "src/edge/__init__.py").read_text() == \
        (ROOT / "edge/__init__.py").read_text()
    assert "health: 4 of 4 checks passed" in proc.stdout
