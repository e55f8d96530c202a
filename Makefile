# virtguests: make demo | make test | make lint | make fixtures | make bench | make soak
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PREFIX ?= /usr/local
DESTDIR ?=

.PHONY: all venv test lint demo fixtures bench soak man install clean

all: test

$(STAMP): setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lint]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check virtguests tests tools
	$(VENV)/bin/mypy

demo: $(STAMP)
	$(PY) tools/demo.py

fixtures: $(STAMP)
	$(PY) tools/record_fixtures.py $(FIXTURE_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

bench: $(STAMP)
	$(PY) tools/bench.py $(BENCH_ARGS)

soak: $(STAMP)
	$(PY) tools/soak.py $(SOAK_ARGS)
