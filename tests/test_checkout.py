"""The checkout around the packages: tools/ (not installed), the make targets, the system packages they install
(waiting while another apt holds its lock), pyproject.toml, and what the README says of them."""
from __future__ import annotations

import ast
import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from edge.mosquitto import find_mosquitto

APT_ENSURE = ROOT / "tools" / "apt_ensure.sh"
LOCKED = ("E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 4242 (unattended-upgr)\n"
          "E: Unable to acquire the dpkg frontend lock (/var/lib/dpkg/lock-frontend), is another process using it?")


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def packaged(patterns: list[str]) -> set[str]:
    """The packages setuptools' find (``include`` patterns, fnmatch on dotted names) takes from the checkout."""
    names = {".".join(p.parent.relative_to(ROOT).parts) for p in ROOT.glob("*/**/__init__.py")
             if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)}
    return {n for n in names if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)}


def make_variable(name: str) -> list[str]:
    m = re.search(rf"^{name}\s*:?=\s*(.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert m, f"Makefile: no {name}"
    return m.group(1).split()


# ---------------------------------------------------------------- tools/: the checkout's, not the device's

def test_dev_tools_live_in_tools_not_in_the_installed_package() -> None:
    for name in ("bench", "demo", "soak"):
        assert (ROOT / "tools" / f"{name}.py").is_file() and not (ROOT / "edge" / f"{name}.py").exists(), name
    find = pyproject()["tool"]["setuptools"]["packages"]["find"]
    shipped = packaged(find["include"])
    assert {"edge", "trainer", "trainer.synth"} <= shipped
    assert not any(n == "tools" or n.startswith(("tools.", "tests")) for n in shipped), shipped


def test_the_device_package_never_imports_the_tools() -> None:
    """tools/ is not installed on a device: an edge module importing it would fail there."""
    for path in sorted((ROOT / "edge").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            assert not any(n == "tools" or n.startswith("tools.") for n in names), f"{path.relative_to(ROOT)}: {names}"


@pytest.mark.parametrize("tool", ["demo", "bench", "soak"])
def test_tools_run_from_the_checkout(tool: str) -> None:
    proc = subprocess.run([sys.executable, "-m", f"tools.{tool}", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: python -m tools.{tool}"), proc.stdout


@pytest.mark.skipif(find_mosquitto() is None,
                    reason="mosquitto is not installed (apt-get install mosquitto)")
def test_demo_runs_the_daemon_on_the_clip() -> None:
    """``make demo``: the shipped models, the demo clip, a private mosquitto; the output is only the demo's."""
    proc = subprocess.run([sys.executable, "-m", "tools.demo", "--timeout", "240"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    # Every vehicle's `new` has its `end` (nothing lost); how many are read right is the models' business.
    m = re.search(r"received (\d+) new and \1 end events; ([1-9]\d*) of \d+ plates read right; daemon exit 0;",
                  proc.stdout.splitlines()[-1])
    assert m, proc.stdout
    assert "XNNPACK" not in proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_targets_run_the_tools_and_list_the_slowest_tests() -> None:
    # -n: print, run nothing; -B: every recipe, the virtual environments' too.
    proc = subprocess.run(["make", "-n", "-B", "demo", "bench", "soak", "test", "test-edge"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for tool in ("demo", "bench", "soak"):
        assert f".venv/bin/python -m tools.{tool}" in out, out
    assert "bash tools/apt_ensure.sh mosquitto\n" in out and not re.search(r"-m edge\.(demo|bench|soak)", out), out
    assert out.count("-m pytest -q --durations=15") == 2 and ".venv-edge/bin/python -m pytest" in out, out
    installs = [line for line in out.splitlines() if "pip install" in line and "'.[" in line]
    assert len(installs) == 3 and all("-c deploy/constraints.txt" in line for line in installs), installs
    assert any(line.endswith("-e '.[daemon,test]'") and ".venv-edge/" in line for line in installs), installs


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_lint_runs_ruff_and_mypy_of_the_venv_before_ci_runs_the_tests() -> None:
    proc = subprocess.run(["make", "-n", "-B", "lint"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert ".venv/bin/ruff check ." in lines and ".venv/bin/mypy" in lines, proc.stdout
    assert any(line.endswith("-e '.[daemon,trainer,test,lint]'") and "-c deploy/constraints.txt" in line
               for line in lines), proc.stdout
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "make lint" in ci and ci.index("make lint") < ci.index("make test"), ci
    tool = pyproject()["tool"]
    assert {"E", "W", "F", "I", "B", "UP", "SIM", "RUF"} <= set(tool["ruff"]["lint"]["select"])
    assert "pydantic.mypy" in tool["mypy"]["plugins"] and {"edge", "trainer"} <= set(tool["mypy"]["files"])


def test_readme_names_what_make_installs_and_only_targets_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    intro = " ".join(readme.split("## Where the shipped models stand")[0].split())
    for package in make_variable("APT_DEMO") + make_variable("APT_TEST"):
        assert re.search(rf"(?<![\w-]){re.escape(package)}(?![\w-])", intro), f"README's install part: no {package}"
    phony = re.search(r"^\.PHONY:(.*)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    for target in set(re.findall(r"`make ([\w.-]+)", readme)):
        assert target in phony or target.startswith(".venv"), f"README: make {target} is not a Makefile target"


# ---------------------------------------------------------------- pyproject.toml

def test_licence_is_an_spdx_expression_with_a_setuptools_that_takes_it() -> None:
    """A licence table ({text = ...}) makes setuptools print a 15-line deprecation warning at every install."""
    project = pyproject()
    assert isinstance(project["project"]["license"], str) and project["project"]["license"] == "MIT"
    assert "license-files" in project["project"]
    [setuptools] = [r for r in project["build-system"]["requires"] if r.startswith("setuptools")]
    m = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", setuptools)
    assert m and int(m.group(1)) >= 77, setuptools  # 77: PEP 639 licence expressions


# ---------------------------------------------------------------- apt-get behind another apt's lock

def fake_system(tmp_path: Path, apt_get: str, installed: bool = False) -> dict[str, str]:
    """PATH with stand-ins for dpkg (packages missing unless ``installed``), sudo and apt-get (body ``apt_get``)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {"dpkg": f"exit {0 if installed else 1}", "sudo": 'exec "$@"',
               "apt-get": f'echo "$*" >> "{tmp_path}/apt.log"\n{apt_get}'}
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return os.environ | {"PATH": f"{bin_dir}:{os.environ['PATH']}", "APT_LOCK_POLL_S": "0.05",
                         "APT_LOCK_TIMEOUT": "30"}


def apt_ensure(env: dict[str, str], *packages: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(APT_ENSURE), *packages], env=env, capture_output=True, text=True, timeout=60)


def test_apt_waits_for_another_apts_lock_and_says_so(tmp_path: Path) -> None:
    # Locked for the first two tries of `update`, then free.
    tries = tmp_path / "tries"
    env = fake_system(tmp_path, f'''n=$(cat "{tries}" 2>/dev/null || echo 0); echo $((n + 1)) > "{tries}"
if [ "$n" -lt 2 ]; then printf '%s\\n' "{LOCKED}" >&2; exit 100; fi''')
    proc = apt_ensure(env, "mosquitto", "ffmpeg")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "installing system packages: mosquitto ffmpeg\n"
    assert proc.stderr == ("another apt or dpkg is running (process 4242 (unattended-upgr) holds "
                           "/var/lib/dpkg/lock-frontend): waiting up to 30 s for it to finish (APT_LOCK_TIMEOUT) ...\n")
    assert (tmp_path / "apt.log").read_text().splitlines() == ["update -qq"] * 3 + ["install -y -qq mosquitto ffmpeg"]


@pytest.mark.parametrize("timeout", ["0", "1"])  # 0: past the deadline at the first try, whatever the machine's load
def test_apt_gives_up_after_the_timeout_with_apts_error(tmp_path: Path, timeout: str) -> None:
    env = fake_system(tmp_path, f"printf '%s\\n' \"{LOCKED}\" >&2; exit 100") | {"APT_LOCK_TIMEOUT": timeout}
    proc = apt_ensure(env, "mosquitto")
    assert proc.returncode == 100
    assert f"waiting up to {timeout} s" in proc.stderr, proc.stderr
    assert f"apt is still locked after {timeout} s (APT_LOCK_TIMEOUT)" in proc.stderr, proc.stderr
    assert proc.stderr.rstrip().endswith("is another process using it?"), proc.stderr
    assert "install" not in (tmp_path / "apt.log").read_text()


def test_apt_fails_at_once_on_other_errors(tmp_path: Path) -> None:
    env = fake_system(tmp_path, '[ "$1" = update ] && exit 0\necho "E: Unable to locate package nosuch" >&2\nexit 100')
    proc = apt_ensure(env, "nosuch")
    assert proc.returncode == 100 and proc.stderr == "E: Unable to locate package nosuch\n", proc.stderr
    assert (tmp_path / "apt.log").read_text().count("install") == 1


def test_apt_is_not_run_when_everything_is_installed(tmp_path: Path) -> None:
    proc = apt_ensure(fake_system(tmp_path, "exit 1", installed=True), "mosquitto")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert not (tmp_path / "apt.log").exists()


def test_apt_lock_timeout_must_be_a_number(tmp_path: Path) -> None:
    proc = apt_ensure(fake_system(tmp_path, "exit 0") | {"APT_LOCK_TIMEOUT": "ten"}, "mosquitto")
    assert proc.returncode == 2 and "APT_LOCK_TIMEOUT: a number of seconds, not 'ten'" in proc.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_apt_ensure_is_shellcheck_clean() -> None:
    proc = subprocess.run(["shellcheck", str(APT_ENSURE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
