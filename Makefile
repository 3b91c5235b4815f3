# The study's entry points.  Each target creates .venv and installs the pinned
# dependencies (pyproject.toml) on first use, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: study study-long smoke figures test test-fast bench install clean-runs help

help:
	@echo "make study    - the default CPU study: every notebook on params/cpu, figures in figures/"
	@echo "make test     - the test suite (includes a papermill run of every notebook on params/smoke)"
	@echo "make study-long - raw repeat vs latent thoughts at 2.5x the tokens per run (params/cpu_long, ~20 min)"
	@echo "make smoke    - every notebook on the tiny params/smoke profile (runs/smoke/)"
	@echo "make figures  - re-run only the analysis notebook over stored results of the CPU study"
	@echo "make bench    - training / sampling throughput benchmark"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(STAMP)

install: $(STAMP)

study: $(STAMP)
	$(PY) -m lt_utils.pipeline --profile cpu

study-long: $(STAMP)
	$(PY) -m lt_utils.pipeline --profile cpu_long

smoke: $(STAMP)
	$(PY) -m lt_utils.pipeline --profile smoke

figures: $(STAMP)
	$(PY) -m lt_utils.pipeline --profile cpu --only 04_analysis

test: $(STAMP)
	$(PY) -m pytest -m "not gpu" -q

test-fast: $(STAMP)
	$(PY) -m pytest -m "not gpu and not slow" -q

bench: $(STAMP)
	$(PY) -m lt_utils.benchmark

clean-runs:
	rm -rf runs/smoke
