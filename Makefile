# Edge ANPR. `make demo` runs the product on the shipped models; `make test` runs the suite.
# Each target makes its own virtual environment in .venv and installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip

.PHONY: demo test bench clean help
help:
	@echo "make demo   - read the demo images with the shipped int8 models (edge dependencies only)"
	@echo "make test   - run the test suite (installs trainer + test dependencies)"
	@echo "make bench  - latency, RSS, sizes and MACs of the shipped models -> bench/results.json"

$(VENV)/.edge: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.edge
	$(PIP) install --quiet -e '.[daemon,trainer,test]'
	touch $@

demo: $(VENV)/.edge
	$(PY) -m edge read --json demo/*.jpg

test: $(VENV)/.dev
	$(PY) -m pytest -q

bench: $(VENV)/.edge
	$(PY) -m edge.bench --out bench/results.json

clean:
	rm -rf $(VENV) build *.egg-info
