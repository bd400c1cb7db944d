"""sd_notify from the daemon: READY=1, WATCHDOG=1 fed by the inference loop (and not while it hangs), STOPPING=1."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from deploytools import ROOT
from edge import sdnotify
from edge.config import parse_config
from edge.daemon import Daemon
from edge.pipeline import FrameReads, SearchCounts
from edge.publish import Publisher
from edge.sources import open_source
from edge.spool import Spool
from harness import Broker


class NotifyListener:
    """A datagram socket standing in for systemd's; records what the daemon sends, with the time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._recv, daemon=True)
        self._thread.start()

    def _recv(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def states(self) -> list[str]:
        return [m for _, m in self.messages]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def wait_until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    lst = NotifyListener(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(lst.path))
    yield lst
    lst.close()


@pytest.fixture
def frames(tmp_path: Path) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        cv2.imwrite(str(folder / f"{i:03d}.jpg"), rng.integers(0, 256, (120, 160, 3), np.uint8))
    return folder


def test_notify_is_a_no_op_without_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.Watchdog().enabled is False


def test_notify_sends_to_the_socket_and_the_watchdog_is_rate_limited(listener: NotifyListener,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    assert sdnotify.notify("READY=1")
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    dog = sdnotify.Watchdog()
    assert dog.period == pytest.approx(0.2)
    for _ in range(10):  # ten calls in well under a period: one keep-alive
        dog.feed()
    wait_until(lambda: len(listener.messages) >= 2, 2, "two datagrams")
    time.sleep(0.1)
    assert listener.states() == ["READY=1", "WATCHDOG=1"]
    monkeypatch.setenv("WATCHDOG_PID", "1")  # the watchdog belongs to another process
    assert sdnotify.watchdog_interval() is None


def test_notify_reaches_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"edge-anpr-test-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("STOPPING=1")
        assert sock.recv(100) == b"STOPPING=1"


def test_daemon_notifies_ready_watchdog_and_stopping(listener: NotifyListener, frames: Path,
                                                     untrained_models: Path, tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker").start()
    try:
        cfg = {"camera": {"type": "folder", "path": str(frames), "loop": True, "fps": 20},
               "detection": {"models": str(untrained_models), "threads": 1},
               "mqtt": {"host": "127.0.0.1", "port": broker.port, "device_id": "notifytest", "drain_timeout_s": 2},
               "spool": {"path": str(tmp_path / "spool.sqlite")}}
        config = tmp_path / "daemon.yaml"
        config.write_text(yaml.safe_dump(cfg))
        env = {"PATH": "/usr/bin:/bin", "NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "400000"}
        proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(config)], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_until(lambda: listener.states().count("WATCHDOG=1") >= 3, 60, "READY=1 and 3 x WATCHDOG=1")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            log = proc.communicate()[0]
        states = listener.states()
        assert states[0] == "READY=1", (states, log)
        assert "STOPPING=1" in states and states.index("STOPPING=1") > states.index("WATCHDOG=1"), states
    finally:
        broker.stop()


class BlockingPipeline:
    """Stands in for the pipeline: finds nothing, but hangs in the detector while ``hang`` is set."""

    def __init__(self) -> None:
        self.hang = threading.Event()
        self.release = threading.Event()
        self.detector = self
        self.formats = None  # no formats: events carry the bare text

    def run(self, image: np.ndarray, frame: int | None = None) -> FrameReads:
        if self.hang.is_set():
            self.release.wait(30)
        return FrameReads([], SearchCounts())


def test_a_hung_pipeline_stops_the_watchdog(listener: NotifyListener, frames: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """While inference hangs, no WATCHDOG=1 goes out (systemd would restart the service); after, it resumes."""
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    cfg = parse_config({"camera": {"type": "folder", "path": str(frames), "loop": True, "fps": 20},
                        "mqtt": {"host": "127.0.0.1", "port": 1, "device_id": "hangtest", "drain_timeout_s": 0},
                        "spool": {"path": str(tmp_path / "spool.sqlite")}})
    spool = Spool(cfg.spool.path)
    pipeline = BlockingPipeline()
    daemon = Daemon(cfg, open_source(cfg.camera), pipeline, spool, Publisher(cfg.mqtt, spool))
    hung_at: list[float] = []

    def script() -> None:  # run() must own the main thread (signal handlers): drive it from here
        wait_until(lambda: listener.states().count("WATCHDOG=1") >= 2, 20, "keep-alives before the hang")
        pipeline.hang.set()
        time.sleep(0.3)  # the frame in flight hangs
        hung_at.append(time.monotonic())
        time.sleep(1.5)  # 15 watchdog periods
        pipeline.release.set()
        pipeline.hang.clear()
        n = listener.states().count("WATCHDOG=1")
        wait_until(lambda: listener.states().count("WATCHDOG=1") > n, 5, "keep-alives after the hang")
        daemon.stop.set()

    driver = threading.Thread(target=script, daemon=True)
    driver.start()
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        assert daemon.run() == 0
    finally:  # run() installed its own handlers in pytest's process
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    driver.join(5)
    during = [t for t, m in listener.messages if m == "WATCHDOG=1" and hung_at[0] <= t <= hung_at[0] + 1.4]
    assert during == [], "the watchdog was fed while the pipeline hung"
