"""install.sh / uninstall.sh in test mode under a throw-away root; shellcheck; the systemd unit."""
from __future__ import annotations

import configparser
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from deploytools import DEPLOY, VENV, install, link, script

SCRIPTS = sorted(DEPLOY.glob("*.sh"))
HARDENING = {
    "Type": "notify", "User": "edge-anpr", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
    "ProtectHome": "yes", "PrivateTmp": "yes", "StateDirectory": "edge-anpr", "Restart": "on-failure",
    "StandardOutput": "journal",
}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def tree(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every path under root: mode, size and link target, to compare two installs."""
    out = {}
    for p in sorted(root.rglob("*")):
        if "__pycache__" in p.parts:
            continue
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_mode, st.st_size if p.is_file() and not p.is_symlink() else 0,
                                        os.readlink(p) if p.is_symlink() else "")
    return out


@pytest.fixture(scope="module")
def installed(untrained_models: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("root")
    proc = install(root, untrained_models)
    assert proc.returncode == 0, proc.stdout
    return root, proc.stdout


def test_install_lays_out_release_models_config_unit(installed: tuple[Path, str]) -> None:
    root, out = installed
    opt = root / "opt/edge-anpr"
    release = opt / "current"
    assert release.is_symlink() and re.fullmatch(r"releases/\d+\.\d+\.\d+-[0-9a-f]{8}", os.readlink(release))
    assert (release / "venv/bin/python").exists() and (release / "src/edge/__main__.py").is_file()
    models = opt / "models/current"
    assert models.is_symlink() and re.fullmatch(r"[0-9a-f]{12}", os.readlink(models))
    assert {p.name for p in models.iterdir()} >= {"detector.tflite", "detector.json", "reader.tflite", "reader.json"}
    assert all(mode(p) == 0o644 for p in models.glob("*.tflite"))
    etc = root / "etc/edge-anpr"
    assert mode(etc) == 0o750 and mode(etc / "config.yaml") == 0o640 and mode(etc / "env") == 0o640
    assert "models: /opt/edge-anpr/models/current" in (etc / "config.yaml").read_text()
    assert mode(root / "var/lib/edge-anpr") == 0o750
    unit = root / "etc/systemd/system/edge-anpr.service"
    assert unit.read_text() == (DEPLOY / "edge-anpr.service").read_text() and mode(unit) == 0o644
    # Test mode: the privileged steps are shown, never run.
    for cmd in ("useradd --system", "chown root:edge-anpr", "systemctl daemon-reload", "systemctl enable"):
        assert f"would run: {cmd}" in out, cmd


def test_reinstall_keeps_config_and_changes_nothing(installed: tuple[Path, str], untrained_models: Path) -> None:
    root, _ = installed
    config = root / "etc/edge-anpr/config.yaml"
    config.write_text(config.read_text() + "# edited by the admin\n")
    (root / "etc/edge-anpr/env").write_text("ANPR_MQTT_PASSWORD=secret\n")
    before = tree(root)
    proc = install(root, untrained_models)
    assert proc.returncode == 0, proc.stdout
    assert "keeping the configuration" in proc.stdout and "already installed" in proc.stdout
    assert config.read_text().endswith("# edited by the admin\n")
    assert (root / "etc/edge-anpr/env").read_text() == "ANPR_MQTT_PASSWORD=secret\n"
    assert tree(root) == before


def test_install_does_not_switch_a_running_installation(installed: tuple[Path, str], untrained_models: Path,
                                                        tmp_path: Path) -> None:
    root, _ = installed
    other = tmp_path / "models"
    shutil.copytree(untrained_models, other)
    meta = other / "reader.json"
    meta.write_text(meta.read_text().replace("{", '{"note": "another set", ', 1))
    current = link(root / "opt/edge-anpr/models/current")
    proc = install(root, other)
    assert proc.returncode == 0, proc.stdout
    assert "stays current" in proc.stdout and "update.sh --models" in proc.stdout
    assert link(root / "opt/edge-anpr/models/current") == current


def test_install_refuses_a_model_set_that_does_not_verify(untrained_models: Path, tmp_path: Path) -> None:
    bad = tmp_path / "models"
    shutil.copytree(untrained_models, bad)
    with open(bad / "detector.tflite", "ab") as f:
        f.write(b"\0")
    proc = install(tmp_path / "root", bad)
    assert proc.returncode == 1
    assert re.search(r"FAIL .*detector\.tflite: sha256 \w+, .*detector\.json records", proc.stdout), proc.stdout
    assert not (tmp_path / "root/opt/edge-anpr/models/current").exists()


def test_uninstall_keeps_config_and_spool_unless_purge(untrained_models: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert install(root, untrained_models).returncode == 0
    (root / "var/lib/edge-anpr/spool.sqlite").write_bytes(b"undelivered")
    proc = script("uninstall.sh", root)
    assert proc.returncode == 0, proc.stdout
    assert "would run: systemctl disable --now edge-anpr.service" in proc.stdout
    assert not (root / "opt/edge-anpr").exists() and not (root / "etc/systemd/system/edge-anpr.service").exists()
    assert (root / "etc/edge-anpr/config.yaml").is_file() and (root / "var/lib/edge-anpr/spool.sqlite").is_file()
    proc = script("uninstall.sh", root, "--purge")
    assert proc.returncode == 0, proc.stdout
    assert not (root / "etc/edge-anpr").exists() and not (root / "var/lib/edge-anpr").exists()
    assert "would run: userdel edge-anpr" in proc.stdout


def test_scripts_refuse_unknown_options(tmp_path: Path) -> None:
    for name in ("install.sh", "update.sh", "uninstall.sh"):
        proc = script(name, tmp_path, "--bogus")
        assert proc.returncode == 2 and "unknown option: --bogus" in proc.stdout, (name, proc.stdout)


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck is not installed (apt-get install shellcheck)")
def test_scripts_are_shellcheck_clean() -> None:
    proc = subprocess.run(["shellcheck", "-x", *map(str, SCRIPTS)], cwd=DEPLOY.parent, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_unit_has_the_hardening_and_watchdog() -> None:
    parser = configparser.ConfigParser(strict=True, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read(DEPLOY / "edge-anpr.service")
    service = parser["Service"]
    for key, value in HARDENING.items():
        assert service.get(key) == value, key
    assert int(service["WatchdogSec"]) > 0 and service["ExecStart"].startswith("/opt/edge-anpr/current/venv/bin/python")
    assert "2" in service["RestartPreventExitStatus"].split()  # an invalid config is not retried forever
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"  # systemctl reload: the daemon's SIGHUP


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (apt-get install systemd)")
def test_unit_passes_systemd_analyze_verify(installed: tuple[Path, str], tmp_path: Path) -> None:
    root, _ = installed
    # verify checks that ExecStart's program exists: point it at the test root's copy of the layout.
    text = (root / "etc/systemd/system/edge-anpr.service").read_text()
    unit = tmp_path / "edge-anpr.service"
    unit.write_text(text.replace("ExecStart=/opt/", f"ExecStart={root}/opt/"))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # Unknown or misspelt keys are only warnings (exit 0): any output at all fails the test.
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc.stdout + proc.stderr
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                          capture_output=True, text=True, timeout=60)
    exposure = re.search(r"Overall exposure level for edge-anpr\.service: ([\d.]+)", proc.stdout)
    assert proc.returncode == 0 and exposure and float(exposure.group(1)) <= 3.0, proc.stdout[-2000:]


def test_venv_from_must_be_a_venv(untrained_models: Path, tmp_path: Path) -> None:
    proc = script("install.sh", tmp_path / "root", "--models", str(untrained_models), "--venv-from",
                  str(tmp_path), "--no-apt")
    assert proc.returncode == 1 and "not a virtual environment" in proc.stdout
    assert VENV.joinpath("bin/python").exists()
