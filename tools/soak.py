"""Soak benchmark: ``python -m tools.soak --minutes 30`` (what ``make soak`` runs).

The daemon runs on a looping 720p clip against a private mosquitto for the
given time while this samples its resident memory every few seconds and a
subscriber counts what arrives. Prints a summary and writes JSON: RSS at the
start (after warm-up) and the end, its growth, events received, frames
dropped, spool depth and stats messages over time. A benchmark, not a test:
it asserts nothing.

``--collect-mb N`` turns collection on (``collect:``, an N MiB cap) and
samples the collection folder's size every quarter second; every pass of the
loop is then a new vehicle (``tracking.reappear_window_s: 0``), so that the
cap is reached. It reports the folder's largest size, the events the daemon
sent (its final stats) against the distinct events received, and the lost.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from tools.demo import PREFIX, ROOT, start_broker


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _folder_bytes(folder: Path) -> int:
    """Bytes of the files in ``folder`` now (0 before it exists); a file removed meanwhile counts 0."""
    total = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        with contextlib.suppress(FileNotFoundError):
            total += entry.stat(follow_symlinks=False).st_size
    return total


def run(clip: Path, minutes: float, sample_s: float, warmup_s: float, collect_mb: float | None = None) -> dict:
    """The daemon on ``clip`` (looping) for ``minutes``, its RSS sampled every ``sample_s``: the result dict."""
    with tempfile.TemporaryDirectory(prefix="edge-soak-") as tmp:
        workdir = Path(tmp)
        broker, port = start_broker(workdir)
        counts = {"new": 0, "end": 0, "stats": 0}
        received: set[tuple[str, str]] = set()  # (type, id): a re-delivery counts once
        last_stats: dict = {}
        sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="edge-soak-subscriber")
        sub.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{PREFIX}/#", qos=1)

        def on_message(client, userdata, msg: mqtt.MQTTMessage) -> None:
            nonlocal last_stats
            if msg.topic.endswith("/plates"):
                event = json.loads(msg.payload)
                counts[event["type"]] += 1
                received.add((event["type"], event["id"]))
            elif msg.topic.endswith("/stats"):
                counts["stats"] += 1
                last_stats = json.loads(msg.payload)

        sub.on_message = on_message
        sub.connect("127.0.0.1", port)
        sub.loop_start()
        config = {
            "camera": {"id": "soak", "type": "file", "path": str(clip), "loop": True, "realtime": True},
            "detection": {"threads": 2},
            "mqtt": {"host": "127.0.0.1", "port": port, "device_id": "soak", "topic_prefix": PREFIX,
                     "stats_interval_s": 10, "discovery": {"enabled": False}},
            "spool": {"path": str(workdir / "spool.sqlite")},
            "logging": {"level": "WARNING"},
        }
        folder = workdir / "collect"
        folder_samples: list[tuple[float, int]] = []  # (seconds since start, bytes)
        sampling = threading.Event()
        if collect_mb is not None:
            config["collect"] = {"enabled": True, "folder": str(folder), "max_mb": collect_mb}
            config["tracking"] = {"reappear_window_s": 0}
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
        daemon = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(workdir / "config.yaml")],
                                  cwd=ROOT)
        samples: list[tuple[float, float]] = []
        start = time.monotonic()
        end = start + minutes * 60

        def sample_folder() -> None:  # often: the cap must hold at every moment, not only at RSS samples
            while not sampling.is_set():
                folder_samples.append((round(time.monotonic() - start, 2), _folder_bytes(folder)))
                sampling.wait(0.25)

        sampler = threading.Thread(target=sample_folder, name="folder-sampler", daemon=True)
        if collect_mb is not None:
            sampler.start()
        while time.monotonic() < end and daemon.poll() is None:
            time.sleep(sample_s)
            rss = _rss_mb(daemon.pid)
            if rss is not None:
                samples.append((round(time.monotonic() - start, 1), round(rss, 1)))
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(60)
        sampling.set()
        if sampler.is_alive():
            sampler.join(5)
        folder_samples.append((round(time.monotonic() - start, 2), _folder_bytes(folder)))  # after the stop
        time.sleep(0.5)
        sub.loop_stop()
        sub.disconnect()
        broker.terminate()
        broker.wait(10)
    warm = [r for t, r in samples if t >= warmup_s] or [r for _, r in samples]
    return {
        "minutes": minutes, "clip": str(clip), "daemon_exit": code,
        "rss_mb_after_warmup": warm[0] if warm else None, "rss_mb_end": warm[-1] if warm else None,
        "rss_mb_peak": max(warm) if warm else None,
        "rss_growth_pct": round(100 * (warm[-1] - warm[0]) / warm[0], 2) if warm else None,
        "events_new": counts["new"], "events_end": counts["end"], "stats_messages": counts["stats"],
        "last_stats": last_stats, "rss_samples": samples,
    } | ({} if collect_mb is None else {
        "collect_mb": collect_mb, "collect_bytes_max": max(b for _, b in folder_samples),
        "collect_bytes_end": folder_samples[-1][1], "collect_cap_bytes": int(collect_mb * (1 << 20)),
        "events_sent": last_stats.get("events"), "events_received": len(received),
        "events_lost": last_stats["events"] - len(received) if "events" in last_stats else None,
        # Folder size every 30 s (the largest in each window), for a plot over time.
        "collect_bytes_over_time": [(t, max(b for s, b in folder_samples if t - 30 < s <= t))
                                    for t in range(30, int(folder_samples[-1][0]) + 30, 30)
                                    if any(t - 30 < s <= t for s, _ in folder_samples)],
    })


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.soak [--minutes M] [--out FILE] ...``."""
    ap = argparse.ArgumentParser(prog="python -m tools.soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", type=Path, default=ROOT / "demo" / "clip.mp4")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling interval")
    ap.add_argument("--warmup-s", type=float, default=60.0, help="RSS growth is measured from this point")
    ap.add_argument("--out", type=Path, default=Path("bench/soak.json"))
    ap.add_argument("--collect-mb", type=float, default=None, metavar="N",
                    help="collection on with an N MiB cap; every loop pass is a new vehicle (see above)")
    args = ap.parse_args(argv)
    r = run(args.clip.resolve(), args.minutes, args.sample_s, args.warmup_s, args.collect_mb)
    print(f"soak {r['minutes']:.0f} min: RSS {r['rss_mb_after_warmup']} -> {r['rss_mb_end']} MB "
          f"({r['rss_growth_pct']:+.2f} %), peak {r['rss_mb_peak']} MB; events new {r['events_new']}, "
          f"end {r['events_end']}; stats messages {r['stats_messages']}; daemon exit {r['daemon_exit']}")
    if args.collect_mb is not None:
        print(f"collection: folder at most {r['collect_bytes_max']} of {r['collect_cap_bytes']} bytes "
              f"(end {r['collect_bytes_end']}); events sent {r['events_sent']}, received {r['events_received']}, "
              f"lost {r['events_lost']}")
    ls = r["last_stats"]
    if ls:
        print("last stats: " + ", ".join(f"{k}={v}" for k, v in ls.items() if not isinstance(v, dict)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
