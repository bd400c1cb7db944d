"""systemd's notify protocol (``sd_notify``) with the standard library only.

Under ``Type=notify`` systemd sets ``NOTIFY_SOCKET``; the daemon sends
``READY=1`` when it runs, ``WATCHDOG=1`` at least every ``WatchdogSec`` (else
systemd kills and restarts it) and ``STOPPING=1`` when it stops. Without
``NOTIFY_SOCKET`` (a shell, a test, another supervisor) every call is a no-op.
"""
from __future__ import annotations

import os
import socket
import time


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd; False when not under systemd or the send failed."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr or addr[0] not in "/@":
        return False
    if addr[0] == "@":  # abstract namespace
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(addr)
            sock.sendall(state.encode())
        return True
    except OSError:
        # A notify failure must never take the daemon down; systemd notices a missing READY/WATCHDOG by itself.
        return False


def watchdog_interval() -> float | None:
    """Seconds between keep-alives that systemd expects (``WATCHDOG_USEC``), or None when no watchdog is set."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1e6 if int(usec) > 0 else None
    except ValueError:
        return None


class Watchdog:
    """Rate-limited ``WATCHDOG=1``: ``feed`` may be called every loop turn, it sends at half the interval."""

    def __init__(self) -> None:
        interval = watchdog_interval()
        # Half the interval, as sd_watchdog_enabled(3) advises; without a watchdog, once a second is harmless.
        self.period = interval / 2 if interval else 1.0
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._last = 0.0

    def feed(self) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last >= self.period:
            self._last = now
            notify("WATCHDOG=1")
