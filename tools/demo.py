"""The product end to end on this machine: ``python -m tools.demo`` (what ``make demo`` runs).

Starts a private mosquitto on a free loopback port, runs the daemon
(``python -m edge run``) on the synthetic clip shipped in demo/ with the
shipped models, prints every message a subscriber receives on the plate
topic, and ends by itself when the clip is done and every event has been
acknowledged. The summary compares the events with the plates known to be in
the clip. Exit code: the daemon's (0 when everything was delivered).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from edge.mosquitto import start_broker

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "anpr/demo"


def _print_event(msg: mqtt.MQTTMessage, raw: bool) -> dict | None:
    try:
        event = json.loads(msg.payload)
    except ValueError:
        print(f"  {msg.topic}: {msg.payload[:80]!r}")
        return None
    if raw:
        print(f"  {msg.topic} {json.dumps(event)}", flush=True)
    else:
        print(f"  {event['type'].upper():<4} {event['display']:<12} confidence {event['confidence']:.2f}  "
              f"frames {event['frame_count']:>3}  id {event['id']}", flush=True)
    return event


def run(clip: Path, models: Path | None, raw: bool, timeout: float) -> int:
    """The daemon on ``clip`` against a private broker, every plate event printed; returns the daemon's exit code."""
    truth = json.loads(Path(str(clip) + ".json").read_text())
    with tempfile.TemporaryDirectory(prefix="edge-demo-") as tmp:
        workdir = Path(tmp)
        broker, port = start_broker(workdir)
        events: list[dict] = []
        sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="edge-demo-subscriber")
        sub.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{PREFIX}/#", qos=1)

        def on_message(client, userdata, msg: mqtt.MQTTMessage) -> None:
            if msg.topic == f"{PREFIX}/plates":
                event = _print_event(msg, raw)
                if event:
                    events.append(event)
            elif msg.topic == f"{PREFIX}/status":
                print(f"  status: {msg.payload.decode()}", flush=True)

        sub.on_message = on_message
        sub.connect("127.0.0.1", port)
        sub.loop_start()
        config = {
            "camera": {"id": "demo", "type": "file", "path": str(clip), "realtime": False},
            "detection": {"threads": 2} | ({"models": str(models)} if models else {}),
            "mqtt": {"host": "127.0.0.1", "port": port, "device_id": "demo", "topic_prefix": PREFIX,
                     "discovery": {"enabled": False}},
            "spool": {"path": str(workdir / "spool.sqlite")},
            "logging": {"level": "WARNING"},
        }
        cfg_path = workdir / "config.yaml"
        cfg_path.write_text(yaml.safe_dump(config))
        shown = clip.relative_to(ROOT) if clip.is_relative_to(ROOT) else clip
        print(f"mosquitto on 127.0.0.1:{port}; daemon on {shown} ({truth['frames']} frames); "
              f"subscribed to {PREFIX}/#", flush=True)
        start = time.monotonic()
        try:
            code = subprocess.run([sys.executable, "-m", "edge", "run", "--config", str(cfg_path)], cwd=ROOT,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = 124
            print(f"error: the daemon did not finish within {timeout:.0f} s", file=sys.stderr)
        time.sleep(0.5)  # the last acknowledged messages reach the subscriber
        sub.loop_stop()
        sub.disconnect()
        broker.terminate()
        broker.wait(10)
    wall = time.monotonic() - start
    known = [v["text"] for v in truth["vehicles"]]
    new = [e["text"] for e in events if e["type"] == "new"]
    ends = [e["text"] for e in events if e["type"] == "end"]
    right = sum(t in new for t in known)
    print(f"demo: {len(known)} vehicles in the clip ({', '.join(known)}); received {len(new)} new and {len(ends)} end "
          f"events; {right} of {len(known)} plates read right; daemon exit {code}; {wall:.1f} s")
    return code


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.demo [--clip FILE] [--models DIR] [--json] [--timeout S]``."""
    ap = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", type=Path, default=ROOT / "demo" / "clip.mp4",
                    help="video with <clip>.json truth beside it")
    ap.add_argument("--models", type=Path, default=None, help="model set directory (default: the shipped models)")
    ap.add_argument("--json", action="store_true", help="print each received message as raw JSON")
    ap.add_argument("--timeout", type=float, default=300, help="give up after this many seconds")
    args = ap.parse_args(argv)
    return run(args.clip.resolve(), args.models, args.json, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
