# Edge ANPR. `make demo` runs the product on the shipped models; `make test` runs the suite.
# Each target makes its own virtual environment in .venv and installs what it needs, at the versions pinned
# in deploy/constraints.txt, and the system packages (mosquitto, ...) with apt-get (through sudo when not
# root; tools/apt_ensure.sh waits while another apt holds its lock).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# The edge alone, as on a Pi: no trainer, no TensorFlow (make test-edge).
EDGE_VENV ?= .venv-edge
CONSTRAINTS := deploy/constraints.txt
APT_DEMO := mosquitto
# mosquitto (with mosquitto_passwd), ffmpeg and rtsp-server-perl (the RTSP test), openssl (the TLS test),
# shellcheck (the deploy scripts), systemd (systemd-analyze verify of the unit), mosquitto-clients (mosquitto_sub),
# chromium and chromium-driver (the review page's browser test).
APT_TEST := mosquitto mosquitto-clients ffmpeg rtsp-server-perl openssl shellcheck systemd chromium chromium-driver
# How long to wait for another apt (unattended-upgrades, another terminal) to release its lock, in seconds.
export APT_LOCK_TIMEOUT ?= 600
# The slowest tests are listed at the end of every run.
PYTEST := -m pytest -q --durations=15

.PHONY: help demo read-demo test test-edge test-ha lint bench soak clean
help:
	@echo "make demo       - the daemon on the demo clip with the shipped models, a local mosquitto, the events printed"
	@echo "make read-demo  - read the demo images with the shipped models (one JSON line per image)"
	@echo "make test       - the test suite: unit, train -> quantize -> edge, emulated device on a real broker"
	@echo "make test-edge  - the edge's tests in $(EDGE_VENV), the edge alone without TensorFlow (as on a Pi)"
	@echo "make test-ha    - the daemon against a real Home Assistant (installed in .venv-ha from PyPI; not in make test)"
	@echo "make lint       - ruff (lint and import order) and mypy (types) on the checkout, as configured in pyproject.toml"
	@echo "make bench      - ms, fps, detector runs and MACs per frame, RSS, ms per image beside OpenALPR -> bench/results.json"
	@echo "make soak       - the daemon on a looping 720p clip for SOAK_MIN minutes (default 30) -> bench/soak.json"

$(VENV)/.edge: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[daemon]'
	touch $@

$(VENV)/.dev: pyproject.toml $(CONSTRAINTS) $(VENV)/.edge
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[daemon,trainer,test,lint]'
	touch $@

$(EDGE_VENV)/.edge: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(EDGE_VENV)
	$(EDGE_VENV)/bin/pip install --quiet --upgrade pip
	$(EDGE_VENV)/bin/pip install --quiet -c $(CONSTRAINTS) -e '.[daemon,test]'
	touch $@

demo: $(VENV)/.edge
	@bash tools/apt_ensure.sh $(APT_DEMO)
	$(PY) -m tools.demo

read-demo: $(VENV)/.edge
	$(PY) -m edge read --json demo/*.jpg

test: $(VENV)/.dev
	@bash tools/apt_ensure.sh $(APT_TEST)
	$(PY) $(PYTEST)

# The trainer's tests and the training end to end are skipped there (no TensorFlow), and so are the emulated
# device's unless EDGE_HARNESS_CACHE names a clip that `make test` built with the same variable.
test-edge: $(EDGE_VENV)/.edge
	@bash tools/apt_ensure.sh $(APT_TEST)
	$(EDGE_VENV)/bin/python $(PYTEST)

# mypy checks the trainer too, so it needs the trainer's packages (their types): the full .venv.
lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: $(VENV)/.edge
	$(PY) -m tools.bench --out bench/results.json

SOAK_MIN ?= 30
soak: $(VENV)/.edge
	@bash tools/apt_ensure.sh $(APT_DEMO)
	$(PY) -m tools.soak --minutes $(SOAK_MIN) --out bench/soak.json

# Installs Home Assistant core into .venv-ha (Python 3.13) on its first run: minutes, so not part of `make test`.
test-ha: $(VENV)/.edge
	@bash tools/apt_ensure.sh $(APT_DEMO)
	$(PY) -m tools.ha_check

clean:
	rm -rf $(VENV) $(EDGE_VENV) .venv-ha build *.egg-info
