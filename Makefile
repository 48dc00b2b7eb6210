# The README's two commands: `make demo` (the whole pipeline on the embedded default) and
# `make test` (the test suite). Both create .venv and install the pinned requirements if needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export TF_ENABLE_ONEDNN_OPTS ?= 1
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test lint venv clean airflow

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime-installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.test-installed: requirements-test.txt requirements-deploy.txt requirements-browser.txt requirements-convert.txt $(VENV)/.runtime-installed
	$(BIN)/pip install --quiet -r requirements-test.txt
	touch $@

# The project itself, editable (the packages import from any directory; the `fashionnet` command), after
# the pinned requirements: nothing is resolved or fetched (--no-deps, and setuptools from requirements.txt).
$(VENV)/.project-installed: pyproject.toml $(VENV)/.runtime-installed
	$(BIN)/pip install --quiet -e . --no-deps --no-build-isolation
	touch $@

venv: $(VENV)/.test-installed $(VENV)/.project-installed

demo: $(VENV)/.runtime-installed $(VENV)/.project-installed
	$(BIN)/fashionnet demo

# Airflow (standalone: scheduler, dag-processor, triggerer, api-server) with the project's DAGs and plugins on
# the embedded default, in var/airflow-local/, until Ctrl-C (FASHIONNET_AIRFLOW_PORT=8081 make airflow: another
# port; options: .venv/bin/fashionnet airflow --help).
airflow: $(VENV)/.runtime-installed $(VENV)/.project-installed
	$(BIN)/fashionnet airflow

# The suite on TEST_WORKERS processes (pytest-xdist), a test module per process at a time (its module
# fixtures, such as a whole Airflow deployment, start once): 16 minutes on 2 cores here (2026-12-03).
TEST_WORKERS ?= 2
test: $(VENV)/.test-installed $(VENV)/.project-installed
	scripts/install-test-system-packages.sh
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=10

# The lint, format and type checks CI runs beside the tests (settings in pyproject.toml).
lint: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf var/
