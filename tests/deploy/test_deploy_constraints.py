"""deploy/constraints.txt pins every package a device installs, and install.sh / update.sh build releases with it."""
from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from deploytools import DEPLOY, ROOT, copy_checkout, install_older_release, link, script

CONSTRAINTS = DEPLOY / "constraints.txt"


def pins() -> dict[str, Version]:
    """Package (canonical name) -> pinned version; every line is NAME==VERSION."""
    out = {}
    for number, line in enumerate(CONSTRAINTS.read_text().splitlines(), 1):
        line = line.split("#")[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.+!-]*)", line)
        assert m, f"{CONSTRAINTS.name}:{number}: '{line}' is not NAME==VERSION"
        out[canonicalize_name(m[1])] = Version(m[2])
    return out


def project_requirements(*extras: str) -> list[Requirement]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


def closure(requirements: list[Requirement]) -> set[str]:
    """Every distribution the requirements pull in, by the installed packages' own metadata."""
    seen: set[str] = set()
    todo = list(requirements)
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        todo += [Requirement(r) for r in metadata.distribution(req.name).requires or []]
    return seen


def test_every_package_of_a_device_is_pinned_within_pyproject() -> None:
    pinned = pins()
    device = project_requirements("daemon")
    missing = closure(device) - set(pinned)
    assert not missing, f"{CONSTRAINTS}: not pinned: {sorted(missing)}"
    for req in device:
        assert pinned[canonicalize_name(req.name)] in req.specifier, (req, pinned[canonicalize_name(req.name)])


def test_paho_mqtt_is_bounded_to_the_api_the_daemon_uses() -> None:
    """The daemon uses paho-mqtt 2's CallbackAPIVersion.VERSION2, which a major version 3 may change or drop."""
    [paho] = [r for r in project_requirements("daemon") if r.name == "paho-mqtt"]
    assert "2.0" in paho.specifier and "3.0" not in paho.specifier and "1.6.1" not in paho.specifier


def test_the_tests_run_with_the_pinned_versions() -> None:
    """What the suite passes with is what a device gets (make installs with the same file)."""
    pinned = pins()
    installed = {name: Version(metadata.version(name)) for name in closure(project_requirements("daemon"))
                 if name in pinned}
    differ = {name: f"{installed[name]} installed, {pinned[name]} pinned" for name in installed
              if installed[name] != pinned[name]}
    assert not differ, f"this environment is not the one {CONSTRAINTS.name} describes: {differ}"


def test_the_lint_tools_are_pinned_and_installed_at_their_pins() -> None:
    """``make lint`` gates CI: a ruff or mypy release with new rules must not fail it on unchanged code."""
    pytest.importorskip("mypy", reason="the lint tools are not installed here (make test-edge's environment)")
    pinned = pins()
    lint = project_requirements("lint")
    names = closure(lint)
    missing = names - set(pinned)
    assert not missing, f"{CONSTRAINTS}: not pinned: {sorted(missing)}"
    for req in lint:
        assert pinned[canonicalize_name(req.name)] in req.specifier, (req, pinned[canonicalize_name(req.name)])
    differ = {name: f"{metadata.version(name)} installed, {pinned[name]} pinned" for name in names
              if Version(metadata.version(name)) != pinned[name]}
    assert not differ, f"this environment is not the one {CONSTRAINTS.name} describes: {differ}"


@pytest.fixture
def recording_python3(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """PATH with a ``python3`` whose ``-m venv DIR`` makes a venv stand-in: its python records its arguments
    and PIP_CONSTRAINT instead of installing (no network); anything else runs the real python3."""
    real = shutil.which("python3")
    assert real, "python3 not on PATH"
    bin_dir, log = tmp_path / "bin", tmp_path / "venv-python.log"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(f'''#!/usr/bin/env bash
if [ "$1" = -m ] && [ "$2" = venv ]; then
    dir=${{*: -1}}
    mkdir -p "$dir/bin"
    printf '#!/usr/bin/env bash\\necho "PIP_CONSTRAINT=${{PIP_CONSTRAINT:-}} $*" >> "{log}"\\n' > "$dir/bin/python"
    chmod +x "$dir/bin/python"
    exit 0
fi
exec "{real}" "$@"
''')
    (bin_dir / "python3").chmod(0o755)
    return os.environ | {"PATH": f"{bin_dir}:{os.environ['PATH']}"}, log


def pip_installs(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if "-m pip install" in line and "[daemon]" in line]


def test_install_builds_the_release_with_the_constraints(untrained_models: Path, tmp_path: Path,
                                                         recording_python3: tuple[dict[str, str], Path]) -> None:
    env, log = recording_python3
    proc = subprocess.run(["bash", str(DEPLOY / "install.sh"), "--root", str(tmp_path / "root"), "--models",
                           str(untrained_models), "--no-apt"], env=env, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=120)
    assert proc.returncode == 0, proc.stdout
    [install] = pip_installs(log)
    assert install.startswith(f"PIP_CONSTRAINT={CONSTRAINTS} -m pip install"), install


def test_update_release_builds_with_the_new_checkouts_constraints(untrained_models: Path, tmp_path: Path,
                                                                  recording_python3: tuple[dict[str, str], Path]
                                                                  ) -> None:
    # Installed from an older checkout (a copy with one change), with a venv of its own kind.
    root, proc = install_older_release(tmp_path, untrained_models)
    assert proc.returncode == 0, proc.stdout
    old = link(root / "opt/edge-anpr/current")
    env, log = recording_python3
    proc = subprocess.run(["bash", str(DEPLOY / "update.sh"), "--root", str(root), "--release"], env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    assert proc.returncode == 0, proc.stdout  # the stand-in's health check "passes": it only records
    assert link(root / "opt/edge-anpr/current") != old
    [install] = pip_installs(log)
    assert install.startswith(f"PIP_CONSTRAINT={CONSTRAINTS} -m pip install"), install


def test_a_checkout_without_constraints_is_refused(untrained_models: Path, tmp_path: Path) -> None:
    checkout = copy_checkout(tmp_path / "checkout")
    (checkout / "deploy/constraints.txt").unlink()
    proc = subprocess.run(["bash", str(checkout / "deploy/install.sh"), "--root", str(tmp_path / "root"),
                           "--models", str(untrained_models), "--no-apt"], text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=120)
    assert proc.returncode == 1 and "constraints.txt: not found" in proc.stdout, proc.stdout
    assert not (tmp_path / "root/opt/edge-anpr/current").exists()
    assert script("update.sh", tmp_path / "root", "--check").returncode == 1  # nothing was installed
