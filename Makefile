# Two commands for a new user: `make demo` and `make test`. Each sets itself up first.
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONUNBUFFERED := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export BENTOML_DO_NOT_TRACK := true
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false

.PHONY: setup demo test test-slow lint-imports lint-names dvc-stages bench clean help

help:
	@echo "make demo       set up, then onboard a generated demo narrator (see demo/)"
	@echo "make test       set up, check the architecture contracts (.importlinter), run the test suite (minus slow)"
	@echo "make test-slow  the slow tests only"
	@echo "make bench      run the benchmarks in bench/ and print their tables"
	@echo "make dvc-stages regenerate dvc.yaml from the step table (components.STEPS)"
	@echo "make clean      remove generated demo output and caches (keeps .venv)"

setup:
	@VENV=$(VENV) bash scripts/setup.sh

demo: setup
	$(VENV)/bin/narrator demo --out demo

test: setup lint-imports lint-names
	$(PY) -m pytest -m "not slow" -q

lint-imports: setup
	$(VENV)/bin/lint-imports --no-cache

# Undefined names (a lost import in a merge, a typo in a branch no test reaches) fail before any test runs.
lint-names: setup
	$(VENV)/bin/ruff check --no-cache --select F821,F822,F823 .

dvc-stages: setup
	$(PY) scripts/dvc_stages.py

test-slow: setup
	$(PY) -m pytest -m slow -q

bench: setup
	$(PY) -m bench

clean:
	rm -rf demo .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
