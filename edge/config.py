"""The daemon's configuration: one YAML file validated by one pydantic model tree.

Every option has a description, bounds where it has any, and a default where
one makes sense; an unknown key is an error (``extra="forbid"``), so a typo
never passes silently. The camera has one model per source type, chosen by
``camera.type``, so a key of another type is an error too. Errors name the key
(``mqtt.port``) and the problem, and never print the value of a secret.
Secrets need not sit in the file: any string may be an environment placeholder
``${NAME}`` (``${NAME:-default}`` when it may be unset), and
``ANPR_MQTT_PASSWORD`` overrides ``mqtt.password``.

The file is read by a YAML loader that refuses aliases (a few lines of them
expand to billions of nodes), nesting deeper than any configuration needs and
duplicate keys, and that reads a plain scalar given to a text key as the text
written (``password: 0123`` is the string ``0123``, not the number 83).
"""
from __future__ import annotations

import datetime as dt
import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from edge.formats import FormatError, load_countries
from edge.search import SearchSettings
from edge.yamlsafe import MAX_YAML_BYTES, YamlError, load_yaml

#: Environment variable that overrides ``mqtt.password``.
PASSWORD_ENV = "ANPR_MQTT_PASSWORD"
#: ``${NAME}``, or ``${NAME:-default}``: the default when NAME is unset or empty (as in a shell).
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
#: Largest configuration file read (a real one is a few kilobytes).
MAX_CONFIG_BYTES = MAX_YAML_BYTES
#: Keys whose values are never printed in an error.
_SECRET_KEY = re.compile(r"pass|pwd|secret|token|credential|private|auth|api_?key|psk", re.IGNORECASE)
#: Sections that hold secrets (the broker password, a camera URL with its password): the values of unknown keys
#: in them are never printed, since an unknown key there is most likely a misspelt secret.
_SECRET_SECTIONS = ("mqtt", "camera")


class ConfigError(ValueError):
    """The configuration file cannot be used; the message names the key and the problem."""


class StrictModel(BaseModel):
    """Base of every section: unknown keys are errors; a number given to a text key is its text."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


class _Camera(StrictModel):
    """Keys every camera type takes."""

    id: str = Field("cam0", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$",
                    description="Camera id, sent in every event (letters, digits, _ . -).")
    type: str = Field(description="file: a video file; folder: a folder of images; v4l2: a USB/V4L2 camera; "
                      "rtsp: an RTSP stream; picamera: the Raspberry Pi camera (needs picamera2). Each type takes "
                      "only its own keys.")
    queue_size: int = Field(2, ge=1, le=100, description="Frames waiting for inference; when full, the oldest "
                            "is dropped and counted (live sources).")


class _ReopenedCamera(_Camera):
    """A source that is reopened with back-off when it drops or vanishes."""

    reconnect_min_s: float = Field(1.0, gt=0, le=600,
                                   description="First wait before reopening a dropped or vanished source.")
    reconnect_max_s: float = Field(30.0, gt=0, le=3600,
                                   description="Longest wait between reopen attempts (the wait doubles up to it).")

    @model_validator(mode="after")
    def _check_backoff(self) -> _ReopenedCamera:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s: must not be less than reconnect_min_s")
        return self


class _ClipCamera(_ReopenedCamera):
    """A recording: a video file or a folder of images."""

    path: str = Field(min_length=1, description="The file or folder; relative to the config file.")
    loop: bool = Field(False, description="Start again at the end instead of stopping the daemon.")
    realtime: bool = Field(True, description="Deliver frames at their rate like a live camera, dropping frames "
                           "when inference is slower; false: as fast as inference takes them, dropping none "
                           "(tests, batch runs).")


def _former_path(data: Any, key: str) -> Any:
    """``path`` was the one key of every camera type: read it as ``key`` so that older files stay valid."""
    if isinstance(data, dict) and "path" in data:
        data = dict(data)
        value = data.pop("path")
        if key in data:
            raise ValueError(f"path: the former name of {key}; give {key} only")
        if value not in ("", None):
            data[key] = value
    return data


class FileCameraConfig(_ClipCamera):
    """A video file (anything OpenCV's FFmpeg backend decodes)."""

    type: Literal["file"]
    fps: float | None = Field(None, gt=0, le=120, description="Overrides the clip's own frame rate.")


class FolderCameraConfig(_ClipCamera):
    """A folder of images, read in file-name order."""

    type: Literal["folder"]
    fps: float | None = Field(None, gt=0, le=120, description="Images per second (default 10).")


class V4l2CameraConfig(_ReopenedCamera):
    """A USB or other V4L2 camera."""

    type: Literal["v4l2"]
    device: str = Field("0", min_length=1, description="The device: a path (/dev/video0) or an index (0).")
    fps: float | None = Field(None, gt=0, le=120, description="Frame rate asked of the camera.")
    width: int | None = Field(None, ge=16, le=8192, description="Capture width in pixels.")
    height: int | None = Field(None, ge=16, le=8192, description="Capture height in pixels.")

    @model_validator(mode="before")
    @classmethod
    def _path(cls, data: Any) -> Any:
        return _former_path(data, "device")


class RtspCameraConfig(_ReopenedCamera):
    """An RTSP stream (an IP camera)."""

    type: Literal["rtsp"]
    url: str = Field(min_length=1, description="The stream: rtsp://user:pass@host/stream (or rtsps://).")
    rtsp_transport: Literal["tcp", "udp"] = Field("tcp", description="RTP over the RTSP TCP connection, or "
                                                  "over UDP.")
    open_timeout_s: float = Field(10.0, gt=0, le=300, description="Give up opening after this long.")
    read_timeout_s: float = Field(5.0, gt=0, le=300, description="A stream silent this long has dropped.")

    @model_validator(mode="before")
    @classmethod
    def _path(cls, data: Any) -> Any:
        return _former_path(data, "url")

    @model_validator(mode="after")
    def _check_url(self) -> RtspCameraConfig:
        if not self.url.startswith(("rtsp://", "rtsps://")):
            raise ValueError("url: an rtsp camera needs an rtsp:// or rtsps:// URL")
        return self


class PiCameraConfig(_Camera):
    """The Raspberry Pi camera through picamera2; it is never reopened."""

    type: Literal["picamera"]
    fps: float | None = Field(None, gt=0, le=120, description="Frame rate asked of the camera.")
    width: int | None = Field(None, ge=16, le=8192, description="Capture width in pixels (with height).")
    height: int | None = Field(None, ge=16, le=8192, description="Capture height in pixels (with width).")

    @model_validator(mode="after")
    def _check_size(self) -> PiCameraConfig:
        # picamera2 takes a whole size: one side alone would be ignored.
        if (self.width is None) != (self.height is None):
            raise ValueError("width: width and height go together")
        return self


_CAMERAS: tuple[type[_Camera], ...] = (FileCameraConfig, FolderCameraConfig, V4l2CameraConfig, RtspCameraConfig,
                                       PiCameraConfig)
#: The camera model of each ``camera.type``.
CAMERA_TYPES: dict[str, type[_Camera]] = {get_args(m.model_fields["type"].annotation)[0]: m for m in _CAMERAS}
#: One model per source type, chosen by ``type``: a key of another type is an error.
CameraConfig = Annotated[
    FileCameraConfig | FolderCameraConfig | V4l2CameraConfig | RtspCameraConfig | PiCameraConfig,
    Field(discriminator="type"),
]


class MotionConfig(StrictModel):
    enabled: bool = Field(False, description="Run inference only on frames that differ from the last one "
                          "inferred (an empty road then costs little CPU).")
    width: int = Field(160, ge=16, le=1280, description="Width of the grayscale thumbnail compared.")
    pixel_delta: int = Field(20, ge=1, le=255, description="Grey-level change that counts a pixel as changed.")
    min_changed: float = Field(0.003, gt=0, le=1, description="Fraction of changed pixels that counts as motion.")
    max_skip_s: float = Field(2.0, gt=0, le=3600, description="Infer at least this often even without motion "
                              "(a car that stops stays tracked; slow light changes are followed).")


class DetectionConfig(SearchSettings):
    """The detection section: the model set and its runtime, and the search settings (``edge.search``) with
    their one set of defaults."""

    # A section is edited while the configuration loads (relative paths); the search it describes is frozen.
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, frozen=False)

    models: Path | None = Field(None, description="Directory with detector.tflite, reader.tflite and their .json "
                                "metadata; default: the models shipped in edge/models.")
    accelerator: Literal["cpu", "edgetpu"] = Field("cpu", description="cpu: the int8 models on the CPU; edgetpu: "
                                                   "their NAME_edgetpu.tflite variants on a Coral Edge TPU through "
                                                   "libedgetpu.so.1 (the CPU models, after one warning, when the "
                                                   "library or a compiled variant is missing).")
    countries: Path | None = Field(None, description="Folder of your own country files (*.yaml, see countries/ and "
                                   "the README): their formats are added to those the reader carries, and a file "
                                   "replaces the reader's country of the same code.")
    threads: int = Field(2, ge=1, le=16, description="TFLite interpreter threads.")
    frame_stride: int = Field(1, ge=1, le=100, description="Infer every Nth captured frame.")
    min_confidence: float = Field(0.0, ge=0, le=1, description="Reads below this reader confidence are ignored.")
    motion: MotionConfig = Field(default_factory=MotionConfig, description="Motion gate.")


class TrackingConfig(StrictModel):
    min_iou: float = Field(0.05, ge=0, le=1, description="Box overlap with a track's last box that associates "
                           "a read with it.")
    min_text_similarity: float = Field(0.7, ge=0, le=1, description="Text similarity (1 - edit distance / "
                                       "length) that associates a read with a track even without overlap.")
    split_confidence: float = Field(0.8, ge=0, le=1, description="A read at least this confident whose text is "
                                    "far from a confident track's voted text is another vehicle, even where the "
                                    "boxes overlap (the next car in a queue).")
    split_similarity: float = Field(0.5, ge=0, le=1, description="Text similarity to the track's voted text "
                                    "below which such a confident read is another vehicle (0.5: more than half "
                                    "the characters differ).")
    confirm_frames: int = Field(2, ge=1, le=100, description="Reads that must equal the voted text before "
                                "the 'new' event is sent.")
    confirm_confidence: float = Field(0.6, ge=0, le=1, description="Voted confidence needed before the 'new' "
                                      "event is sent (length share x per-position vote share x mean read "
                                      "confidence; see edge.tracker).")
    lost_after_s: float = Field(1.5, gt=0, le=600, description="A track not seen for this long ends ('end').")
    max_track_s: float = Field(300.0, gt=0, le=86400, description="A track older than this ends (a parked car); "
                               "while it stays in view it is covered by reappear_window_s.")
    reappear_window_s: float = Field(60.0, ge=0, le=86400, description="The same plate seen again within this "
                                     "long after its track ended is not a new event.")
    crop: Literal["none", "base64", "topic"] = Field("none", description="JPEG crop of the plate: none; base64 "
                                                     "in the event's 'crop' field; or raw JPEG bytes on "
                                                     "<prefix>/crops/<event id>.")
    crop_quality: int = Field(85, ge=10, le=100, description="JPEG quality of the crop.")


class TlsConfig(StrictModel):
    ca_certs: Path | None = Field(None, description="CA bundle that signs the broker's certificate "
                                  "(default: the system's).")
    certfile: Path | None = Field(None, description="Client certificate (mutual TLS).")
    keyfile: Path | None = Field(None, description="Client key (mutual TLS).")
    insecure: bool = Field(False, description="Skip the broker hostname check (testing only).")

    @model_validator(mode="after")
    def _check(self) -> TlsConfig:
        for key in ("ca_certs", "certfile", "keyfile"):
            path = getattr(self, key)
            if path is not None and not path.is_file():
                raise ValueError(f"{key}: file not found: {path}")
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("certfile: certfile and keyfile go together")
        return self


class DiscoveryConfig(StrictModel):
    enabled: bool = Field(True, description="Publish Home Assistant MQTT discovery: last plate, plate events, "
                          "crop image, camera health, and device triggers per arrival and per known-plate group.")
    prefix: str = Field("homeassistant", min_length=1, description="Home Assistant's discovery prefix.")


class MqttConfig(StrictModel):
    host: str = Field("localhost", min_length=1, description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 is usual with TLS).")
    device_id: str = Field(default_factory=lambda: re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()),
                           pattern=r"^[A-Za-z0-9_-]+$", description="This device's id: in the default topic "
                           "prefix, the client id and Home Assistant ids (default: the host name).")
    topic_prefix: str | None = Field(None, min_length=1, description="Prefix of every topic (default "
                                     "anpr/<device_id>); no trailing '/', no wildcards.")
    username: str | None = Field(None, description="Broker user name.")
    password: SecretStr | None = Field(None, description=f"Broker password; the environment variable "
                                       f"{PASSWORD_ENV} overrides it.")
    tls: TlsConfig | None = Field(None, description="Connect with TLS (omit for plain TCP).")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive.")
    reconnect_min_s: float = Field(1.0, gt=0, le=600, description="First wait before reconnecting to the broker.")
    reconnect_max_s: float = Field(30.0, gt=0, le=3600, description="Longest wait between reconnect attempts.")
    max_inflight: int = Field(10, ge=1, le=1000, description="Events sent and not yet acknowledged at a time.")
    stats_interval_s: float = Field(30.0, gt=0, le=86400, description="Period of the stats message.")
    drain_timeout_s: float = Field(10.0, ge=0, le=86400, description="On stop, wait this long for the broker to "
                                   "acknowledge the spooled events; the rest stay spooled for the next start.")
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig, description="Home Assistant discovery.")

    @model_validator(mode="after")
    def _check(self) -> MqttConfig:
        if self.topic_prefix is not None and (self.topic_prefix.endswith("/") or set("#+") & set(self.topic_prefix)):
            raise ValueError("topic_prefix: no trailing '/' and no '+' or '#'")
        return self

    @property
    def prefix(self) -> str:
        return self.topic_prefix or f"anpr/{self.device_id}"


class SpoolConfig(StrictModel):
    path: Path = Field(Path("spool.sqlite"), description="SQLite file of events not yet acknowledged by the "
                       "broker; relative paths are relative to the config file.")
    max_events: int = Field(10000, ge=1, le=10_000_000, description="Most events held; when full, the oldest is "
                            "dropped (logged, counted in stats as spool_dropped).")
    max_megabytes: float = Field(100.0, gt=0, le=100_000, description="Most payload bytes held (crops count); "
                                 "same policy as max_events.")


class LoggingConfig(StrictModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level (to stdout).")
    timestamps: bool = Field(True, description="Prefix log lines with the time (journald adds its own: set "
                             "false under systemd).")


class KnownPlateConfig(StrictModel):
    """One known plate, in ``known_plates.plates`` or a plate file (matching: ``edge.known``)."""

    plate: str = Field(min_length=1, max_length=32, description="The plate: letters A-Z and digits; case, and "
                       "spaces, '-' and '.' between them, do not count.")
    group: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$", description="Its group "
                       "(letters, digits, _ -), e.g. residents, deliveries, blocked: each group has its own topic "
                       "<prefix>/known/<group> and distance; the relay pulses for the groups it names.")
    name: str | None = Field(None, max_length=200, description="Who or what it is, in the event's 'known' field "
                             "(default: the plate as written).")
    valid_from: dt.datetime | dt.date | None = Field(None, description="Known from this ISO 8601 date or time "
                                                     "(without a zone: local time); default: always.")
    valid_until: dt.datetime | dt.date | None = Field(None, description="Known until this ISO 8601 time, or "
                                                      "through this date; default: always.")
    windows: list[str] = Field(default_factory=list, description="Weekly windows of local time in which it is "
                               "known, such as 'mon-fri 07:00-18:00', 'sat,sun 09:00-12:30' or '22:00-06:00' "
                               "(every day, overnight); none: at any time.")

    @field_validator("plate", mode="before")
    @classmethod
    def _plate_is_text(cls, value: Any) -> Any:
        if isinstance(value, (bool, int, float)):  # YAML read 0123 as 83, 1e5 as 100000.0, NO as false
            raise ValueError("write the plate in quotes ('0123'), or YAML may read it as a number or a boolean")
        return value

    @field_validator("plate")
    @classmethod
    def _plate_characters(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9 .-]*[A-Za-z0-9][A-Za-z0-9 .-]*", value):
            raise ValueError("letters A-Z and digits only, with spaces, '-' or '.' between them")
        return value

    @field_validator("valid_from", "valid_until", mode="before")
    @classmethod
    def _date_only(cls, value: Any) -> Any:
        # pydantic reads '2025-06-30' as that day's midnight; a date given alone is the whole day.
        if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()):
            return dt.date.fromisoformat(value.strip())
        return value

    @field_validator("windows")
    @classmethod
    def _check_windows(cls, windows: list[str]) -> list[str]:
        from edge.known import parse_window  # edge.known builds on this module

        for window in windows:
            parse_window(window)
        return windows

    @staticmethod
    def _timestamp(value: dt.datetime | dt.date, end: bool) -> float:
        if not isinstance(value, dt.datetime):
            value = dt.datetime.combine(value + dt.timedelta(days=1) if end else value, dt.time())
        return value.timestamp()

    @model_validator(mode="after")
    def _check_validity(self) -> KnownPlateConfig:
        if (self.valid_from is not None and self.valid_until is not None
                and self._timestamp(self.valid_until, True) <= self._timestamp(self.valid_from, False)):
            raise ValueError("valid_until: must be after valid_from")
        return self


class KnownGroupConfig(StrictModel):
    """Settings of one known-plate group (``known_plates.groups.<group>``)."""

    max_distance: float | None = Field(None, ge=0, le=10, description="Largest distance at which this group's "
                                       "plates match (0: the exact text only, 0.5: one look-alike such as O/0); "
                                       "default: known_plates.max_distance.")


class KnownPlatesConfig(StrictModel):
    """Known plates: the lists, and how close a read must be (matching: ``edge.known``)."""

    plates: list[KnownPlateConfig] = Field(default_factory=list, description="Known plates written here: plate, "
                                           "group, and optionally name, valid_from, valid_until, windows.")
    files: list[Path] = Field(default_factory=list, description="Plate files (.yaml, .yml or .csv) with more "
                              "known plates; relative to the config file; read again on SIGHUP.")
    max_distance: float = Field(1.0, ge=0, le=10, description="Largest weighted edit distance at which a read "
                                "matches a known plate: a look-alike (O/0, I/1, B/8, ...) costs 0.5, any other "
                                "replaced, missing or extra character 1. A group may set its own.")
    ambiguity_margin: float = Field(1.0, gt=0, le=10, description="A read matches its nearest known plate only "
                                    "when every other known plate is at least this much farther from it; "
                                    "otherwise it is ambiguous, matches none, and is logged.")
    groups: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$")], KnownGroupConfig] = Field(
        default_factory=dict, description="Per-group settings, e.g. residents: {max_distance: 0}; a group named "
        "here has its topic even while it has no plates.")


class RelayConfig(StrictModel):
    """A GPIO output pulsed when a known plate of chosen groups arrives (``edge.relay``)."""

    enabled: bool = Field(False, description="Pulse a GPIO output (a gate's relay) on the 'new' event of a known "
                          "plate of one of 'groups'; needs gpiozero (pip install 'edge-anpr[gpio]').")
    pin: str | None = Field(None, min_length=1, description="The output pin as gpiozero names it: 17 or GPIO17 "
                            "(BCM numbering), BOARD11 (header pin number).")
    active_high: bool = Field(True, description="true: the pin goes high for the pulse; false: low (relay "
                              "boards that switch on a low input).")
    pulse_s: float = Field(1.0, gt=0, le=60, description="How long each pulse holds the output on.")
    groups: list[str] = Field(default_factory=list, description="Known-plate groups whose plates pulse, each "
                              "within its own max_distance; a group named 'blocked' can never be one.")
    min_confidence: float = Field(0.8, ge=0, le=1, description="An event below this voted confidence never "
                                  "pulses.")

    @model_validator(mode="after")
    def _check(self) -> RelayConfig:
        if any(g.lower() == "blocked" for g in self.groups):
            raise ValueError("groups: a blocked group never pulses the relay")
        if self.enabled and self.pin is None:
            raise ValueError("pin: required when the relay is enabled")
        if self.enabled and not self.groups:
            raise ValueError("groups: name the known-plate groups whose plates pulse the relay")
        return self


class CollectConfig(StrictModel):
    enabled: bool = Field(False, description="Save each vehicle's best plate crop (and the frame region around "
                          "it) with its read, confidence, time and camera id, for review and fine-tuning "
                          "(see the README, 'Collecting plates').")
    folder: Path | None = Field(None, description="Where; default: a folder 'collect' beside the spool file. "
                                "Relative paths are relative to the config file.")
    max_mb: float = Field(200.0, gt=0, le=1_000_000, description="Size cap of what is collected, in MiB: the "
                          "oldest vehicles are removed first to make room.")
    max_files: int | None = Field(None, ge=1, le=10_000_000, description="Most files kept (2 or 3 per vehicle); "
                                  "the oldest vehicles are removed first (default: only max_mb bounds).")
    max_confidence: float | None = Field(None, gt=0, le=1, description="Keep only vehicles whose voted "
                                         "confidence is below this (the reads most worth a review); default: all.")
    keep_frame: bool = Field(True, description="Also save the frame region around the plate (its box in the "
                             "packed labels, for fine-tuning the detector).")
    frame_margin: float = Field(2.0, ge=0, le=20, description="The frame region: the plate box grown by this many "
                                "plate widths on each side, clipped to the frame.")
    quality: int = Field(90, ge=10, le=100, description="JPEG quality of the saved images.")


class AppConfig(StrictModel):
    camera: CameraConfig = Field(description="Where frames come from.")
    detection: DetectionConfig = Field(default_factory=DetectionConfig, description="Models and when to run them.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="Reads -> vehicles -> events.")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="Broker and topics.")
    spool: SpoolConfig = Field(default_factory=SpoolConfig, description="On-disk queue of undelivered events.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Log output.")
    collect: CollectConfig = Field(default_factory=CollectConfig, description="Plates saved on the device for "
                                   "review and fine-tuning (off by default).")
    known_plates: KnownPlatesConfig = Field(default_factory=KnownPlatesConfig, description="Known-plate lists: "
                                            "events of a known plate carry 'known' and go to its group's topic.")
    relay: RelayConfig = Field(default_factory=RelayConfig, description="A GPIO output pulsed for known plates of "
                               "chosen groups (off by default).")


def redact_url(url: str) -> str:
    """A URL with its password masked (``rtsp://user:********@host/...``), for logs and printouts.

    The password runs to the last ``@`` of the URL's authority (before the first ``/``, ``?`` or ``#``), as
    FFmpeg reads it, so an ``@`` inside the password is masked with the rest.
    """
    return re.sub(r"(//[^:/?#]*):[^/?#]*@", r"\1:********@", url)


def _substitute(node: Any, where: str) -> Any:
    """Replace ``${NAME}`` and ``${NAME:-default}`` placeholders in strings with environment values."""
    if isinstance(node, dict):
        return {k: _substitute(v, f"{where}.{k}" if where else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, f"{where}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str):
        def value(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if default is not None:
                return os.environ.get(name) or default
            if name not in os.environ:
                raise ConfigError(f"{where}: environment variable {name} is not set")
            return os.environ[name]

        return _PLACEHOLDER.sub(value, node)
    return node


def _text_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Dotted keys of the text (str, secret and path) fields of a model tree, camera types merged."""
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        for arg in get_args(field.annotation) or (field.annotation,):
            if arg in (str, SecretStr) or (isinstance(arg, type) and issubclass(arg, Path)):
                keys.add(prefix + name)
            elif isinstance(arg, type) and issubclass(arg, BaseModel):
                keys |= _text_keys(arg, f"{prefix}{name}.")
    return keys


def read_yaml(path: str | Path, text_keys: set[str] | None = None) -> Any:
    """Parse a YAML configuration file safely (``edge.yamlsafe.load_yaml``); ConfigError names the file and, where
    it can, the key and line. A plain scalar under one of ``text_keys`` (default: the text keys of AppConfig) is
    read as the string written."""
    try:
        return load_yaml(path, _APP_TEXT_KEYS if text_keys is None else text_keys)
    except YamlError as exc:
        raise ConfigError(str(exc)) from None


def _shown(value: Any) -> Any:
    """A rejected value as an error may show it: URL passwords and secret-like keys' values masked."""
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, dict):
        return {k: "********" if _SECRET_KEY.search(str(k)) else _shown(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_shown(v) for v in value]
    return value


def _camera_keys(keys: Any) -> list[str]:
    """A camera's keys in reading order: id, type, its own keys, then those every source shares."""
    shared = ("reconnect_min_s", "reconnect_max_s", "queue_size")
    return [k for k in keys if k not in shared] + [k for k in shared if k in keys]


def _got(e: Any, loc: list[str]) -> str:
    """`` (got VALUE)`` for an error, or nothing where the value may be a secret or says nothing."""
    kind = e["type"]
    if kind in ("missing", "value_error", "union_tag_not_found"):
        return ""
    if any(_SECRET_KEY.search(part) for part in loc):
        return ""
    if kind == "extra_forbidden" and (len(loc) == 1 or loc[0] in _SECRET_SECTIONS):
        return ""  # an unknown section, or an unknown key beside a secret: most likely a misspelt secret
    value = e.get("ctx", {}).get("tag") if kind == "union_tag_invalid" else e.get("input")
    shown = repr(_shown(value))
    return f" (got {shown if len(shown) <= 100 else shown[:97] + '...'})"


def _describe(err: ValidationError) -> str:
    """One line per problem: ``key.path: what is wrong (got VALUE)``; secrets are never shown."""
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        kind = e["type"]
        msg = e["msg"].removeprefix("Value error, ")
        camera_type = None
        if len(loc) >= 2 and loc[0] == "camera" and loc[1] in CAMERA_TYPES:
            camera_type = loc.pop(1)  # the model pydantic chose by camera.type, not a key of the file
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            loc.append("type")
            msg = (f"must be one of {', '.join(CAMERA_TYPES)}" if kind == "union_tag_invalid"
                   else f"Field required (one of {', '.join(CAMERA_TYPES)})")
        elif kind == "extra_forbidden" and camera_type:
            keys = ", ".join(_camera_keys(CAMERA_TYPES[camera_type].model_fields))
            msg = f"not a key of a '{camera_type}' camera (its keys: {keys})"
        elif kind == "value_error" and ": " in msg:
            # Model validators name the field themselves ("url: an rtsp camera needs ...").
            field, _, msg = msg.partition(": ")
            loc.append(field)
        lines.append(f"{'.'.join(loc)}: {msg}{_got(e, loc)}")
    return "\n".join(lines)


def parse_config(raw: Any, base_dir: Path = Path(".")) -> AppConfig:
    """Validate a parsed YAML document; resolve env placeholders, the password override and relative paths."""
    if not isinstance(raw, dict):
        raise ConfigError("the configuration must be a mapping of sections (camera, detection, tracking, mqtt, "
                          "spool, logging, collect, known_plates, relay)")
    raw = _substitute(raw, "")
    if os.environ.get(PASSWORD_ENV):
        raw.setdefault("mqtt", {})
        if isinstance(raw["mqtt"], dict):
            raw["mqtt"]["password"] = os.environ[PASSWORD_ENV]
    try:
        cfg = AppConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    if not cfg.spool.path.is_absolute():
        cfg.spool.path = base_dir / cfg.spool.path
    if cfg.collect.folder is None:  # beside the spool: on a device the service's one writable folder
        cfg.collect.folder = cfg.spool.path.parent / "collect"
    elif not cfg.collect.folder.is_absolute():
        cfg.collect.folder = base_dir / cfg.collect.folder
    if cfg.detection.models is not None and not cfg.detection.models.is_absolute():
        cfg.detection.models = base_dir / cfg.detection.models
    if cfg.detection.countries is not None:
        if not cfg.detection.countries.is_absolute():
            cfg.detection.countries = base_dir / cfg.detection.countries
        try:  # checked here, so that check-config names a bad country file before the daemon starts
            load_countries(cfg.detection.countries)
        except FormatError as exc:
            raise ConfigError(f"detection.countries: {exc}") from None
    if isinstance(cfg.camera, _ClipCamera) and not Path(cfg.camera.path).is_absolute():
        cfg.camera.path = str(base_dir / cfg.camera.path)
    cfg.known_plates.files = [p if p.is_absolute() else base_dir / p for p in cfg.known_plates.files]
    if cfg.known_plates.files or cfg.relay.enabled:
        from edge.known import KnownPlatesError, group_names  # edge.known builds on this module

        try:  # checked here, so that check-config names a bad plate file before the daemon starts
            groups = group_names(cfg.known_plates)
        except KnownPlatesError as exc:
            raise ConfigError(f"known_plates.files: {exc}") from None
        if cfg.relay.enabled and (missing := [g for g in cfg.relay.groups if g not in groups]):
            raise ConfigError(f"relay.groups: no known-plate group {', '.join(missing)} (groups: "
                              f"{', '.join(groups) or 'none'})")
    return cfg


def load_config(path: str | Path) -> AppConfig:
    """Read, parse and validate a YAML config file; ConfigError names the file, key and problem."""
    p = Path(path)
    raw = read_yaml(p)
    try:
        return parse_config(raw, p.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None


def resolved_yaml(cfg: AppConfig) -> str:
    """The full configuration with defaults filled in, secrets masked, as YAML."""
    data = cfg.model_dump(mode="json")
    if cfg.mqtt.password is not None:
        data["mqtt"]["password"] = "********"
    data["mqtt"]["topic_prefix"] = cfg.mqtt.prefix
    if isinstance(cfg.camera, RtspCameraConfig):
        data["camera"]["url"] = redact_url(cfg.camera.url)
    data["camera"] = {k: data["camera"][k] for k in _camera_keys(data["camera"])}
    return yaml.safe_dump(data, sort_keys=False)


_APP_TEXT_KEYS = _text_keys(AppConfig)
