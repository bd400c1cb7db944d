"""A private mosquitto for local runs on a workstation (per-vehicle evaluation, the demo, the soak test).

It listens on a free loopback port, runs as the calling user, keeps no
persistence and writes its files in a folder the caller owns. A missing or
failing mosquitto is reported as ``SystemExit`` with what to install or the
tail of its log.
"""
from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path


def find_mosquitto() -> str | None:
    """Path of the mosquitto broker (on PATH, or Debian's /usr/sbin, which is not on a user's PATH), or None."""
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


def mosquitto_binary() -> str:
    """Path of the mosquitto broker, or SystemExit saying how to install it."""
    found = find_mosquitto()
    if not found:
        raise SystemExit("error: mosquitto is not installed (Debian/Raspberry Pi OS: sudo apt-get install mosquitto)")
    return found


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(workdir: Path) -> tuple[subprocess.Popen, int]:
    """A private mosquitto on a free loopback port, its files in ``workdir``: (process, port) once it listens."""
    port = free_port()
    conf = workdir / "mosquitto.conf"
    # Run as ourselves: started by root, mosquitto would switch to a user that cannot read the temp dir.
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    f"user {pwd.getpwuid(os.geteuid()).pw_name}\n")
    with open(workdir / "mosquitto.log", "wb") as log:  # the broker keeps its own copy of the descriptor
        proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=log, stderr=log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    proc.terminate()
    raise SystemExit(f"error: mosquitto did not start: {(workdir / 'mosquitto.log').read_text()[-500:]}")
