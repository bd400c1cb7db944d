"""``python -m edge health --config FILE``: can this device run the daemon with this configuration?

Each check prints one line (``ok`` or ``FAIL``, its name, what it found) and
none stops the others, so one run shows everything that is wrong:

- models: the configured model set loads and verifies (sha256, metadata, tensors) on the configured accelerator;
- frame: a synthetic 1280x720 test frame reads through the whole pipeline;
- spool: the spool file (or its folder) is writable by this user;
- broker: the broker accepts a connection with the configured credentials and TLS;
- camera (only with ``--camera``): the source delivers one frame. Off by
  default, because a running daemon holds the camera.

``deploy/update.sh`` runs it after switching a release or a model set and rolls
back when it fails.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from edge.config import AppConfig
from edge.formats import FormatSet
from edge.model import DEFAULT_MODELS
from edge.pipeline import Pipeline


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


def synthetic_frame() -> np.ndarray:
    """A 1280x720 road-grey frame with a plate-like white box and dark text, made here (no file needed)."""
    frame = np.full((720, 1280, 3), 90, np.uint8)
    cv2.rectangle(frame, (540, 420), (760, 468), (235, 235, 235), -1)
    cv2.putText(frame, "AB12 CDE", (552, 458), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (20, 20, 20), 3, cv2.LINE_AA)
    return frame


def check_models(cfg: AppConfig, holder: dict) -> str:
    models = cfg.detection.models or DEFAULT_MODELS
    # Loaded as the daemon loads them; a file broken since the configuration was read fails this check by name.
    extra = FormatSet.load(cfg.detection.countries) if cfg.detection.countries else None
    pipeline = holder["pipeline"] = Pipeline.from_config(cfg.detection, extra)
    det, rd = pipeline.detector.model, pipeline.reader.model
    wide = " with its wide detector" if pipeline.detector.wide is not None else ""
    versions = f"detector {det.meta.version}{wide}, reader {rd.meta.version}"
    return f"{models} ({versions}) verified and loaded on {det.accelerator}"


def check_frame(holder: dict) -> str:
    pipeline = holder.get("pipeline")
    if pipeline is None:
        raise RuntimeError("skipped: the models did not load")
    frame = synthetic_frame()
    start = time.perf_counter()
    reads = pipeline(frame)
    ms = (time.perf_counter() - start) * 1000
    return f"1280x720 test frame read in {ms:.0f} ms ({len(reads)} plate{'s' if len(reads) != 1 else ''})"


def check_spool(cfg: AppConfig) -> str:
    path = cfg.spool.path
    target = path if path.exists() else path.parent
    if not target.exists():
        raise RuntimeError(f"{target}: folder does not exist")
    if not os.access(target, os.W_OK):
        raise RuntimeError(f"{target}: not writable by uid {os.geteuid()}")
    return f"{path} writable"


def check_broker(cfg: AppConfig, timeout_s: float) -> str:
    """Connect and wait for the broker's CONNACK; the client id differs from the daemon's, so it stays connected."""
    from edge.publish import describe_connect_error, make_client  # paho only when this check runs

    m = cfg.mqtt
    client = make_client(m, f"edge-anpr-{m.device_id}-health")  # the daemon's credentials and TLS
    client.connect_timeout = timeout_s
    answer: dict = {}
    done = threading.Event()

    def on_connect(c, userdata, flags, reason, properties) -> None:
        answer["reason"] = reason
        done.set()

    def on_disconnect(c, userdata, flags, reason, properties) -> None:
        answer.setdefault("closed", reason)  # before any CONNACK: the broker hung up on us
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    where = f"{m.host}:{m.port}{' (TLS)' if m.tls else ''}"
    try:
        client.connect(m.host, m.port, keepalive=max(5, int(timeout_s) + 5))
    except OSError as exc:  # refused, unreachable, name unknown, certificate rejected (ssl.SSLError)
        raise RuntimeError(f"{where}: cannot connect: {describe_connect_error(exc, m.tls is not None)}") from None
    client.loop_start()
    try:
        if not done.wait(timeout_s):
            raise RuntimeError(f"{where}: no answer (CONNACK) within {timeout_s:.0f} s")
        if "reason" not in answer:
            hint = "" if m.tls else " (a TLS port spoken to without TLS?)"
            raise RuntimeError(f"{where}: the broker closed the connection before accepting it: "
                               f"{answer['closed']}{hint}")
        reason = answer["reason"]
        if reason.is_failure:
            raise RuntimeError(f"{where}: connection refused: {reason}"
                               + (f" (user {m.username})" if m.username else ""))
    finally:
        client.disconnect()
        client.loop_stop()
    return f"{where} accepted the connection" + (f" as {m.username}" if m.username else "")


def check_camera(cfg: AppConfig, timeout_s: float) -> str:
    from edge.sources import open_source

    # As in the daemon: OpenCV's backend-probing warnings on each retry mislead more than they help.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    source = open_source(cfg.camera)
    stop = threading.Event()
    got: dict = {}

    def first() -> None:
        try:
            for frame in source.frames(stop):
                got["frame"] = frame
                break
        except Exception as exc:  # reported below, whatever the backend raised
            got["error"] = exc
        stop.set()

    thread = threading.Thread(target=first, name="health-camera", daemon=True)
    thread.start()
    thread.join(timeout_s)
    stop.set()
    if "error" in got:
        raise RuntimeError(f"{cfg.camera.type}: {got['error']}")
    if "frame" not in got:
        raise RuntimeError(f"{cfg.camera.type}: no frame within {timeout_s:.0f} s")
    h, w = got["frame"].image.shape[:2]
    return f"{cfg.camera.type} delivered a {w}x{h} frame"


def run_checks(cfg: AppConfig, timeout_s: float = 10.0, camera: bool = False,
               emit: Callable[[str], None] = print) -> list[CheckResult]:
    """Run every check, emitting one line each as it completes; return the results."""
    holder: dict = {}
    checks: list[tuple[str, Callable[[], str]]] = [
        ("models", lambda: check_models(cfg, holder)),
        ("frame", lambda: check_frame(holder)),
        ("spool", lambda: check_spool(cfg)),
        ("broker", lambda: check_broker(cfg, timeout_s)),
    ]
    if camera:
        checks.append(("camera", lambda: check_camera(cfg, timeout_s)))
    results = []
    for name, check in checks:
        try:
            result = CheckResult(name, True, check())
        except Exception as exc:  # every failure becomes a line; the other checks still run
            result = CheckResult(name, False, str(exc) or type(exc).__name__)
        emit(result.line())
        results.append(result)
    return results
