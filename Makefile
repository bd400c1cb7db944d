# Edge ANPR. `make demo` runs the product on the shipped models; `make test` runs the suite.
# Each target makes its own virtual environment in .venv and installs what it needs,
# system packages (mosquitto, ...) included, with apt-get (through sudo when not root).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
APT_DEMO := mosquitto
APT_TEST := mosquitto mosquitto-clients ffmpeg rtsp-server-perl openssl shellcheck systemd

.PHONY: help demo read-demo test bench soak clean
help:
	@echo "make demo       - the daemon on the demo clip with the shipped models, a local mosquitto, the events printed"
	@echo "make read-demo  - read the demo images with the shipped models (one JSON line per image)"
	@echo "make test       - the test suite: unit, train -> quantize -> edge, emulated device on a real broker"
	@echo "make bench      - latency, fps, RSS, sizes and MACs of the shipped models -> bench/results.json"
	@echo "make soak       - the daemon on a looping 720p clip for SOAK_MIN minutes (default 30) -> bench/soak.json"

# Installs the Debian packages named in $(1) that are missing.
define apt_ensure
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; else sudo=sudo; fi; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

$(VENV)/.edge: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[daemon]'
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.edge
	$(PIP) install --quiet -e '.[daemon,trainer,test]'
	touch $@

demo: $(VENV)/.edge
	$(call apt_ensure,$(APT_DEMO))
	$(PY) -m edge.demo

read-demo: $(VENV)/.edge
	$(PY) -m edge read --json demo/*.jpg

test: $(VENV)/.dev
	$(call apt_ensure,$(APT_TEST))
	$(PY) -m pytest -q

bench: $(VENV)/.edge
	$(PY) -m edge.bench --out bench/results.json

SOAK_MIN ?= 30
soak: $(VENV)/.edge
	$(call apt_ensure,$(APT_DEMO))
	$(PY) -m edge.soak --minutes $(SOAK_MIN) --out bench/soak.json

clean:
	rm -rf $(VENV) build *.egg-info
