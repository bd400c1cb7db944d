"""Configuration: validation names the key, env overrides, check-config and run exit codes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge.config import PASSWORD_ENV, ConfigError, load_config, parse_config
from harness import ROOT

EXAMPLE = ROOT / "deploy" / "config.example.yaml"


def edge_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "edge", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=os.environ | (env or {}))


def test_example_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMERA_PASSWORD", "secret")
    cfg = load_config(EXAMPLE)
    assert cfg.camera.type == "rtsp" and cfg.camera.url == "rtsp://viewer:secret@192.168.1.20:554/stream1"
    assert cfg.detection.motion.enabled and cfg.mqtt.prefix == "anpr/gate-pi"
    assert cfg.spool.path == Path("/var/lib/edge-anpr/spool.sqlite")


def test_device_config_keeps_within_the_detector_budget_and_is_what_the_benchmark_measures() -> None:
    from edge.search import SearchSettings
    from tools.bench import DEVICE_CONFIG, daemon_mode

    det = load_config(ROOT / "deploy" / "config.device.yaml").detection
    # The device ships the search defaults, and the benchmark's daemon mode is that file's search.
    assert det.search_settings() == SearchSettings()
    assert DEVICE_CONFIG == ROOT / "deploy" / "config.device.yaml"
    assert daemon_mode(DEVICE_CONFIG)[:2] == (det.search_settings(), det.threads)
    from edge.model import read_metadata

    macs = read_metadata(ROOT / "edge" / "models" / "detector.tflite").macs
    assert 0 < det.max_detector_runs * macs <= 0.6e9  # the detector's budget per frame


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    cfg = parse_config({"camera": {"type": "file", "path": "clip.mp4"}}, tmp_path)
    assert cfg.camera.path == str(tmp_path / "clip.mp4") and cfg.spool.path == tmp_path / "spool.sqlite"
    assert cfg.mqtt.port == 1883 and cfg.mqtt.prefix == f"anpr/{cfg.mqtt.device_id}"
    assert cfg.tracking.crop == "none" and cfg.detection.frame_stride == 1


@pytest.mark.parametrize("raw, key", [
    ({"camera": {"type": "file", "path": "x", "fsp": 3}}, "camera.fsp"),
    ({"camera": {"type": "file", "path": "x"}, "mqtt": {"port": 0}}, "mqtt.port"),
    ({"camera": {"type": "webcam", "path": "x"}}, "camera.type"),
    ({"camera": {"type": "rtsp", "url": "http://x"}}, "camera.url"),
    ({"camera": {"type": "rtsp"}}, "camera.url"),
    ({"camera": {"type": "v4l2", "rtsp_transport": "udp"}}, "camera.rtsp_transport"),
    ({"camera": {"type": "picamera", "loop": True}}, "camera.loop"),
    ({"camera": {"path": "x"}}, "camera.type"),
    ({"camera": {"type": "file"}}, "camera.path"),
    ({"camera": {"type": "file", "path": "x"}, "tracking": {"confirm_frames": 0}}, "tracking.confirm_frames"),
    ({"camera": {"type": "file", "path": "x"}, "mqtt": {"tls": {"ca_certs": "/nonexistent.pem"}}},
     "mqtt.tls.ca_certs"),
    ({"camera": {"type": "file", "path": "x"}, "spool": {"max_events": -1}}, "spool.max_events"),
    ({"mqtt": {}}, "camera"),
    ({"camera": {"type": "file", "path": "x"}, "detection": {"tiles_per_frame": 0, "max_detector_runs": 3}},
     "detection.max_detector_runs"),
    ({"camera": {"type": "file", "path": "x"}, "detection": {"tiles_per_frame": 3, "max_detector_runs": 3}},
     "detection.max_detector_runs"),
])
def test_errors_name_the_key(raw: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert str(err.value).startswith(f"{key}:"), str(err.value)


def test_password_from_placeholder_and_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = {"camera": {"type": "file", "path": "x"}, "mqtt": {"username": "u", "password": "${MQTT_PW}"}}
    with pytest.raises(ConfigError, match=r"^mqtt.password: environment variable MQTT_PW is not set"):
        parse_config(raw)
    monkeypatch.setenv("MQTT_PW", "from-placeholder")
    assert parse_config(raw).mqtt.password.get_secret_value() == "from-placeholder"
    monkeypatch.setenv(PASSWORD_ENV, "from-env")
    assert parse_config(raw).mqtt.password.get_secret_value() == "from-env"


def test_check_config_prints_resolved_and_masks_secrets(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"camera": {"type": "rtsp", "url": "rtsp://u:p@ss@host/s"},
                                    "mqtt": {"username": "u", "password": "hunter2"}}))
    proc = edge_cli("check-config", str(path))
    assert proc.returncode == 0, proc.stderr
    out = yaml.safe_load(proc.stdout)
    assert out["tracking"]["confirm_frames"] == 2 and out["mqtt"]["password"] == "********"
    assert out["camera"]["url"] == "rtsp://u:********@host/s"
    assert "hunter2" not in proc.stdout and "p@ss" not in proc.stdout and "ss@" not in proc.stdout


def test_invalid_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("camera:\n  type: file\n  path: x.avi\nmqtt:\n  port: 99999\n  hots: broker\n")
    for verb in (["run", "--config", str(path)], ["check-config", str(path)]):
        proc = edge_cli(*verb)
        assert proc.returncode == 2, proc.stderr
        assert "mqtt.port" in proc.stderr and "mqtt.hots" in proc.stderr, proc.stderr
    path.write_text("camera: [unclosed\n")
    proc = edge_cli("run", "--config", str(path))
    assert proc.returncode == 2 and "not valid YAML" in proc.stderr
    proc = edge_cli("run", "--config", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 2 and "cannot read" in proc.stderr


def test_missing_source_and_models_exit_codes(tmp_path: Path, untrained_models: Path) -> None:
    path = tmp_path / "c.yaml"
    base = {"camera": {"type": "file", "path": str(tmp_path / "none.avi")}, "mqtt": {"port": 1},
            "spool": {"path": str(tmp_path / "s.sqlite")}, "detection": {"models": str(tmp_path / "nomodels")}}
    path.write_text(yaml.safe_dump(base))
    proc = edge_cli("run", "--config", str(path))
    assert proc.returncode == 3 and "detection.models" in proc.stdout, proc.stdout
    base["detection"]["models"] = str(untrained_models)
    path.write_text(yaml.safe_dump(base))
    proc = edge_cli("run", "--config", str(path))
    assert proc.returncode == 4 and "camera.path: video file not found" in proc.stdout, proc.stdout
    base["camera"] = {"type": "picamera"}
    path.write_text(yaml.safe_dump(base))
    proc = edge_cli("run", "--config", str(path))
    assert proc.returncode == 4 and "picamera2" in proc.stdout, proc.stdout


def test_a_bad_country_file_is_named_by_check_config(tmp_path: Path) -> None:
    """detection.countries is checked with the configuration: the error names the key, the file and its key."""
    (tmp_path / "countries").mkdir()
    (tmp_path / "countries" / "zz.yaml").write_text("code: ZZ\nname: Zedland\nweight: 1\nformats: [{name: zz}]\n")
    with pytest.raises(ConfigError, match=r"detection.countries: .*zz.yaml: formats.0.groups: Field required"):
        parse_config({"camera": {"type": "file", "path": "clip.mp4"}, "detection": {"countries": "countries"}},
                     tmp_path)
    (tmp_path / "countries" / "zz.yaml").write_text(
        "code: ZZ\nname: Zedland\nweight: 1\nformats: [{name: zz, groups: [LL, NDD]}]\n")
    cfg = parse_config({"camera": {"type": "file", "path": "clip.mp4"}, "detection": {"countries": "countries"}},
                       tmp_path)
    assert cfg.detection.countries == tmp_path / "countries"
