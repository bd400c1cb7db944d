"""The daemon's configuration against hostile or careless files: YAML bombs, duplicate keys, secrets in error
messages, numbers given for text, keys of another camera type, and the shipped configs as they are."""
from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge.config import (
    MAX_CONFIG_BYTES,
    ConfigError,
    FileCameraConfig,
    PiCameraConfig,
    RtspCameraConfig,
    V4l2CameraConfig,
    load_config,
    parse_config,
    redact_url,
    resolved_yaml,
)
from edge.sources import FileSource, StreamSource, open_source
from edge.yamlsafe import MAX_YAML_DEPTH, _Loader

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "deploy").glob("*.yaml"))
FILE_CAMERA = "camera: {type: file, path: clip.mp4}\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str) -> str:
    """The ConfigError load_config raises for ``text``."""
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    return str(err.value)


def laughs(levels: int, width: int = 10) -> str:
    """A document whose aliases expand to ``width ** levels`` strings (the billion laughs at 9 levels)."""
    lines = ['l0: &l0 "lol"']
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n" + FILE_CAMERA


def edge_cli(*args: str, env: dict[str, str] | None = None, memory_gib: int = 0) -> subprocess.CompletedProcess:
    """``python -m edge ARGS``; with ``memory_gib``, the process may not map more than that."""
    def limit() -> None:
        if memory_gib:
            resource.setrlimit(resource.RLIMIT_AS, (memory_gib << 30, memory_gib << 30))

    return subprocess.run([sys.executable, "-m", "edge", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env if env is not None else dict(os.environ), preexec_fn=limit)


# ------------------------------------------------------------------------------------------------ YAML loading

def test_aliases_are_refused_before_they_are_expanded(tmp_path: Path) -> None:
    # 10**5 strings: small enough to expand, so an accepting loader would pass this document.
    message = load_error(tmp_path, laughs(5))
    assert re.search(r"config\.yaml: line 2: YAML aliases \(\*l0\) are not accepted", message), message


def test_the_billion_laughs_is_refused_by_check_config_and_run(tmp_path: Path) -> None:
    """Expanded, the document is a billion strings: the process would run out of its 4 GiB or time out."""
    path = write(tmp_path, laughs(9))
    for verb in (["check-config", str(path)], ["run", "--config", str(path)]):
        proc = edge_cli(*verb, memory_gib=4)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "YAML aliases (*l0) are not accepted" in proc.stderr, proc.stderr[-2000:]


def test_merge_keys_through_aliases_are_refused_too(tmp_path: Path) -> None:
    message = load_error(tmp_path, "base: &b {port: 1883}\nmqtt:\n  <<: *b\n" + FILE_CAMERA)
    assert "line 3: YAML aliases (*b)" in message, message


def test_nesting_deeper_than_the_limit_is_refused_without_a_traceback(tmp_path: Path) -> None:
    deep = "[" * 50_000 + "]" * 50_000
    message = load_error(tmp_path, FILE_CAMERA + f"detection: {deep}\n")
    assert f"line 2: nested deeper than {MAX_YAML_DEPTH} levels" in message, message
    proc = edge_cli("check-config", str(write(tmp_path, FILE_CAMERA + f"detection: {deep}\n")))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_the_safe_loader_keeps_pyyamls_own_document_check() -> None:
    """The duplicate-key check has a name of its own: PyYAML's ``check_node`` (is there another document?), which
    ``check_data`` and multi-document reading call, still answers on the loader."""
    loader = _Loader("a: 1\n---\nb: 2\n", set())
    try:
        docs = []
        while loader.check_data():
            docs.append(loader.get_data())
    finally:
        loader.dispose()
    assert docs == [{"a": 1}, {"b": 2}]


@pytest.mark.parametrize("text, key, line, first", [
    ("mqtt:\n  host: a\n  port: 1883\n  port: 1884\n" + FILE_CAMERA, "mqtt.port", 4, 3),
    (FILE_CAMERA + "mqtt: {}\n" + "camera: {type: v4l2}\n", "camera", 3, 1),
    (FILE_CAMERA + "mqtt:\n  discovery:\n    prefix: a\n    prefix: b\n", "mqtt.discovery.prefix", 5, 4),
    (FILE_CAMERA + 'mqtt: {"password": a, password: b}\n', "mqtt.password", 2, 2),
])
def test_a_duplicate_key_is_an_error_naming_the_key_and_its_lines(tmp_path: Path, text: str, key: str,
                                                                   line: int, first: int) -> None:
    message = load_error(tmp_path, text)
    assert message.endswith(f"config.yaml: {key}: duplicate key at line {line} (first at line {first})"), message


def test_the_same_key_in_different_sections_is_no_duplicate(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, FILE_CAMERA + "mqtt: {reconnect_min_s: 2}\n"
                                                    "spool: {path: s.sqlite}\n"))
    assert cfg.mqtt.reconnect_min_s == 2 and cfg.spool.path == tmp_path / "s.sqlite"


@pytest.mark.parametrize("data, problem", [
    (b"camera: {type: file, path: \xff\xfe}\n", "not UTF-8 text (byte 27)"),
    (b"#" * (MAX_CONFIG_BYTES + 1), "larger than 1024 KiB"),
    (FILE_CAMERA.encode() + b"mqtt: {port: " + b"9" * 5000 + b"}\n", "not valid YAML: Exceeds the limit"),
    (FILE_CAMERA.encode() + b"mqtt: {port: 1}\n---\nmqtt: {}\n", "expected a single document"),
])
def test_unreadable_files_are_config_errors(tmp_path: Path, data: bytes, problem: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_config(path)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + FILE_CAMERA.encode())
    assert load_config(path).camera.path == str(tmp_path / "clip.mp4")


# ------------------------------------------------------------------------------------ secrets and text values

def test_an_unknown_key_beside_a_secret_is_named_but_its_value_not_shown(tmp_path: Path) -> None:
    message = load_error(tmp_path, FILE_CAMERA + "mqtt:\n  username: anpr\n  passwd: Typo-Secret-777\n"
                                                 "mqt:\n  pw: Other-Secret-888\n"
                                                 "spool:\n  max_event: 5\n")
    assert "mqtt.passwd: Extra inputs are not permitted" in message and "mqt: Extra inputs" in message, message
    assert "Typo-Secret-777" not in message and "Other-Secret-888" not in message, message
    assert "spool.max_event: Extra inputs are not permitted (got 5)" in message, message  # no secret there


@pytest.mark.parametrize("raw, secret", [
    ({"camera": {"type": "file", "path": "x"}, "mqtt": {"password": ["Listed-Secret"]}}, "Listed-Secret"),
    ({"camera": {"type": "file", "path": "x", "pasword": "Camera-Secret"}}, "Camera-Secret"),
    ({"camera": {"type": "rtsp", "url": "rtsp://u:Url-Secret@h/s", "rtsp_transport": "quic"}}, "Url-Secret"),
    ({"camera": "rtsp://u:Url@Secret@h/s"}, "Secret"),
    ({"camera": {"type": "file", "path": "x"}, "tracking": {"min_iou": "ftp://u:Other-Secret@h"}}, "Other-Secret"),
    ({"camera": {"type": "file", "path": "x"}, "spool": {"path": {"token": "Token-Secret"}}}, "Token-Secret"),
])
def test_errors_do_not_show_secrets(raw: dict, secret: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert secret not in str(err.value), str(err.value)


def test_a_yaml_syntax_error_does_not_quote_the_line(tmp_path: Path) -> None:
    message = load_error(tmp_path, FILE_CAMERA + 'mqtt:\n  password: "Unclosed-Secret\n')
    assert "Unclosed-Secret" not in message and "line 3, column 13" in message, message


def test_numbers_given_to_text_keys_are_the_text_written(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "camera: {id: 007, type: v4l2, device: 0}\n"
                                      "mqtt:\n  username: yes\n  password: 0123\n  device_id: 0042\n"
                                      "  host: 10.0\n"))
    assert cfg.mqtt.password.get_secret_value() == "0123" and cfg.mqtt.username == "yes"
    assert (cfg.mqtt.device_id, cfg.mqtt.host, cfg.camera.id, cfg.camera.device) == ("0042", "10.0", "007", "0")
    cfg = load_config(write(tmp_path, FILE_CAMERA + "mqtt: {password: 123456, port: 1884}\n"))
    assert cfg.mqtt.password.get_secret_value() == "123456" and cfg.mqtt.port == 1884


def test_an_all_digit_password_from_code_is_a_string_too() -> None:
    cfg = parse_config({"camera": {"type": "file", "path": "x"}, "mqtt": {"password": 123456}})
    assert cfg.mqtt.password.get_secret_value() == "123456"


@pytest.mark.parametrize("url, redacted", [
    ("rtsp://u:p@ss@host:554/s", "rtsp://u:********@host:554/s"),
    ("rtsp://u:a@b@c@host/s?x=1", "rtsp://u:********@host/s?x=1"),
    ("rtsp://u:pw@host/s?a=b@c", "rtsp://u:********@host/s?a=b@c"),
    ("rtsp://host:554/s?a=b@c", "rtsp://host:554/s?a=b@c"),
    ("rtsp://user@host/s", "rtsp://user@host/s"),
    ("rtsp://viewer:@host/s", "rtsp://viewer:********@host/s"),
])
def test_redact_url_masks_the_whole_password(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_a_stream_is_logged_by_its_redacted_url() -> None:
    cfg = parse_config({"camera": {"type": "rtsp", "url": "rtsp://u:p@ss@host/s"}})
    assert StreamSource(cfg.camera).name == "rtsp://u:********@host/s"


@pytest.mark.parametrize("env, want", [
    ({}, "rtsp://v:@h/s"),
    ({"CAM_PW": ""}, "rtsp://v:@h/s"),
    ({"CAM_PW": "pw"}, "rtsp://v:pw@h/s"),
])
def test_a_placeholder_default_is_used_when_the_variable_is_unset_or_empty(
        monkeypatch: pytest.MonkeyPatch, env: dict, want: str) -> None:
    monkeypatch.delenv("CAM_PW", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert parse_config({"camera": {"type": "rtsp", "url": "rtsp://v:${CAM_PW:-}@h/s"}}).camera.url == want
    assert parse_config({"camera": {"type": "file", "path": "/d/${CAM_PW:-none}"}}).camera.path == \
        f"/d/{env.get('CAM_PW') or 'none'}"


# ------------------------------------------------------------------------------------ one model per camera type

@pytest.mark.parametrize("camera, key", [
    ({"type": "v4l2", "rtsp_transport": "udp"}, "rtsp_transport"),
    ({"type": "v4l2", "open_timeout_s": 3}, "open_timeout_s"),
    ({"type": "v4l2", "loop": True}, "loop"),
    ({"type": "v4l2", "url": "rtsp://h/s"}, "url"),
    ({"type": "picamera", "reconnect_min_s": 2}, "reconnect_min_s"),
    ({"type": "picamera", "device": "/dev/video0"}, "device"),
    ({"type": "picamera", "path": "x"}, "path"),
    ({"type": "file", "path": "x", "url": "rtsp://h/s"}, "url"),
    ({"type": "file", "path": "x", "width": 640}, "width"),
    ({"type": "folder", "path": "x", "device": "0"}, "device"),
    ({"type": "folder", "path": "x", "read_timeout_s": 2}, "read_timeout_s"),
    ({"type": "rtsp", "url": "rtsp://h/s", "fps": 10}, "fps"),
    ({"type": "rtsp", "url": "rtsp://h/s", "realtime": False}, "realtime"),
])
def test_a_key_of_another_camera_type_is_an_error(camera: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"camera": camera})
    assert str(err.value).startswith(f"camera.{key}: not a key of a '{camera['type']}' camera (its keys: id, type"), \
        str(err.value)


@pytest.mark.parametrize("camera, key, problem", [
    ({"type": "webcam"}, "type", "must be one of file, folder, v4l2, rtsp, picamera (got 'webcam')"),
    ({"device": "0"}, "type", "Field required (one of file, folder, v4l2, rtsp, picamera)"),
    ({"type": "folder"}, "path", "Field required"),
    ({"type": "rtsp", "url": "http://h/s"}, "url", "an rtsp camera needs an rtsp:// or rtsps:// URL"),
    ({"type": "rtsp", "url": "rtsp://h/s", "path": "rtsp://h/t"}, "path", "the former name of url"),
    ({"type": "picamera", "height": 480}, "width", "width and height go together"),
    ({"type": "v4l2", "reconnect_min_s": 5, "reconnect_max_s": 1}, "reconnect_max_s", "must not be less"),
])
def test_camera_errors_name_the_key(camera: dict, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"camera": camera})
    assert str(err.value).startswith(f"camera.{key}: {problem}"), str(err.value)


def test_each_type_gets_its_own_model_and_source(tmp_path: Path) -> None:
    (tmp_path / "clip.mp4").write_bytes(b"")
    cams = {t: parse_config({"camera": c}, tmp_path).camera for t, c in {
        "file": {"type": "file", "path": "clip.mp4", "loop": True},
        "v4l2": {"type": "v4l2", "device": "/dev/video9", "width": 640},
        "rtsp": {"type": "rtsp", "url": "rtsps://h/s", "rtsp_transport": "udp"},
        "picamera": {"type": "picamera", "width": 640, "height": 480},
    }.items()}
    assert isinstance(cams["file"], FileCameraConfig) and isinstance(cams["v4l2"], V4l2CameraConfig)
    assert isinstance(cams["rtsp"], RtspCameraConfig) and isinstance(cams["picamera"], PiCameraConfig)
    assert isinstance(open_source(cams["file"]), FileSource)
    v4l2, rtsp = open_source(cams["v4l2"]), open_source(cams["rtsp"])
    assert isinstance(v4l2, StreamSource) and v4l2.name == "/dev/video9"
    assert isinstance(rtsp, StreamSource) and rtsp.name == "rtsps://h/s"
    assert parse_config({"camera": {"type": "v4l2"}}).camera.device == "0"


@pytest.mark.parametrize("camera", [
    {"type": "file", "path": "/clips/a.mp4", "fps": 12.5, "loop": True},
    {"type": "folder", "path": "/frames", "realtime": False},
    {"type": "v4l2", "device": "1", "width": 640, "height": 480},
    {"type": "rtsp", "url": "rtsp://u:p@ss@h/s", "rtsp_transport": "udp"},
    {"type": "picamera", "fps": 15},
], ids=lambda c: c["type"])
def test_check_config_output_is_a_valid_config_of_the_same_camera(tmp_path: Path, camera: dict) -> None:
    cfg = parse_config({"camera": camera})
    again = load_config(write(tmp_path, resolved_yaml(cfg))).camera
    assert again.model_dump() == cfg.camera.model_dump(exclude={"url"}) | (
        {"url": "rtsp://u:********@h/s"} if camera["type"] == "rtsp" else {})
    assert list(yaml.safe_load(resolved_yaml(cfg))["camera"])[:2] == ["id", "type"]


def test_path_is_still_read_as_the_url_or_device_it_once_was() -> None:
    rtsp = parse_config({"camera": {"type": "rtsp", "path": "rtsp://u:pw@h/s"}}).camera
    v4l2 = parse_config({"camera": {"type": "v4l2", "path": "/dev/video1"}}).camera
    assert rtsp.url == "rtsp://u:pw@h/s" and v4l2.device == "/dev/video1"
    assert parse_config({"camera": {"type": "v4l2", "path": ""}}).camera.device == "0"


# ------------------------------------------------------------------------------------------ the shipped configs

@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_passes_check_config_as_shipped(path: Path) -> None:
    """No environment variable set: a config copied as it is must validate."""
    env = {k: v for k, v in os.environ.items() if k not in ("CAMERA_PASSWORD", "MQTT_PASSWORD", "ANPR_MQTT_PASSWORD")}
    proc = edge_cli("check-config", str(path), env=env)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["camera"]["type"] in ("rtsp", "picamera"), proc.stdout


def test_there_are_shipped_configs() -> None:
    assert {p.name for p in SHIPPED} >= {"config.example.yaml", "config.device.yaml"}


def readme_configs() -> list[tuple[str, str]]:
    """Every ```yaml block of the READMEs that is a whole configuration (has a top-level camera key)."""
    found = []
    for readme in (ROOT / "README.md", ROOT / "deploy" / "README.md"):
        for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", readme.read_text(), re.S)):
            if re.search(r"^camera:", block, re.M):
                found.append((f"{readme.relative_to(ROOT)}#{i}", block))
    return found


@pytest.mark.parametrize("name, text", readme_configs(), ids=[n for n, _ in readme_configs()])
def test_readme_configs_are_valid(tmp_path: Path, name: str, text: str) -> None:
    load_config(write(tmp_path, text))
