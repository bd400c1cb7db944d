"""Helpers of the deploy tests: run the scripts in test mode under a throw-away root, write a config.

No conftest.py here: the suite's top-level tests import ``conftest`` by name.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
#: The environment the tests run in: new releases link to it instead of building a venv (no network).
VENV = Path(sys.prefix)

sys.path.insert(0, str(ROOT / "tests" / "daemon"))  # the harness's Broker


def script(name: str, root: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``deploy/NAME`` in test mode under ``root``; stdout and stderr together in ``.stdout``."""
    return subprocess.run(["bash", str(DEPLOY / name), "--root", str(root), *args], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)


def install(root: Path, models: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return script("install.sh", root, "--models", str(models), "--venv-from", str(VENV), "--no-apt", *args)


def copy_checkout(dest: Path) -> Path:
    """A copy of the parts of this checkout that the deploy scripts install from."""
    for part in ("edge", "deploy", "pyproject.toml", "README.md"):
        src = ROOT / part
        (shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
         if src.is_dir() else shutil.copy(src, dest / part))
    return dest


def install_older_release(tmp_path: Path, models: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """Install, under ``tmp_path/root``, from a copy of this checkout with one change (an older release), with a
    venv of this interpreter's kind: (root, the install's result)."""
    old = copy_checkout(tmp_path / "old")
    with open(old / "edge/__init__.py", "a") as f:
        f.write("# an older release\n")
    root = tmp_path / "root"
    proc = subprocess.run(["bash", str(old / "deploy/install.sh"), "--root", str(root), "--models", str(models),
                           "--venv-from", sys.prefix, "--no-apt"], text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=120)
    return root, proc


def write_config(root: Path, port: int, **mqtt: object) -> Path:
    """A config under ``root`` for a file-less check: the installed models, a loopback broker."""
    cfg = {
        "camera": {"id": "test", "type": "v4l2", "path": "/dev/video0"},
        "detection": {"models": str(root / "opt/edge-anpr/models/current"), "threads": 1},
        "mqtt": {"host": "127.0.0.1", "port": port, "device_id": "deploytest", **mqtt},
        "spool": {"path": str(root / "var/lib/edge-anpr/spool.sqlite")},
        "logging": {"timestamps": False},
    }
    path = root / "etc/edge-anpr/config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def link(path: Path) -> str:
    """The name a symlink points at."""
    return Path(path.readlink()).name
